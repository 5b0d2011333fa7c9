"""Value types of the content graph: digests, platforms and descriptors."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

from airgap.errors import BadReference, DigestMismatch

_SHA256_HEX = re.compile(r"[a-f0-9]{64}")


@dataclasses.dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, _, hexpart = text.partition(":")
        if algorithm != "sha256" or not _SHA256_HEX.fullmatch(hexpart):
            raise BadReference(
                f"unsupported or malformed digest {text!r}",
                "airgap handles sha256 digests (sha256:<64 hex>)",
            )
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls("sha256", hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


@dataclasses.dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise BadReference(
                f"invalid platform {text!r}",
                "write OS/ARCH[/VARIANT], e.g. linux/arm64",
            )
        return cls(*parts)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Platform:
        return cls(
            str(data.get("os", "")),
            str(data.get("architecture", "")),
            data.get("variant") or None,
        )

    def matches(self, other: Platform) -> bool:
        """Whether ``other`` (what content declares) satisfies this selector.

        A selector without a variant takes any variant.
        """
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return self.variant is None or self.variant == other.variant

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclasses.dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    artifact_type: str | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Descriptor:
        try:
            size = int(data["size"])
            digest = Digest.parse(str(data["digest"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadReference(f"malformed descriptor {data!r}") from exc
        platform = data.get("platform")
        return cls(
            media_type=str(data.get("mediaType", "")),
            digest=digest,
            size=size,
            urls=tuple(data.get("urls") or ()),
            platform=Platform.from_json(platform) if platform else None,
            artifact_type=data.get("artifactType"),
            annotations=tuple(sorted((data.get("annotations") or {}).items())),
        )

    @classmethod
    def for_bytes(cls, media_type: str, data: bytes) -> Descriptor:
        return cls(media_type, Digest.of(data), len(data))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.platform:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


class HashingCheck:
    """Hashes bytes as they stream past and checks them against a descriptor."""

    def __init__(self, expected: Descriptor, what: str) -> None:
        self.expected = expected
        self.what = what
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)
        if self.size > self.expected.size:
            raise DigestMismatch(
                f"{self.what}: more than the expected {self.expected.size} bytes"
            )

    def verify(self) -> None:
        if self.size != self.expected.size:
            raise DigestMismatch(
                f"{self.what}: size {self.size}, expected {self.expected.size}"
            )
        actual = self._hash.hexdigest()
        if actual != self.expected.digest.hex:
            raise DigestMismatch(
                f"{self.what}: digest sha256:{actual}, expected {self.expected.digest}"
            )
