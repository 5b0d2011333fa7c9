"""The archive: a tar stream, optionally zstd-compressed, written and read in
one pass. Members are read one by one against an allowlist of names: Python
3.11's tarfile lacks the 2025 extraction-filter fixes, so nothing is extracted.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from typing import IO, Any

import zstandard

from airgap.errors import BundleCorrupt
from airgap.streams import Reader, Writer

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ALLOWED_NAMES = re.compile(
    r"(oci-layout|airgap\.json|index\.json|manifest\.json|blobs/sha256/[a-f0-9]{64})"
)
_ALLOWED_DIRS = {"blobs", "blobs/sha256"}
COPY_CHUNK = 1 << 20


class ArchiveWriter:
    """Tar members into ``out``, through multi-threaded zstd unless disabled."""

    def __init__(
        self,
        out: Writer,
        compression: str = "zstd",
        level: int = 3,
        threads: int = -1,
    ) -> None:
        self._compressor: zstandard.ZstdCompressionWriter | None = None
        # zstandard and tarfile type their file arguments narrowly; any writer works
        sink: Any = out
        if compression == "zstd":
            params = zstandard.ZstdCompressor(
                level=level, threads=threads, write_checksum=True
            )
            self._compressor = params.stream_writer(sink, closefd=False)
            sink = self._compressor
        self._tar = tarfile.open(
            fileobj=sink,
            mode="w|",
            format=tarfile.PAX_FORMAT,
            bufsize=COPY_CHUNK,
        )

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_stream(name, len(data), io.BytesIO(data))

    def add_stream(self, name: str, size: int, reader: Reader) -> None:
        """Copy exactly ``size`` bytes from ``reader`` into a member."""
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        info.mtime = 0
        self._tar.addfile(info, reader)

    def close(self) -> None:
        self._tar.close()
        if self._compressor is not None:
            self._compressor.flush(zstandard.FLUSH_FRAME)
            self._compressor.close()


class Member:
    def __init__(self, name: str, size: int, stream: IO[bytes]) -> None:
        self.name = name
        self.size = size
        self.stream = stream

    def read_all(self) -> bytes:
        data = self.stream.read()
        if len(data) != self.size:
            raise BundleCorrupt(f"{self.name} is truncated")
        return data


def read_members(source: Reader) -> Iterator[Member]:
    """The bundle's members in order. Raises BundleCorrupt on a damaged stream,
    a truncated one, or a member outside the allowlist."""
    try:
        stream = _decompressed(source)
        fileobj: Any = stream
        with tarfile.open(fileobj=fileobj, mode="r|", bufsize=COPY_CHUNK) as tar:
            for info in tar:
                member = _admit(info, tar)
                if member is not None:
                    yield member
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        raise BundleCorrupt(
            f"the bundle stream is damaged or truncated: {exc}"
        ) from exc


def _admit(info: tarfile.TarInfo, tar: tarfile.TarFile) -> Member | None:
    name = info.name.removeprefix("./").rstrip("/")
    if info.isdir() and name in _ALLOWED_DIRS | {"", "."}:
        return None
    if not info.isfile() or not ALLOWED_NAMES.fullmatch(name):
        raise BundleCorrupt(
            f"unexpected member {info.name!r} in the bundle",
            "a bundle holds only oci-layout, airgap.json, index.json, "
            "manifest.json and blobs/sha256/<hex>",
        )
    stream = tar.extractfile(info)
    assert stream is not None
    return Member(name, info.size, stream)


def _decompressed(source: Reader) -> Reader:
    head = source.read(4)
    rest = _Prefixed(head, source)
    if head == ZSTD_MAGIC:
        # Without read_across_frames, reading stops at the first frame's end.
        reader = zstandard.ZstdDecompressor().stream_reader(
            rest,  # type: ignore[arg-type]
            read_across_frames=True,
            closefd=False,
        )
        return reader
    return rest


class _Prefixed(io.RawIOBase):
    """Bytes already read, then the rest of the stream."""

    def __init__(self, head: bytes, rest: Reader) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
