"""sync: copy the images of a list straight from their registries into a
registry this host also reaches (a DMZ mirror), with no bundle on disk.

The same walker as pack resolves each image (platform subsets, attachments,
schema 1 refusal), and the same placer and push order as unpack land it: blobs
stream registry to registry, checked against their digests on the way.
Everything is resolved before anything is pushed, so a bad list changes
nothing at the target.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any

from airgap.copy import (
    BlobPlacer,
    ResolvedImage,
    ResolveOptions,
    Resolver,
    push_image,
)
from airgap.descriptor import Descriptor, Digest, Platform
from airgap.errors import UsageError
from airgap.imagelist import ImageList
from airgap.progress import QUIET, Progress
from airgap.registry import Registry, RegistryPool
from airgap.streams import ChunkReader
from airgap.unpack import Landed, target_name

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SyncResult:
    registry: str
    landed: list[Landed]
    uploaded: int = 0
    skipped: int = 0


@dataclasses.dataclass(frozen=True)
class SyncOptions:
    prefix: str = ""
    platforms: tuple[Platform, ...] | None = None
    resolve: ResolveOptions = ResolveOptions()


def sync(
    images: ImageList,
    pool: RegistryPool,
    target: Registry,
    options: SyncOptions = SyncOptions(),
    progress: Progress = QUIET,
) -> SyncResult:
    """Copy the listed images (the registry image only when listed: the
    target already runs) into ``target``."""
    resolved = resolve_listed(images, pool, options)
    target.ping()
    copier = _Copier(target)
    result = SyncResult(target.display, [])
    total = sum(_size(image) for image in resolved)
    with progress.bytes_bar(total, "sync") as bar:
        for image in resolved:
            repo, tag = target_name(image.record, options.prefix)
            copier.copy(image, repo, tag, bar.update)
            result.landed.append(Landed(image.record, repo, tag))
    result.uploaded, result.skipped = copier.uploaded, copier.skipped
    return result


def resolve_listed(
    images: ImageList, pool: RegistryPool, options: SyncOptions
) -> list[ResolvedImage]:
    resolver = Resolver(pool, options.platforms or images.platforms, options.resolve)
    resolved = []
    for entry in images.images:
        if entry.source != "registry":
            raise UsageError(
                f"{images.path}:{entry.line}: sync copies from registries, and "
                f"{entry.reference} is listed with source: {entry.source}",
                "pack images from the local Docker daemon into a bundle instead",
            )
        resolved += resolver.resolve_entry(entry)
    return resolved


def _size(image: ResolvedImage) -> int:
    configs = sum(len(data) for data in image.configs.values())
    return configs + sum(desc.size for desc in image.layers.values())


class _Copier:
    """Blobs of each image into its target repository, then its manifests."""

    def __init__(self, target: Registry) -> None:
        self.target = target
        self.placer = BlobPlacer(target)
        self.uploaded = 0
        self.skipped = 0

    def copy(
        self,
        image: ResolvedImage,
        repo: str,
        tag: str | None,
        on_read: Callable[[int], Any],
    ) -> None:
        for digest in image.record.blobs:
            self._blob(image, digest, repo, on_read)
        manifests = [image.manifests[d] for d in image.record.manifests]
        push_image(self.target, repo, tag, manifests)
        log.info("synced %s -> %s/%s", image.record.source, self.target.display, repo)

    def _blob(
        self,
        image: ResolvedImage,
        digest: Digest,
        repo: str,
        on_read: Callable[[int], Any],
    ) -> None:
        config = image.configs.get(digest)
        if config is not None:
            desc = Descriptor("", digest, len(config))
            body = _LazyBlob(lambda: iter([config]), on_read)
        else:
            desc = image.layers[digest]
            body = _LazyBlob(
                lambda: image.registry.open_blob(image.repository, desc), on_read
            )
        sent = self.placer.place([repo], desc, body)
        body.finish()
        self.uploaded += sent
        self.skipped += 0 if sent else desc.size


class _LazyBlob:
    """A blob body that opens its source only when the target asks for bytes:
    nothing is downloaded for a blob the target has or mounts."""

    def __init__(
        self, open_chunks: Callable[[], Iterator[bytes]], on_read: Callable[[int], Any]
    ) -> None:
        self._open = open_chunks
        self._on_read = on_read
        self._reader: ChunkReader | None = None

    def read(self, n: int = -1) -> bytes:
        if self._reader is None:
            self._reader = ChunkReader(self._open(), self._on_read)
        return self._reader.read(n)

    def finish(self) -> None:
        """Read the source to its end, so its digest check runs."""
        if self._reader is not None:
            self._reader.finish()
