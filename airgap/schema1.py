"""Schema 1 manifests, converted to Docker schema 2 when the user asks for it
(``pack --convert-schema1``); refused otherwise, since no digest survives.

Schema 1 lists its layers newest first, each beside a ``v1Compatibility`` JSON
holding the image config as of that step; ``throwaway`` marks a step that
changed no files. Schema 2 wants one config naming the uncompressed digest
(``diff_id``) of every layer, so each layer is read once, decompressed and
hashed. The same schema 1 manifest always converts to the same bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import zlib
from collections.abc import Iterator
from typing import Any

from airgap.descriptor import Descriptor, Digest
from airgap.errors import UnsupportedManifest
from airgap.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    Manifest,
)
from airgap.registry import Registry

log = logging.getLogger(__name__)

# Fields of v1Compatibility that describe the v1 layer chain, not the image.
_V1_ONLY = ("id", "parent", "Size", "parent_id", "layer_id", "throwaway")
_GZIP_MAGIC = b"\x1f\x8b"


@dataclasses.dataclass(frozen=True)
class Converted:
    manifest: Manifest
    config: bytes
    source_digest: Digest

    @property
    def config_digest(self) -> Digest:
        return Digest.of(self.config)


@dataclasses.dataclass(frozen=True)
class _Step:
    v1: dict[str, Any]
    blob: Digest | None  # None for a throwaway step


def source_digest(raw: bytes) -> Digest:
    """The digest a registry gives a schema 1 manifest: of its bytes, or for a
    signed one of the payload its JWS signatures cover."""
    data = json.loads(raw)
    signatures = data.get("signatures")
    if not signatures:
        return Digest.of(raw)
    protected = json.loads(_b64url(signatures[0]["protected"]))
    tail = _b64url(protected["formatTail"])
    return Digest.of(raw[: int(protected["formatLength"])] + tail)


def convert(raw: bytes, registry: Registry, repo: str, what: str) -> Converted:
    data = json.loads(raw)
    steps = _steps(data, what)
    layers: dict[Digest, tuple[Descriptor, str]] = {}
    descriptors, diff_ids = [], []
    for step in steps:
        if step.blob is None:
            continue
        if step.blob not in layers:
            layers[step.blob] = _inspect(registry, repo, step.blob)
        desc, diff_id = layers[step.blob]
        descriptors.append(desc.to_json())
        diff_ids.append(diff_id)
    config = _config(steps, data, diff_ids)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": Descriptor.for_bytes(DOCKER_CONFIG, config).to_json(),
        "layers": descriptors,
    }
    converted = Manifest.parse(json.dumps(manifest, indent=3).encode())
    log.info("converted schema 1 %s to %s", what, converted.digest)
    return Converted(converted, config, source_digest(raw))


def _steps(data: dict[str, Any], what: str) -> list[_Step]:
    """The history, oldest first, each step with its layer blob."""
    layers, history = data.get("fsLayers") or [], data.get("history") or []
    if not layers or len(layers) != len(history):
        raise UnsupportedManifest(
            f"{what}: schema 1 manifest with {len(layers)} layers and "
            f"{len(history)} history entries cannot be converted"
        )
    steps = []
    for layer, entry in zip(reversed(layers), reversed(history), strict=True):
        v1 = json.loads(entry["v1Compatibility"])
        blob = None if v1.get("throwaway") else Digest.parse(layer["blobSum"])
        steps.append(_Step(v1, blob))
    return steps


def _config(steps: list[_Step], data: dict[str, Any], diff_ids: list[str]) -> bytes:
    """The newest step's config, less its v1 chain fields, with the layers'
    diff_ids and the history of every step."""
    config = {k: v for k, v in steps[-1].v1.items() if k not in _V1_ONLY}
    config.setdefault("architecture", data.get("architecture") or "amd64")
    config.setdefault("os", "linux")
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    config["history"] = [_history(step) for step in steps]
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def _history(step: _Step) -> dict[str, Any]:
    v1 = step.v1
    command = (v1.get("container_config") or {}).get("Cmd") or []
    entry = {
        "created": v1.get("created"),
        "created_by": " ".join(command),
        "author": v1.get("author"),
        "comment": v1.get("comment"),
    }
    out: dict[str, Any] = {k: v for k, v in entry.items() if v}
    if step.blob is None:
        out["empty_layer"] = True
    return out


def _inspect(registry: Registry, repo: str, digest: Digest) -> tuple[Descriptor, str]:
    """A layer's schema 2 descriptor and diff_id, read once from the registry."""
    size = registry.blob_size(repo, digest)
    chunks = registry.open_blob(repo, Descriptor(DOCKER_LAYER_GZIP, digest, size))
    try:
        gzipped, diff_id = _diff_id(chunks)
    except zlib.error as exc:
        raise UnsupportedManifest(
            f"layer {digest} of {registry.display}/{repo} is damaged gzip: {exc}"
        ) from exc
    media_type = DOCKER_LAYER_GZIP if gzipped else DOCKER_LAYER
    return Descriptor(media_type, digest, size), diff_id


def _diff_id(chunks: Iterator[bytes]) -> tuple[bool, str]:
    """Whether the blob is gzip, and the sha256 of its uncompressed bytes."""
    digest = hashlib.sha256()
    first = next(chunks, b"")
    if not first.startswith(_GZIP_MAGIC):
        digest.update(first)
        for chunk in chunks:
            digest.update(chunk)
        return False, f"sha256:{digest.hexdigest()}"
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for chunk in _prepend(first, chunks):
        while chunk:
            digest.update(inflate.decompress(chunk))
            # A gzip stream may hold several members, one after another.
            chunk = inflate.unused_data if inflate.eof else b""
            if inflate.eof:
                inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return True, f"sha256:{digest.hexdigest()}"


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
