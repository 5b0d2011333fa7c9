"""Logging: one place maps -v/-q to a level; lines go to stderr."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

from airgap.transport import redact


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
    level = level_for(verbose, quiet)
    root.setLevel(level)
    root.propagate = False
    handler.addFilter(_redact)
    # Request lines only at -vv; -q still silences them, as it does the rest.
    http_level = max(level, logging.DEBUG if verbose >= 2 else logging.WARNING)
    logging.getLogger("airgap.http").setLevel(http_level)
    http = logging.getLogger("urllib3")
    for old in [h for h in http.handlers if isinstance(h, _TqdmHandler)]:
        http.removeHandler(old)
    http.setLevel(http_level)
    if verbose >= 2:
        http.addHandler(handler)


def _redact(record: logging.LogRecord) -> bool:
    """Every line passes the one redaction helper: urllib3 logs whole URLs."""
    record.msg = redact(record.getMessage())
    record.args = None
    return True
