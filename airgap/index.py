"""The digest index (``airgap.json``): what a bundle holds, and where it goes."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from airgap import __version__
from airgap.descriptor import Digest
from airgap.errors import AirgapError, BundleCorrupt
from airgap.reference import Reference

FORMAT_VERSION = 1
KINDS = ("manifest", "config", "layer")


@dataclasses.dataclass
class BlobRecord:
    digest: Digest
    size: int
    media_type: str
    kind: str = "layer"

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": str(self.digest),
            "size": self.size,
            "mediaType": self.media_type,
            "kind": self.kind,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BlobRecord:
        return cls(
            Digest.parse(data["digest"]),
            int(data["size"]),
            str(data.get("mediaType", "")),
            str(data.get("kind", "layer")),
        )


@dataclasses.dataclass
class ImageRecord:
    source: str
    target: str
    digest: Digest
    media_type: str
    platforms: list[str]
    manifests: list[Digest]
    blobs: list[Digest]
    registry_image: bool = False
    source_digest: Digest | None = None
    origin: str = "registry"
    # A signature, attestation, SBOM or other referrer of the manifest with
    # this digest; pushed after it, into the same repository.
    attachment_of: Digest | None = None

    @property
    def target_repository(self) -> str:
        return split_target(self.target)[0]

    @property
    def target_tag(self) -> str | None:
        return split_target(self.target)[1]

    def needs(self) -> list[Digest]:
        return self.manifests + self.blobs

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "target": self.target,
            "digest": str(self.digest),
            "mediaType": self.media_type,
            "platforms": self.platforms,
            "manifests": [str(d) for d in self.manifests],
            "blobs": [str(d) for d in self.blobs],
            "registryImage": self.registry_image,
            "origin": self.origin,
        }
        if self.source_digest:
            out["sourceDigest"] = str(self.source_digest)
        if self.attachment_of:
            out["attachmentOf"] = str(self.attachment_of)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRecord:
        source_digest = data.get("sourceDigest")
        attachment_of = data.get("attachmentOf")
        return cls(
            source=str(data["source"]),
            target=_checked_target(str(data["target"])),
            digest=Digest.parse(data["digest"]),
            media_type=str(data["mediaType"]),
            platforms=[str(p) for p in data.get("platforms") or []],
            manifests=[Digest.parse(d) for d in data["manifests"]],
            blobs=[Digest.parse(d) for d in data["blobs"]],
            registry_image=bool(data.get("registryImage")),
            source_digest=Digest.parse(source_digest) if source_digest else None,
            origin=str(data.get("origin", "registry")),
            attachment_of=Digest.parse(attachment_of) if attachment_of else None,
        )


@dataclasses.dataclass
class DigestIndex:
    images: list[ImageRecord]
    blobs: list[BlobRecord]
    created: str
    platform: str
    tool: str = f"airgap {__version__}"
    version: int = FORMAT_VERSION
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def blob(self, digest: Digest) -> BlobRecord | None:
        return self._by_digest().get(digest)

    def _by_digest(self) -> dict[Digest, BlobRecord]:
        return {b.digest: b for b in self.blobs}

    def image_size(self, image: ImageRecord) -> int:
        table = self._by_digest()
        return sum(table[d].size for d in set(image.needs()) if d in table)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.version,
            "tool": self.tool,
            "created": self.created,
            "platform": self.platform,
            "images": [i.to_json() for i in self.images],
            "blobs": [b.to_json() for b in self.blobs],
            **self.extra,
        }

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2) + "\n").encode()

    @classmethod
    def loads(cls, raw: bytes, what: str = "airgap.json") -> DigestIndex:
        try:
            data = json.loads(raw)
            version = int(data.get("format", 0))
        except (ValueError, AttributeError) as exc:
            raise BundleCorrupt(f"{what} is not a valid digest index") from exc
        if version != FORMAT_VERSION:
            raise BundleCorrupt(
                f"{what} has format {version}; this airgap reads {FORMAT_VERSION}",
                "use the airgap version that wrote the bundle",
            )
        known = {"format", "tool", "created", "platform", "images", "blobs"}
        try:
            return cls(
                images=[ImageRecord.from_json(i) for i in data["images"]],
                blobs=[BlobRecord.from_json(b) for b in data["blobs"]],
                created=str(data.get("created", "")),
                platform=str(data.get("platform", "linux/amd64")),
                tool=str(data.get("tool", "")),
                version=version,
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleCorrupt(f"{what} is malformed: {exc}") from exc


def split_target(target: str) -> tuple[str, str | None]:
    """``library/nginx:alpine`` -> (``library/nginx``, ``alpine``)."""
    colon = target.rfind(":")
    if colon > target.rfind("/"):
        return target[:colon], target[colon + 1 :]
    return target, None


def _checked_target(target: str) -> str:
    """A target name read from a bundle is input like any other: it becomes a
    repository path on the isolated registry, so it must follow the grammar."""
    repo, tag = split_target(target)
    try:
        parsed = Reference.parse(f"target.invalid/{target}")
    except AirgapError as exc:
        raise BundleCorrupt(
            f"airgap.json names an invalid target {target!r}: {exc.message}",
            "the bundle was edited or damaged; pack it again",
        ) from exc
    if parsed.repository != repo or parsed.tag != (tag or parsed.tag) or parsed.digest:
        raise BundleCorrupt(f"airgap.json names an invalid target {target!r}")
    return target
