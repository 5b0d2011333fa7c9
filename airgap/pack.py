"""pack: resolve every listed image at its registry and write one bundle."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

from airgap.bundle import PackOptions, PackResult, write_bundle
from airgap.cache import BlobCache
from airgap.copy import ResolvedImage, ResolveOptions, Resolver
from airgap.daemon import Daemon
from airgap.descriptor import Platform
from airgap.dockersource import resolve_from_docker
from airgap.imagelist import ImageList
from airgap.progress import QUIET, Progress
from airgap.registry import RegistryPool

log = logging.getLogger(__name__)


def resolve_all(
    images: ImageList,
    pool: RegistryPool,
    platforms: tuple[Platform, ...] | None,
    work: Path,
    from_docker: bool = False,
    resolve: ResolveOptions | None = None,
) -> list[ResolvedImage]:
    """Every entry's graph: from its registry, or exported from the local
    daemon for ``source: docker`` entries (all listed ones with --from-docker)."""
    resolver = Resolver(pool, platforms or images.platforms, resolve)
    daemon: Daemon | None = None
    resolved = []
    for entry in images.all_entries():
        local = entry.source == "docker" or (
            from_docker and not entry.is_registry_image
        )
        if not local:
            resolved += resolver.resolve_entry(entry)
            continue
        daemon = daemon or Daemon.connect()
        resolved.append(resolve_from_docker(entry, daemon, work / str(len(resolved))))
    return resolved


def bundle_platform(
    images: ImageList, chosen: Platform | None, platforms: tuple[Platform, ...] | None
) -> Platform:
    """The platform ``manifest.json`` is written for: the user's choice, else the
    first platform of the list, else linux/amd64."""
    if chosen:
        return chosen
    listed = platforms or images.platforms
    return listed[0] if listed else Platform("linux", "amd64")


def pack(
    images: ImageList,
    output: str,
    pool: RegistryPool,
    options: PackOptions,
    platforms: tuple[Platform, ...] | None = None,
    progress: Progress = QUIET,
    from_docker: bool = False,
    resolve: ResolveOptions | None = None,
    cache: BlobCache | None = None,
) -> PackResult:
    with tempfile.TemporaryDirectory(prefix="airgap-pack-") as work:
        resolved = resolve_all(
            images, pool, platforms, Path(work), from_docker, resolve
        )
        if cache:
            resolved = [cache.wrap(image) for image in resolved]
        log.info("writing %d images to %s", len(resolved), output)
        result = write_bundle(resolved, output, options, progress)
    if cache:
        log.info("%d blobs from the cache in %s", cache.hits, cache.root)
        result.cache_hits = cache.hits
    return result


def with_platform(options: PackOptions, platform: Platform) -> PackOptions:
    return dataclasses.replace(options, platform=platform)
