"""The media a bundle travels on: the sizes a medium takes, the names of a
bundle's files, and the side files beside it (``NAME.sha256`` in
``sha256sum -c`` format and ``NAME.index.json``) that record each file's
digest and size.

A bundle is named by its file, its ``.sha256`` file, its first part or its
base name; ``open_input`` finds its files and reads them as one stream, each
checked against the side files when they are there.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from airgap.errors import AirgapError, BundleCorrupt, UsageError
from airgap.parts import PartFile, PartReader, part_path
from airgap.streams import Reader

log = logging.getLogger(__name__)

SUFFIXES = (".tar.zst", ".tar")
SIDE_SUFFIXES = (".sha256", ".index.json")
_PART = re.compile(r"\.\d{3}$")
_SUM_LINE = re.compile(r"([a-f0-9]{64}) [ *](.+)")
_UNITS = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "KI": 2**10,
    "MI": 2**20,
    "GI": 2**30,
    "TI": 2**40,
}
# What fits: a CD-R holds 700 MiB, a DVD 4.7 GB, a dual-layer DVD 8.5 GB, and
# FAT32 caps a file at 4 GiB minus one byte.
PRESETS = {
    "cd": 700 * 10**6,
    "dvd": 4_700_000_000,
    "dvd-dl": 8_500_000_000,
    "fat32": 2**32 - 1,
}
# Smaller parts only multiply files (999 at most) and per-part checks; 1M is the
# smallest size one writes in the default, decimal, units.
MIN_SPLIT_SIZE = 10**6


def parse_size(text: str) -> int:
    """``700M``, ``4G``, ``4.7GB``: decimal units; ``512MiB``: binary; a bare
    number is bytes."""
    value = text.strip().upper().removesuffix("B")
    number = value.rstrip("KMGTI")
    unit = value[len(number) :]
    try:
        size = int(Decimal(number) * _UNITS[unit])
    except (KeyError, ArithmeticError, ValueError) as exc:
        hint = "write e.g. 50M, 4.7GB or 512MiB"
        raise UsageError(f"invalid size {text!r}", hint) from exc
    if size <= 0:
        raise UsageError(f"invalid size {text!r}", "a size must be positive")
    return size


def parse_split_size(text: str) -> int:
    """A size as ``parse_size`` reads it, or a medium's name (``PRESETS``)."""
    preset = PRESETS.get(text.strip().lower())
    if preset:
        return preset
    try:
        return parse_size(text)
    except UsageError as exc:
        media = ", ".join(PRESETS)
        hint = f"write e.g. 700M or 4.7GB, or one of {media}"
        raise UsageError(exc.message, hint) from None


def split_size_option(text: str) -> int:
    """``--split-size``: ``parse_split_size``, and no less than MIN_SPLIT_SIZE."""
    size = parse_split_size(text)
    if size < MIN_SPLIT_SIZE:
        raise UsageError(
            f"--split-size {text} is too small: a part holds at least "
            f"{MIN_SPLIT_SIZE:,} bytes",
            f"write e.g. 700M or 4.7GB, or one of {', '.join(PRESETS)}",
        )
    return size


def base_name(path: str) -> str:
    """``out/b.tar.zst``, ``out/b.tar.zst.001``, ``out/b.sha256`` -> ``out/b``:
    the stem the side files are named after."""
    path = _PART.sub("", path)
    for suffix in SIDE_SUFFIXES + SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def bundle_label(path: str) -> str:
    """The name a bundle is known by in messages: ``b.tar.zst``, for its parts
    too."""
    return os.path.basename(_PART.sub("", path))


# -- side files ---------------------------------------------------------------


def write_side_file(path: str, data: bytes) -> None:
    """Small files beside the bundle, also written whole or not at all."""
    tmp = Path(f"{path}.partial-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise AirgapError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_side_files(path: str, index: dict[str, Any], files: list[PartFile]) -> None:
    """``NAME.sha256``, a line per file, and ``NAME.index.json``: the digest
    index again with the part count and each file's digest and size."""
    base = base_name(path)
    sums = "".join(f"{f.sha256}  {f.name}\n" for f in files)
    write_side_file(f"{base}.sha256", sums.encode())
    side = {
        **index,
        "parts": len(files),
        "files": [
            {"name": f.name, "digest": f"sha256:{f.sha256}", "size": f.size}
            for f in files
        ],
    }
    write_side_file(f"{base}.index.json", (json.dumps(side, indent=2) + "\n").encode())


def recorded_files(base: str) -> list[PartFile]:
    """The bundle's files as ``NAME.sha256`` lists them (digests), with their
    sizes from ``NAME.index.json``; that file's list when there is no .sha256."""
    folder = os.path.dirname(base)
    listed = _index_files(f"{base}.index.json")
    sums = _sum_lines(f"{base}.sha256") or [(n, d) for n, (d, _) in listed.items()]
    sizes = {name: size for name, (_, size) in listed.items()}
    return [
        PartFile(os.path.join(folder, name), digest, sizes.get(name))
        for name, digest in sums
    ]


def _sum_lines(path: str) -> list[tuple[str, str]]:
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        match = _SUM_LINE.fullmatch(line.strip())
        if not match:
            raise BundleCorrupt(f"{path}:{number}: not a sha256sum line")
        lines.append((match.group(2), match.group(1)))
    return lines


def _index_files(path: str) -> dict[str, tuple[str, int]]:
    try:
        files = json.loads(Path(path).read_bytes()).get("files") or []
        return {
            str(f["name"]): (str(f["digest"]).removeprefix("sha256:"), int(f["size"]))
            for f in files
        }
    except FileNotFoundError:
        return {}
    except (ValueError, AttributeError, KeyError, TypeError):
        log.warning("%s is malformed; part sizes are not checked", path)
        return {}


# -- reading ------------------------------------------------------------------


def bundle_files(path: str) -> list[PartFile]:
    """The files of the bundle ``path`` names, in stream order."""
    if os.path.isdir(path):
        raise UsageError(
            f"cannot open bundle {path}: it is a directory",
            "pass a .tar.zst or .tar bundle in it, its .sha256 file or its first part",
        )
    recorded = recorded_files(base_name(path))
    is_side = path.endswith(SIDE_SUFFIXES)
    if os.path.isfile(path) and not is_side and not _PART.search(path):
        same = [f for f in recorded if f.name == os.path.basename(path)]
        return same or [PartFile(path)]
    found = recorded or _numbered_parts(path)
    if not found:
        raise UsageError(
            f"cannot open bundle {path}: no such file, and no parts of it",
            "pass a .tar.zst or .tar bundle, its .sha256 file or its first part",
        )
    return found


def _numbered_parts(path: str) -> list[PartFile]:
    base = base_name(path)
    stems = (_PART.sub("", path), *(base + s for s in SUFFIXES), base)
    for stem in dict.fromkeys(stems):
        numbered = (part_path(stem, n) for n in itertools.count(1))
        parts = list(itertools.takewhile(os.path.isfile, numbered))
        if parts:
            log.warning("no %s.sha256 beside the parts: they are not checked", base)
            return [PartFile(p) for p in parts]
    return []


def open_input(path: str) -> Reader:
    if path == "-":
        return sys.stdin.buffer
    return PartReader(bundle_files(path))
