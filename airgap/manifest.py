"""Manifests and indexes: media types, classification and the graph they name.

Raw bytes are the truth: a manifest is parsed to learn what it references, and
its bytes are never re-serialised.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from airgap.descriptor import Descriptor, Digest, Platform
from airgap.errors import BundleCorrupt, UnsupportedManifest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
MANIFEST_TYPES = INDEX_TYPES + IMAGE_TYPES
SCHEMA1_TYPES = (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED)
ACCEPT = ", ".join(MANIFEST_TYPES)
IMAGE_CONFIG_TYPES = (DOCKER_CONFIG, OCI_CONFIG)


class Schema1Manifest(UnsupportedManifest):
    """A schema 1 manifest: refused, unless converted; it keeps its bytes for
    the converter."""

    def __init__(self, what: str, raw: bytes) -> None:
        super().__init__(
            f"{what} is a schema 1 manifest, which cannot be carried digest for digest",
            "pass --convert-schema1 to convert it to schema 2 (its digest changes), "
            "or re-push the image with a current client",
        )
        self.raw = raw


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A manifest or index as fetched: its raw bytes and what they name."""

    raw: bytes
    media_type: str
    data: dict[str, Any] = dataclasses.field(repr=False, compare=False)

    @classmethod
    def parse(cls, raw: bytes, content_type: str | None = None) -> Manifest:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise BundleCorrupt(f"manifest is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise BundleCorrupt("manifest is not a JSON object")
        media_type = classify(data, content_type)
        if media_type in SCHEMA1_TYPES:
            raise Schema1Manifest("the manifest", raw)
        return cls(raw, media_type, data)

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw))

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def children(self) -> list[Descriptor]:
        """Manifests an index names (empty for an image manifest)."""
        if not self.is_index:
            return []
        return [Descriptor.from_json(d) for d in self.data.get("manifests") or []]

    @property
    def config(self) -> Descriptor | None:
        config = self.data.get("config")
        return Descriptor.from_json(config) if config and not self.is_index else None

    @property
    def layers(self) -> list[Descriptor]:
        if self.is_index:
            return []
        return [Descriptor.from_json(d) for d in self.data.get("layers") or []]

    @property
    def blobs(self) -> list[Descriptor]:
        """Config first, then layers: every blob this manifest needs."""
        config = self.config
        return ([config] if config else []) + self.layers

    @property
    def foreign_layers(self) -> list[Descriptor]:
        """Layers a client may fetch from their ``urls`` instead of a registry."""
        return [layer for layer in self.layers if layer.urls]

    @property
    def artifact_type(self) -> str | None:
        """What a referrer is, as the referrers API reports it: its
        ``artifactType``, else its config's media type."""
        declared = self.data.get("artifactType")
        if isinstance(declared, str) and declared:
            return declared
        config = self.config
        return config.media_type if config else None

    @property
    def subject(self) -> Descriptor | None:
        subject = self.data.get("subject")
        return Descriptor.from_json(subject) if subject else None


def classify(data: dict[str, Any], content_type: str | None = None) -> str:
    """The media type of a manifest, from its field, else the server's, else its
    structure (old clients push manifests without ``mediaType``)."""
    if data.get("schemaVersion") == 1 or "fsLayers" in data:
        return DOCKER_SCHEMA1_SIGNED if "signatures" in data else DOCKER_SCHEMA1
    declared = data.get("mediaType")
    served = (content_type or "").split(";")[0].strip()
    if isinstance(declared, str) and declared:
        return declared
    if served in MANIFEST_TYPES:
        return served
    if "manifests" in data:
        return OCI_INDEX
    if "config" in data or "layers" in data:
        return OCI_MANIFEST
    raise BundleCorrupt("content is neither an image manifest nor an index")


def platform_of_config(config: bytes) -> Platform | None:
    try:
        data = json.loads(config)
    except ValueError:
        return None
    if not isinstance(data, dict) or not data.get("os"):
        return None
    return Platform.from_json(data)
