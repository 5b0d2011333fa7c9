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
# airgap.json for ten thousand images is a few MiB; past this, refuse.
HEADER_LIMIT = 256 << 20
_TRUNCATED = "the bundle is truncated: it ends inside a zstd frame"


class ArchiveWriter:
    """Tar members into ``out``, through multi-threaded zstd unless disabled.

    Headers come from tarfile's ``TarInfo.tobuf`` (PAX format); member bytes go
    straight to the sink in large writes, with none of tarfile's stream-mode
    buffer copies, and a failed pack simply never writes the end blocks.
    """

    def __init__(
        self,
        out: Writer,
        compression: str = "zstd",
        level: int = 3,
        threads: int = -1,
    ) -> None:
        self._compressor: zstandard.ZstdCompressionWriter | None = None
        sink: Any = out  # zstandard types its writer argument narrowly
        if compression == "zstd":
            params = zstandard.ZstdCompressor(
                level=level, threads=threads, write_checksum=True
            )
            self._compressor = params.stream_writer(sink, closefd=False)
            sink = self._compressor
        self._sink = sink
        self._offset = 0
        self._pushed = self._pushing = 0

    def add_bytes(self, name: str, data: bytes) -> None:
        self.begin(name, len(data))
        self.write(data)
        self.end()

    def add_stream(self, name: str, size: int, reader: Reader) -> None:
        """Copy exactly ``size`` bytes from ``reader`` into a member."""
        self.begin(name, size)
        while self._pushed < size:
            data = reader.read(min(COPY_CHUNK, size - self._pushed))
            if not data:
                raise BundleCorrupt(
                    f"{name}: the source ended at {self._pushed} of {size} bytes"
                )
            self.write(data)
        self.end()

    def begin(self, name: str, size: int) -> None:
        """Start a member whose bytes the caller then pushes with ``write``: for
        content that is read by someone else (an upload) while it is teed here."""
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        self._emit(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self._pushed = 0
        self._pushing = size

    def write(self, data: bytes) -> None:
        self._pushed += len(data)
        self._emit(data)

    def end(self) -> None:
        if self._pushed != self._pushing:
            raise BundleCorrupt(
                f"member ended at {self._pushed} of {self._pushing} bytes"
            )
        remainder = self._pushing % tarfile.BLOCKSIZE
        if remainder:
            self._emit(tarfile.NUL * (tarfile.BLOCKSIZE - remainder))

    def abandon(self) -> None:
        """Drop the archive unfinished: no end-of-archive blocks are written, so
        a reader sees a truncated tar and takes nothing from it."""
        self._sink = None

    def close(self) -> None:
        # two zero blocks end the archive; records round it up, as tar writes
        self._emit(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        remainder = self._offset % tarfile.RECORDSIZE
        if remainder:
            self._emit(tarfile.NUL * (tarfile.RECORDSIZE - remainder))
        if self._compressor is not None:
            # close() ends the frame; a flush(FLUSH_FRAME) first would add a second,
            # empty frame, and a cut inside it would go unnoticed.
            self._compressor.close()

    def _emit(self, data: bytes) -> None:
        self._sink.write(data)
        self._offset += len(data)


class Member:
    def __init__(self, name: str, size: int, stream: IO[bytes]) -> None:
        self.name = name
        self.size = size
        self.stream = stream

    def read_all(self, limit: int = HEADER_LIMIT) -> bytes:
        """The whole member, for the small ones read into memory; a size past
        ``limit`` is damage or a hostile bundle, not a real index."""
        if self.size > limit:
            raise BundleCorrupt(f"{self.name} claims {self.size} bytes; too large")
        try:
            data = self.stream.read()
        except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
            raise BundleCorrupt(f"{self.name} is damaged or truncated: {exc}") from exc
        if len(data) != self.size:
            raise BundleCorrupt(f"{self.name} is truncated")
        return data


def read_members(source: Reader) -> Iterator[Member]:
    """The bundle's members in order. Raises BundleCorrupt on a damaged stream,
    a truncated one, or a member outside the allowlist."""
    started = False
    frames = _FrameCheck(source)
    try:
        stream = _decompressed(frames)
        fileobj: Any = stream
        with tarfile.open(fileobj=fileobj, mode="r|", bufsize=COPY_CHUNK) as tar:
            for info in tar:
                member = _admit(info, tar)
                if member is not None:
                    started = True
                    yield member
        # Read on to the end, so a zstd stream cut after the tar's last member is
        # still seen to end inside its frame.
        while stream.read(COPY_CHUNK):
            pass
        frames.check_end()
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        if frames.cut_short():
            raise BundleCorrupt(_TRUNCATED) from exc
        if not started:
            raise BundleCorrupt(
                f"this is not an airgap bundle: no tar stream at its start ({exc})",
                "pass the .tar.zst or .tar that airgap pack wrote",
            ) from exc
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


class _FrameCheck:
    """Passes bytes on; for a zstd stream it walks the frame and block headers,
    so ``check_end`` can tell whether the input ended between frames. zstandard's
    reader returns what it has at EOF without complaint, even with a frame's
    last block or checksum cut off. The check waits for the end of the tar so
    that every blob before the cut is still read, and checked, first."""

    def __init__(self, source: Reader) -> None:
        self._source = source
        self._zstd: bool | None = None
        self._problem: BundleCorrupt | None = None
        self._ended = False
        self._step = self._magic
        self._want = 4  # header bytes the current step needs
        self._head = b""
        self._skip = 0  # block content or checksum bytes still to pass
        self._checksum = False

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self._ended = self._ended or not data
        if self._zstd is None and data:
            self._zstd = data[:4] == ZSTD_MAGIC
        if self._zstd and self._problem is None:
            try:
                self._walk(memoryview(data))
            except BundleCorrupt as exc:
                self._problem = exc
        return data

    def check_end(self) -> None:
        if self._problem is not None:
            raise self._problem
        if self._zstd and not self._between_frames():
            raise BundleCorrupt(_TRUNCATED)

    def cut_short(self) -> bool:
        """Whether the input has ended, inside a zstd frame."""
        return bool(self._zstd and self._ended and not self._between_frames())

    def _between_frames(self) -> bool:
        return self._step == self._magic and not self._head and not self._skip

    def _walk(self, view: memoryview) -> None:
        while view:
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                continue
            n = self._want - len(self._head)
            self._head += view[:n].tobytes()
            view = view[n:]
            if len(self._head) == self._want:
                head, self._head = self._head, b""
                self._step(head)

    def _magic(self, head: bytes) -> None:
        if head == ZSTD_MAGIC:
            self._step, self._want = self._frame_header, 1
        elif head[0] & 0xF0 == 0x50 and head[1:] == b"\x2a\x4d\x18":
            self._step, self._want = self._skippable, 4
        else:
            raise BundleCorrupt("the bundle has bytes after its last zstd frame")

    def _frame_header(self, head: bytes) -> None:
        flags = head[0]
        single_segment = bool(flags & 0x20)
        self._checksum = bool(flags & 0x04)
        dictionary = (0, 1, 2, 4)[flags & 0x03]
        content_size = (1 if single_segment else 0, 2, 4, 8)[flags >> 6]
        self._skip = (0 if single_segment else 1) + dictionary + content_size
        self._step, self._want = self._block, 3

    def _block(self, head: bytes) -> None:
        value = int.from_bytes(head, "little")
        kind, size = (value >> 1) & 0x03, value >> 3
        if kind == 3:
            raise BundleCorrupt("the bundle's zstd stream has an invalid block")
        self._skip = 1 if kind == 1 else size  # an RLE block stores one byte
        if value & 0x01:  # the frame's last block
            self._skip += 4 if self._checksum else 0
            self._step, self._want = self._magic, 4

    def _skippable(self, head: bytes) -> None:
        self._skip = int.from_bytes(head, "little")
        self._step, self._want = self._magic, 4
