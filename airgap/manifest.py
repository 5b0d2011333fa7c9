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

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
MANIFEST_TYPES = INDEX_TYPES + IMAGE_TYPES
SCHEMA1_TYPES = (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED)
ACCEPT = ", ".join(MANIFEST_TYPES)
IMAGE_CONFIG_TYPES = (DOCKER_CONFIG, OCI_CONFIG)


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
        return cls(raw, classify(data, content_type), data)

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
    def subject(self) -> Descriptor | None:
        subject = self.data.get("subject")
        return Descriptor.from_json(subject) if subject else None


def classify(data: dict[str, Any], content_type: str | None = None) -> str:
    """The media type of a manifest, from its field, else the server's, else its
    structure (old clients push manifests without ``mediaType``)."""
    declared = data.get("mediaType")
    if isinstance(declared, str) and declared:
        media_type = declared
    elif content_type and content_type.split(";")[0].strip() in MANIFEST_TYPES:
        media_type = content_type.split(";")[0].strip()
    elif data.get("schemaVersion") == 1 or "fsLayers" in data:
        media_type = DOCKER_SCHEMA1_SIGNED
    elif "manifests" in data:
        media_type = OCI_INDEX
    elif "config" in data or "layers" in data:
        media_type = OCI_MANIFEST
    else:
        raise BundleCorrupt("content is neither an image manifest nor an index")
    if media_type in SCHEMA1_TYPES or data.get("schemaVersion") == 1:
        raise UnsupportedManifest(
            "schema 1 manifest",
            "schema 1 is deprecated; re-push the image with a current client",
        )
    return media_type


def platform_of_config(config: bytes) -> Platform | None:
    try:
        data = json.loads(config)
    except ValueError:
        return None
    if not isinstance(data, dict) or not data.get("os"):
        return None
    return Platform.from_json(data)
