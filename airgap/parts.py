"""A bundle as files: one file, or numbered parts cut at a size a medium takes.

Each part is written under a temporary name and renamed once it is full or the
stream ends, so a file under a part's name is complete; a pack that fails
removes every part it wrote. Read back, the parts are one stream, and each
part's size and sha256 are checked as its last byte passes, so a bad part is
named, not just the stream error it causes.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import sys
from pathlib import Path
from typing import BinaryIO, NoReturn

from airgap.errors import AirgapError, BundleCorrupt, UsageError

CHUNK = 1 << 20
RECOPY_HINT = "copy the files named again from the source media"
# Three digits, so ``cat NAME.*`` takes the parts in order.
MAX_PARTS = 999


@dataclasses.dataclass(frozen=True)
class PartFile:
    """One file of a bundle, and what it must hold (None: nothing recorded)."""

    path: str
    sha256: str | None = None
    size: int | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


class PartDamaged(BundleCorrupt):
    """A part is missing, or differs in size or digest from its record."""


class StreamClosed(AirgapError):
    """The reader of the bundle on stdout closed its end before the end."""

    def __init__(self) -> None:
        super().__init__(
            "the reader of the bundle stream closed it",
            "the bundle it got is incomplete; pipe -o - into a reader that takes "
            "the whole stream, or write a file with -o FILE",
        )


class TooManyParts(UsageError):
    """``--split-size`` would cut the bundle past part .999."""


def part_path(path: str, number: int) -> str:
    """``b.tar.zst`` -> ``b.tar.zst.001`` for number 1."""
    return f"{path}.{number:03d}"


# -- writing ------------------------------------------------------------------


class AtomicOutput:
    """A write-only file that appears under its name only on ``commit()``; it
    hashes what passes, for the ``.sha256`` file written beside it."""

    def __init__(self, path: str, durable: bool = True, hashed: bool = True) -> None:
        self.path = path
        self.durable = durable
        self.hashed = hashed
        self.size = 0
        self._hash = hashlib.sha256()
        self._tmp: Path | None = None
        if path == "-":
            self._file: BinaryIO = sys.stdout.buffer
            return
        target = Path(path)
        if target.is_dir():
            raise UsageError(
                f"{path} is a directory", "name the bundle file, e.g. -o out.tar.zst"
            )
        if not target.parent.exists():
            raise UsageError(f"directory {target.parent} does not exist")
        _remove_abandoned(target)
        self._tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort

    def write(self, data: bytes | memoryview) -> int:
        if self.hashed:
            self._hash.update(data)
        self.size += len(data)
        try:
            self._file.write(data)
        except BrokenPipeError:
            raise StreamClosed() from None
        return len(data)

    def flush(self) -> None:
        try:
            self._file.flush()
        except BrokenPipeError:
            raise StreamClosed() from None

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def commit(self) -> None:
        self.flush()
        if self._tmp is None:
            return
        if self.durable:
            os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        if self.durable:
            _fsync_dir(Path(self.path).parent)

    def abort(self) -> None:
        if self._tmp is None:
            return
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class PartWriter:
    """The stream into ``path``, or with ``split_size`` into ``path.001``,
    ``path.002``, ... cut as it is produced. ``files`` lists what was written."""

    def __init__(self, path: str, split_size: int | None = None) -> None:
        if split_size and path == "-":
            raise UsageError("--split-size needs a file to write, not stdout")
        self.path = path
        self.split_size = split_size
        self.files: list[PartFile] = []
        self.size = 0
        self._hash = hashlib.sha256()
        self._part: AtomicOutput | None = self._start()

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        if self.split_size:  # one file's digest is its part's: hash once
            self._hash.update(view)
        self.size += len(view)
        while view:
            part = self._part or self._start()
            room = self.split_size - part.size if self.split_size else len(view)
            part.write(view[:room])
            view = view[room:]
            if part.size == self.split_size:
                self._end()
        return len(data)

    def flush(self) -> None:
        if self._part is not None:
            self._part.flush()

    @property
    def sha256(self) -> str:
        """Of the whole stream, as ``cat`` of every part gives it."""
        if not self.split_size and len(self.files) == 1 and self.files[0].sha256:
            return self.files[0].sha256
        return self._hash.hexdigest()

    def commit(self) -> None:
        if self._part is not None:
            self._end()
        # Parts left from an earlier, longer pack to this name would join
        # ``cat NAME.*`` and break the stream.
        _remove_parts(self.path, len(self.files) + 1 if self.split_size else 1)

    def abort(self) -> None:
        if self._part is not None:
            self._part.abort()
        for done in self.files:
            if done.path != "-":
                Path(done.path).unlink(missing_ok=True)
        self.files = []

    def _start(self) -> AtomicOutput:
        number = len(self.files) + 1
        if self.split_size and number > MAX_PARTS:
            raise TooManyParts(
                f"--split-size {self.split_size} bytes cuts this bundle into more "
                f"than {MAX_PARTS} parts",
                "choose a larger --split-size (parts are numbered .001 to "
                f".{MAX_PARTS}), e.g. 700M or dvd",
            )
        self._part = AtomicOutput(
            part_path(self.path, number) if self.split_size else self.path
        )
        return self._part

    def _end(self) -> None:
        part, self._part = self._part, None
        assert part is not None
        part.commit()
        self.files.append(PartFile(part.path, part.sha256, part.size))


def _remove_parts(path: str, first: int) -> None:
    if path == "-":
        return
    number = first
    while os.path.isfile(part_path(path, number)):
        os.unlink(part_path(path, number))
        number += 1


def _remove_abandoned(target: Path) -> None:
    """Temporary files a killed run left for this name: run again, it should
    not leave a bundle-sized leftover beside the new file."""
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.partial-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- reading ------------------------------------------------------------------


class PartReader:
    """The parts in order as one stream. A part that is missing, or whose size
    or sha256 differs from its record once its last byte is read, raises
    PartDamaged; reading on continues with the next part."""

    def __init__(self, parts: list[PartFile]) -> None:
        self.parts = parts
        self.problems: list[str] = []
        self._next = 0
        self._part: PartFile | None = None
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._size = 0
        self._damage: PartDamaged | None = None

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes, short only at the end of the last part: readers
        such as the check for the zstd magic take one read as all there is."""
        if n < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        if self._damage is not None:
            damage, self._damage = self._damage, None
            raise damage
        chunks: list[bytes] = []
        wanted = n
        while wanted > 0:
            try:
                data = self._read_part(wanted)
            except PartDamaged as exc:
                if not chunks:
                    raise
                self._damage = exc  # raised on the next read, after these bytes
                break
            if not data:
                break
            chunks.append(data)
            wanted -= len(data)
        return b"".join(chunks)

    def check_rest(self) -> list[str]:
        """Reads every byte not read yet, checking each part to its end; returns
        the problems of every part, in order."""
        if not any(p.sha256 or p.size is not None for p in self.parts):
            return self.problems  # nothing recorded to check against
        while True:
            try:
                if not self.read(CHUNK):
                    return self.problems
            except PartDamaged:
                continue

    def _read_part(self, n: int) -> bytes:
        """Up to ``n`` bytes of the part at hand, or of the next one once it
        ends; empty after the last part."""
        while True:
            file = self._file or self._open_next()
            if file is None:
                return b""
            data = file.read(n)
            if data:
                self._hash.update(data)
                self._size += len(data)
                return data
            self._close()

    def _open_next(self) -> BinaryIO | None:
        if self._next >= len(self.parts):
            return None
        part = self.parts[self._next]
        self._next += 1
        try:
            file = open(part.path, "rb")  # noqa: SIM115 - closed in _close
        except FileNotFoundError:
            self._fail(f"{part.path} is missing")
        except OSError as exc:
            self._fail(f"cannot read {part.path}: {exc.strerror}")
        self._part, self._file = part, file
        self._hash, self._size = hashlib.sha256(), 0
        return file

    def _close(self) -> None:
        part, file = self._part, self._file
        assert part is not None and file is not None
        self._part = self._file = None
        file.close()
        problem = _mismatch(part, self._size, self._hash.hexdigest())
        if problem:
            self._fail(problem)

    def _fail(self, problem: str) -> NoReturn:
        self.problems.append(problem)
        raise PartDamaged(problem, RECOPY_HINT)


def _mismatch(part: PartFile, size: int, sha256: str) -> str | None:
    if part.size is not None and size < part.size:
        return f"{part.path} is truncated: {size} of {part.size} bytes"
    if part.size is not None and size > part.size:
        return f"{part.path} is corrupt: {size} bytes, {part.size} recorded"
    if part.sha256 is not None and sha256 != part.sha256:
        return f"{part.path} is corrupt: its sha256 differs from the recorded one"
    return None
