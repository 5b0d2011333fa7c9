"""The copy walker: resolve each listed image into its full content graph, then
move the graph into a sink in the one order a registry accepts.

The order, written once: blobs (configs and layers), then child manifests, then
the index, then the tag. A manifest is pushed only when every blob and child it
names is verified and present at the target.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable

from airgap.descriptor import Descriptor, Digest, Platform
from airgap.errors import RegistryError, UsageError
from airgap.imagelist import ImageEntry
from airgap.index import ImageRecord
from airgap.manifest import IMAGE_CONFIG_TYPES, OCI_INDEX, Manifest, platform_of_config
from airgap.registry import Registry, RegistryPool
from airgap.streams import Reader

log = logging.getLogger(__name__)

_ATTESTATION_FOR = "vnd.docker.reference.digest"


@dataclasses.dataclass
class ResolvedImage:
    """One image's whole graph: manifests in push order (children first, root
    last), configs in memory, layers as descriptors to stream later."""

    entry: ImageEntry
    record: ImageRecord
    registry: Registry
    repository: str
    manifests: dict[Digest, Manifest]
    configs: dict[Digest, bytes]
    layers: dict[Digest, Descriptor]

    @property
    def root(self) -> Manifest:
        return self.manifests[self.record.digest]


class Resolver:
    def __init__(
        self, pool: RegistryPool, platforms: tuple[Platform, ...] | None = None
    ):
        self.pool = pool
        self.platforms = platforms

    def resolve(self, entry: ImageEntry) -> ResolvedImage:
        ref = entry.reference
        registry = self.pool.source(ref)
        repo = ref.repository
        root = registry.get_manifest(repo, ref.pinned)
        wanted = entry.platforms if entry.platforms is not None else self.platforms
        walk = _Walk(registry, repo, str(ref))
        source_digest = None
        if root.is_index and wanted:
            subset = _select(root, wanted, str(ref))
            if subset.digest != root.digest:
                source_digest = root.digest
                root = subset
        walk.add(root)
        record = ImageRecord(
            source=str(ref),
            target=entry.target or _default_target(ref.repository, ref.tag, ref.digest),
            digest=root.digest,
            media_type=root.media_type,
            platforms=walk.platforms(root),
            manifests=list(walk.manifests),
            blobs=list(walk.configs)
            + [d for d in walk.layers if d not in walk.configs],
            registry_image=entry.is_registry_image,
            source_digest=source_digest,
        )
        log.info("resolved %s -> %s", ref, root.digest)
        return ResolvedImage(
            entry, record, registry, repo, walk.manifests, walk.configs, walk.layers
        )


class _Walk:
    """Fetches every manifest and config below a root, children first."""

    def __init__(self, registry: Registry, repo: str, what: str) -> None:
        self.registry = registry
        self.repo = repo
        self.what = what
        self.manifests: dict[Digest, Manifest] = {}
        self.configs: dict[Digest, bytes] = {}
        self.layers: dict[Digest, Descriptor] = {}
        self._platforms: dict[Digest, Platform | None] = {}

    def add(self, manifest: Manifest) -> None:
        for child in manifest.children:
            if child.digest not in self.manifests:
                self.add(self.registry.get_manifest(self.repo, str(child.digest)))
        config = manifest.config
        if config and config.digest not in self.configs:
            data = self.registry.get_blob(self.repo, config)
            self.configs[config.digest] = data
            if config.media_type in IMAGE_CONFIG_TYPES:
                self._platforms[manifest.digest] = platform_of_config(data)
        for layer in manifest.layers:
            self.layers.setdefault(layer.digest, layer)
        self.manifests[manifest.digest] = manifest

    def platforms(self, root: Manifest) -> list[str]:
        if not root.is_index:
            platform = self._platforms.get(root.digest)
            return [str(platform)] if platform else []
        return [
            str(child.platform)
            for child in root.children
            if child.platform and child.platform.os != "unknown"
        ]

    def platform_of(self, digest: Digest) -> Platform | None:
        return self._platforms.get(digest)


def _select(index: Manifest, wanted: tuple[Platform, ...], what: str) -> Manifest:
    """A new index with only the children of the wanted platforms (and the
    attestations that describe them); the same index when nothing is dropped."""
    children = index.data.get("manifests") or []
    kept = [
        c
        for c in children
        if c.get("platform")
        and any(w.matches(Platform.from_json(c["platform"])) for w in wanted)
    ]
    if not kept:
        offered = ", ".join(
            str(Platform.from_json(c["platform"]))
            for c in children
            if c.get("platform")
        )
        raise UsageError(
            f"{what} has none of the platforms {', '.join(map(str, wanted))}",
            f"it offers: {offered or 'no platforms'}",
        )
    kept_digests = {c["digest"] for c in kept}
    kept += [
        c
        for c in children
        if (c.get("annotations") or {}).get(_ATTESTATION_FOR) in kept_digests
    ]
    if len(kept) == len(children):
        return index
    data = dict(index.data)
    data["manifests"] = [c for c in children if c in kept]
    raw = json.dumps(data, indent=3).encode()
    return Manifest.parse(raw, index.media_type or OCI_INDEX)


def _default_target(repository: str, tag: str | None, digest: str | None) -> str:
    return f"{repository}:{tag}" if tag else repository


def docker_manifest(
    manifests: dict[Digest, Manifest],
    configs: dict[Digest, bytes],
    root: Digest,
    platform: Platform,
) -> Manifest | None:
    """The single-platform image manifest below ``root`` that suits ``platform``,
    for ``docker load``; None when there is none."""
    manifest = manifests.get(root)
    if manifest is None:
        return None
    if manifest.is_index:
        for child in manifest.children:
            if child.platform and platform.matches(child.platform):
                found = docker_manifest(manifests, configs, child.digest, platform)
                if found:
                    return found
        return None
    config = manifest.config
    if config is None or config.media_type not in IMAGE_CONFIG_TYPES:
        return None
    declared = platform_of_config(configs.get(config.digest, b"{}"))
    return manifest if declared and platform.matches(declared) else None


# -- the sink side: a registry ----------------------------------------------


Opener = Callable[[], Reader]


class BlobPlacer:
    """Puts blobs into the target registry's repositories: skip what is there,
    mount what this run already pushed elsewhere, upload the rest."""

    def __init__(self, target: Registry) -> None:
        self.target = target
        self._where: dict[Digest, str] = {}

    def has(self, repo: str, digest: Digest) -> bool:
        if self._where.get(digest) == repo:
            return True
        if self.target.blob_exists(repo, digest):
            self._where.setdefault(digest, repo)
            return True
        return False

    def place(self, repos: Iterable[str], desc: Descriptor, body: Reader) -> int:
        """Make ``desc`` present in every repo; returns bytes uploaded. ``body``
        is read at most once; what is not uploaded is still read to its end."""
        uploaded = 0
        for repo in dict.fromkeys(repos):
            if self.has(repo, desc.digest):
                continue
            source = self._where.get(desc.digest)
            if source and self.target.mount_blob(repo, desc.digest, source):
                continue
            if uploaded:
                raise RegistryError(
                    f"{self.target.display} would not mount {desc.digest} into {repo}",
                    "the registry lacks cross-repository mounts; use --prefix so "
                    "images share repositories, or push each image separately",
                )
            self.target.put_blob(repo, desc, body)
            self._where.setdefault(desc.digest, repo)
            uploaded = desc.size
        return uploaded


def push_manifests(
    target: Registry, repo: str, tag: str | None, manifests: list[Manifest]
) -> None:
    """Children first, each by digest; the root (last) under its tag if any."""
    for i, manifest in enumerate(manifests):
        is_root = i == len(manifests) - 1
        ref = tag if is_root and tag else str(manifest.digest)
        target.put_manifest(repo, ref, manifest)
