"""pack: resolve every listed image at its registry and write one bundle."""

from __future__ import annotations

import dataclasses
import logging

from airgap.bundle import PackOptions, PackResult, write_bundle
from airgap.copy import ResolvedImage, Resolver
from airgap.descriptor import Platform
from airgap.imagelist import ImageList
from airgap.progress import QUIET, Progress
from airgap.registry import RegistryPool

log = logging.getLogger(__name__)


def resolve_all(
    images: ImageList, pool: RegistryPool, platforms: tuple[Platform, ...] | None
) -> list[ResolvedImage]:
    resolver = Resolver(pool, platforms or images.platforms)
    return [resolver.resolve(entry) for entry in images.all_entries()]


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
) -> PackResult:
    resolved = resolve_all(images, pool, platforms)
    log.info("writing %d images to %s", len(resolved), output)
    return write_bundle(resolved, output, options, progress)


def with_platform(options: PackOptions, platform: Platform) -> PackOptions:
    return dataclasses.replace(options, platform=platform)
