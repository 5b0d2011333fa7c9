"""The blob cache: layers pack has fetched, stored by digest, so that a pack
that was interrupted and is run again fetches only what it lacks.

A blob is written under a temporary name and renamed to its digest only once
its bytes hashed to that digest. Cached bytes are hashed again as they are
read; a cached file that no longer matches is removed, and the pack fails
rather than write it (run again, it fetches the blob afresh).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from airgap.copy import BlobSource, ResolvedImage
from airgap.descriptor import Descriptor, Digest, HashingCheck
from airgap.errors import DigestMismatch
from airgap.parts import AtomicOutput
from airgap.registry import Registry

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# What prune may remove: blobs and the temporary files of fills, nothing else,
# whatever directory --cache-dir names.
_OURS = re.compile(r"\.?[a-f0-9]{64}(\.partial-\d+)?")


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/airgap/blobs``, else ``~/.cache/airgap/blobs``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "airgap" / "blobs"


class BlobCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_dir()
        self.hits = 0
        self.hit_bytes = 0
        self.fetched = 0

    def path(self, digest: Digest) -> Path:
        return self.root / digest.algorithm / digest.hex

    def wrap(self, image: ResolvedImage) -> ResolvedImage:
        """The image with its layers read through the cache, when they come
        from a registry (a daemon's export is on local disk already)."""
        if not isinstance(image.registry, Registry):
            return image
        return dataclasses.replace(image, registry=CachedSource(image.registry, self))

    def open_blob(
        self, source: BlobSource, repo: str, desc: Descriptor
    ) -> Iterator[bytes]:
        path = self.path(desc.digest)
        if path.is_file() and path.stat().st_size == desc.size:
            self.hits += 1
            self.hit_bytes += desc.size
            log.info("blob cache hit: %s", desc.digest)
            return self._read(path, desc)
        self.fetched += 1
        return self._fill(source.open_blob(repo, desc), path, desc)

    def prune(self) -> tuple[int, int]:
        """Removes every cached blob; returns how many, and their bytes."""
        count = size = 0
        for path in self.root.glob("*/*"):
            if path.is_file() and _OURS.fullmatch(path.name):
                size += path.stat().st_size
                path.unlink()
                count += 1
        return count, size

    def _read(self, path: Path, desc: Descriptor) -> Iterator[bytes]:
        check = HashingCheck(desc, f"cached blob {desc.digest}")
        with open(path, "rb") as cached:
            while chunk := cached.read(CHUNK):
                check.update(chunk)
                yield chunk
        try:
            check.verify()
        except DigestMismatch as exc:
            path.unlink(missing_ok=True)
            raise DigestMismatch(
                f"{exc.message} (in {self.root}); removed it",
                "run pack again: it fetches the blob afresh",
            ) from exc

    def _fill(
        self, chunks: Iterator[bytes], path: Path, desc: Descriptor
    ) -> Iterator[bytes]:
        path.parent.mkdir(parents=True, exist_ok=True)
        # not fsynced: a cached blob is hashed again whenever it is read
        # nor hashed: the registry source checks the digest before the commit
        out = AtomicOutput(str(path), durable=False, hashed=False)
        try:
            for chunk in chunks:
                out.write(chunk)
                yield chunk
            if out.size != desc.size:
                raise DigestMismatch(f"blob {desc.digest}: other bytes arrived")
            out.commit()
        finally:
            out.abort()  # a no-op once committed


class CachedSource:
    """A blob source read through the cache: the same verbs as the source."""

    def __init__(self, source: BlobSource, cache: BlobCache) -> None:
        self.source = source
        self.cache = cache
        self.display = source.display

    def open_blob(self, repo: str, desc: Descriptor) -> Iterator[bytes]:
        return self.cache.open_blob(self.source, repo, desc)
