"""The files a bundle is written to, and read back from.

A bundle is written under a temporary name and renamed only once it is whole
and flushed, so an interrupted pack never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import BinaryIO

from airgap.errors import UsageError

SUFFIXES = (".tar.zst", ".tar")


def base_name(path: str) -> str:
    """``out/b.tar.zst`` -> ``out/b``: the stem the side files are named after."""
    for suffix in SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


class AtomicOutput:
    """A write-only file that appears under its name only on ``commit()``.

    It hashes what passes, for the ``.sha256`` file written beside it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = 0
        self._hash = hashlib.sha256()
        self._stdout = path == "-"
        if self._stdout:
            self._file: BinaryIO = sys.stdout.buffer
            self._tmp = None
            return
        target = Path(path)
        if target.is_dir():
            raise UsageError(
                f"{path} is a directory", "name the bundle file, e.g. -o out.tar.zst"
            )
        if not target.parent.exists():
            raise UsageError(f"directory {target.parent} does not exist")
        self._tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._file.write(data)
        return len(data)

    def flush(self) -> None:
        self._file.flush()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def commit(self) -> None:
        self._file.flush()
        if self._tmp is None:
            return
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        _fsync_dir(Path(self.path).parent)

    def abort(self) -> None:
        if self._tmp is None:
            return
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def write_side_file(path: str, data: bytes) -> None:
    """Small files beside the bundle, also written whole or not at all."""
    tmp = Path(f"{path}.partial-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def open_input(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise UsageError(
            f"cannot open bundle {path}: {exc.strerror}",
            "pass the path of a .tar.zst or .tar bundle written by airgap pack",
        ) from exc


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
