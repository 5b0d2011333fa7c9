"""The copy walker: resolve each listed image into its full content graph, then
move the graph into a sink in the one order a registry accepts.

The order, written once: blobs (configs and layers), then child manifests, then
the index, then the tag, then attachments (each an image of its own, listed
after its subject). A manifest is pushed only when every blob and child it
names is verified and present at the target.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from airgap import schema1
from airgap.attachments import (
    Attachment,
    AttachmentFailed,
    add_to_fallback_tag,
    discover,
)
from airgap.descriptor import Descriptor, Digest, Platform
from airgap.errors import (
    AirgapError,
    DigestMismatch,
    ManifestUnknown,
    RegistryError,
    UsageError,
)
from airgap.imagelist import ImageEntry
from airgap.index import ImageRecord
from airgap.manifest import (
    IMAGE_CONFIG_TYPES,
    OCI_INDEX,
    Manifest,
    Schema1Manifest,
    platform_of_config,
)
from airgap.reference import Reference
from airgap.registry import Registry, RegistryPool
from airgap.streams import Reader

log = logging.getLogger(__name__)

_ATTESTATION_FOR = "vnd.docker.reference.digest"


class BlobSource(Protocol):
    """Where an image's layers are read from at pack time: a registry, or a
    local Docker daemon's export."""

    display: str

    def open_blob(self, repo: str, desc: Descriptor) -> Iterator[bytes]: ...


@dataclasses.dataclass
class ResolvedImage:
    """One image's whole graph: manifests in push order (children first, root
    last), configs in memory, layers as descriptors to stream later."""

    entry: ImageEntry
    record: ImageRecord
    registry: BlobSource
    repository: str
    manifests: dict[Digest, Manifest]
    configs: dict[Digest, bytes]
    layers: dict[Digest, Descriptor]

    @property
    def root(self) -> Manifest:
        return self.manifests[self.record.digest]


@dataclasses.dataclass(frozen=True)
class ResolveOptions:
    """``attachments``: bring each image's signatures, attestations and other
    referrers; ``convert_schema1``: convert schema 1 images, else refused."""

    attachments: bool = True
    convert_schema1: bool = False


class Resolver:
    """Resolves list entries at their registries; ``platforms`` is the list's
    default subset."""

    def __init__(
        self,
        pool: RegistryPool,
        platforms: tuple[Platform, ...] | None = None,
        options: ResolveOptions | None = None,
    ):
        self.pool = pool
        self.platforms = platforms
        self.options = options or ResolveOptions()

    def resolve_entry(self, entry: ImageEntry) -> list[ResolvedImage]:
        """The entry's image, then what is attached to it, each after its subject."""
        image = self.resolve(entry)
        if not self.options.attachments or not isinstance(image.registry, Registry):
            return [image]
        return [image, *self._attachments(image, image.registry)]

    def resolve(self, entry: ImageEntry) -> ResolvedImage:
        ref = entry.reference
        registry = self.pool.source(ref)
        walk = _Walk(registry, ref.repository, str(ref))
        root, source_digest = self._root(registry, walk, ref)
        wanted = entry.platforms if entry.platforms is not None else self.platforms
        if root.is_index and wanted:
            subset = _select(root, wanted, str(ref))
            if subset.digest != root.digest:
                source_digest = root.digest
                root = subset
        walk.add(root)
        log.info("resolved %s -> %s", ref, root.digest)
        return walk.resolved(
            entry,
            root,
            source=str(ref),
            target=entry.target_name,
            registry_image=entry.is_registry_image,
            source_digest=source_digest,
        )

    def _root(
        self, registry: Registry, walk: _Walk, ref: Reference
    ) -> tuple[Manifest, Digest | None]:
        """The manifest ``ref`` names, and its source digest when airgap had to
        write a new one (a converted schema 1 manifest, whose config, found in
        no registry, goes straight into the walk)."""
        try:
            return registry.get_manifest(ref.repository, ref.pinned), None
        except Schema1Manifest as exc:
            if not self.options.convert_schema1:
                raise
            converted = schema1.convert(exc.raw, registry, ref.repository, str(ref))
        if ref.digest and str(converted.source_digest) != ref.digest:
            raise DigestMismatch(
                f"{ref} served a schema 1 manifest of digest {converted.source_digest}"
            )
        walk.configs[converted.config_digest] = converted.config
        return converted.manifest, converted.source_digest

    def _attachments(
        self, image: ResolvedImage, registry: Registry
    ) -> list[ResolvedImage]:
        """Attachments of every manifest of the image's graph, and theirs in
        turn. A root airgap wrote itself exists nowhere else, so it has none;
        those of the source index a subset replaced stay behind with it."""
        record = image.record
        queue = [
            d
            for d in record.manifests
            if not (d == record.digest and record.source_digest)
        ]
        seen = set(image.manifests)
        found: list[ResolvedImage] = []
        while queue:
            subject = queue.pop(0)
            for attachment in self._discover(registry, image, subject):
                if attachment.manifest.digest in seen:
                    continue
                seen.add(attachment.manifest.digest)
                attached = self._attached(image, attachment, registry)
                found.append(attached)
                queue += attached.record.manifests
        return found

    def _discover(
        self, registry: Registry, image: ResolvedImage, subject: Digest
    ) -> list[Attachment]:
        try:
            return discover(registry, image.repository, subject)
        except AirgapError as exc:
            raise AttachmentFailed(
                f"attachments of {image.record.source} ({subject})", exc
            ) from exc

    def _attached(
        self, image: ResolvedImage, attachment: Attachment, registry: Registry
    ) -> ResolvedImage:
        name = image.entry.reference.name
        digest = attachment.manifest.digest
        source = f"{name}:{attachment.tag}" if attachment.tag else f"{name}@{digest}"
        repo = image.record.target_repository
        walk = _Walk(registry, image.repository, source)
        try:
            walk.add(attachment.manifest)
            _check_layers(registry, image.repository, walk.layers.values())
        except AirgapError as exc:
            raise AttachmentFailed(f"attachment {source}", exc) from exc
        log.info("attached to %s: %s", attachment.subject, source)
        return walk.resolved(
            image.entry,
            attachment.manifest,
            source=source,
            target=f"{repo}:{attachment.tag}" if attachment.tag else repo,
            attachment_of=attachment.subject,
        )


def _check_layers(registry: Registry, repo: str, layers: Iterable[Descriptor]) -> None:
    """Fail now, naming the attachment, rather than while the bundle is being
    written; attachments' layers are few and small."""
    for layer in layers:
        if not layer.urls and not registry.blob_exists(repo, layer.digest):
            raise ManifestUnknown(
                f"{registry.display}/{repo} lacks blob {layer.digest}"
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
        if config:
            data = self.configs.get(config.digest)
            if data is None:
                data = self.configs[config.digest] = self.registry.get_blob(
                    self.repo, config
                )
            if config.media_type in IMAGE_CONFIG_TYPES:
                self._platforms[manifest.digest] = platform_of_config(data)
        for layer in manifest.layers:
            self.layers.setdefault(layer.digest, layer)
        self.manifests[manifest.digest] = manifest

    def resolved(
        self, entry: ImageEntry, root: Manifest, **fields: Any
    ) -> ResolvedImage:
        """The walked graph as an image of the bundle; ``fields`` are the
        record's own (source, target, ...)."""
        record = ImageRecord(
            digest=root.digest,
            media_type=root.media_type,
            platforms=self.platforms(root),
            manifests=list(self.manifests),
            blobs=list(self.configs)
            + [d for d in self.layers if d not in self.configs],
            **fields,
        )
        return ResolvedImage(
            entry,
            record,
            self.registry,
            self.repo,
            self.manifests,
            self.configs,
            self.layers,
        )

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
    kept = {
        i
        for i, c in enumerate(children)
        if c.get("platform")
        and any(w.matches(Platform.from_json(c["platform"])) for w in wanted)
    }
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
    described = {children[i]["digest"] for i in kept}
    kept |= {
        i
        for i, c in enumerate(children)
        if (c.get("annotations") or {}).get(_ATTESTATION_FOR) in described
    }
    if len(kept) == len(children):
        return index
    data = dict(index.data)
    data["manifests"] = [c for i, c in enumerate(children) if i in kept]
    raw = json.dumps(data, indent=3).encode()
    return Manifest.parse(raw, index.media_type or OCI_INDEX)


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
) -> bool:
    """Children first, each by digest; the root (last) under its tag if any.
    True when the registry indexed the root's subject itself."""
    indexed = False
    for i, manifest in enumerate(manifests):
        is_root = i == len(manifests) - 1
        ref = tag if is_root and tag else str(manifest.digest)
        indexed = target.put_manifest(repo, ref, manifest)
    return indexed


def push_image(
    target: Registry, repo: str, tag: str | None, manifests: list[Manifest]
) -> None:
    """One image whose blobs are all in place: its manifests, then its tag; a
    referrer then enters its subject's fallback tag, where the registry keeps
    no referrers index of its own."""
    indexed = push_manifests(target, repo, tag, manifests)
    if manifests[-1].subject and not indexed:
        add_to_fallback_tag(target, repo, manifests[-1])
