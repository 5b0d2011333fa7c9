"""The two stream shapes airgap passes around, as protocols."""

from __future__ import annotations

from typing import Protocol


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...
