"""The two stream shapes airgap passes around, as protocols."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from airgap.errors import DigestMismatch


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class ChunkReader:
    """A file-like view of a chunk iterator, for tarfile and requests."""

    def __init__(self, chunks: Iterator[bytes], on_read: Any = None) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._offset = 0  # read position in _buffer: no tail copy per read
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        pieces = []
        wanted = n
        while wanted != 0:
            if self._offset >= len(self._buffer):
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._buffer, self._offset = chunk, 0
            end = len(self._buffer) if wanted < 0 else self._offset + wanted
            piece = self._buffer[self._offset : end]
            self._offset += len(piece)
            pieces.append(piece)
            if wanted > 0:
                wanted -= len(piece)
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)  # [] -> b""
        if self._on_read and data:
            self._on_read(len(data))
        return data

    def finish(self) -> None:
        """Run the iterator to its end, so its final digest check runs."""
        for extra in self._chunks:
            if extra:
                raise DigestMismatch(
                    "the registry sent more bytes than the manifest says"
                )
