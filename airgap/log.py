"""Logging: one place maps -v/-q to a level; lines go to stderr."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm


class _TqdmHandler(logging.Handler):
    """Writes log lines above any progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never take the run down
            self.handleError(record)


def level_for(verbose: int, quiet: int) -> int:
    if quiet >= 2:
        return logging.ERROR
    if quiet:
        return logging.WARNING
    if verbose:
        return logging.DEBUG
    return logging.INFO


def configure(verbose: int, quiet: int) -> None:
    root = logging.getLogger("airgap")
    root.handlers.clear()
    handler = _TqdmHandler()
    fmt = "airgap: %(levelname)s: %(message)s" if verbose else "airgap: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level_for(verbose, quiet))
    root.propagate = False
    if verbose >= 2:
        logging.getLogger("urllib3").setLevel(logging.DEBUG)
        logging.getLogger("urllib3").addHandler(handler)
