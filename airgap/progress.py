"""Progress on stderr: tqdm bars on a terminal, nothing otherwise."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class Progress:
    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def bytes_bar(self, total: int, desc: str) -> Any:
        return tqdm(
            total=total,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            disable=not self.enabled,
            dynamic_ncols=True,
            leave=False,
        )


QUIET = Progress(enabled=False)
