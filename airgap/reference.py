"""Image references, parsed by Docker's grammar and defaults.

The defaulting rules, written once:

- A first path component is a registry host when it contains ``.`` or ``:``, is
  ``localhost``, or has an uppercase letter; otherwise the registry is
  ``docker.io``.
- ``index.docker.io`` and ``registry-1.docker.io`` are spelled ``docker.io``.
- On ``docker.io`` a one-component repository gains ``library/``.
- With no tag and no digest the tag is ``latest``; with only a digest there is no
  tag.
- With both a tag and a digest the digest decides what is fetched and the tag is
  the name the image gets.
"""

from __future__ import annotations

import dataclasses
import re

from airgap.errors import BadReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io", DOCKER_HUB}

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)  # Docker's \w is ASCII only
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")
_HOST = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_MAX_NAME = 255


@dataclasses.dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        text = text.strip()
        if not text:
            raise BadReference("empty image reference")
        name, tag, digest = _split(text)
        registry, repository = _split_registry(name, text)
        _check_repository(repository, text)
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry, repository, tag, digest)

    @property
    def name(self) -> str:
        """Registry and repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def pinned(self) -> str:
        """What to fetch: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def with_registry(self, registry: str, prefix: str = "") -> Reference:
        repo = f"{prefix.strip('/')}/{self.repository}" if prefix else self.repository
        return dataclasses.replace(self, registry=registry, repository=repo)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _split(text: str) -> tuple[str, str | None, str | None]:
    name, at, digest = text.partition("@")
    if at:
        if not _DIGEST.fullmatch(digest):
            raise BadReference(f"invalid digest in {text!r}")
        if not digest.startswith("sha256:"):
            # Docker's grammar allows other algorithms, but only sha256 can be
            # checked here, and a pin that is not checked pins nothing.
            raise BadReference(
                f"unsupported digest algorithm in {text!r}",
                "airgap handles sha256 digests (sha256:<64 hex>)",
            )
        if not _SHA256.fullmatch(digest):
            raise BadReference(
                f"invalid digest in {text!r}", "sha256 digests are 64 lowercase hex"
            )
    colon = name.rfind(":")
    tag = None
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise BadReference(
                f"invalid tag {tag!r} in {text!r}",
                "a tag is 1 to 128 of A-Z a-z 0-9 _ . -, not starting with . or -",
            )
    return name, tag, digest if at else None


def _split_registry(name: str, text: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    is_host = slash and (
        "." in first or ":" in first or first == "localhost" or first != first.lower()
    )
    if not is_host:
        registry, repository = DOCKER_HUB, name
    else:
        if not _HOST.fullmatch(first):
            raise BadReference(f"invalid registry host {first!r} in {text!r}")
        registry, repository = first, rest
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    return registry, repository


def _check_repository(repository: str, text: str) -> None:
    if len(repository) > _MAX_NAME:
        raise BadReference(f"repository name longer than {_MAX_NAME} in {text!r}")
    for part in repository.split("/"):
        if _COMPONENT.fullmatch(part):
            continue
        if _COMPONENT.fullmatch(part.lower()):
            raise BadReference(
                f"repository name must be lowercase: {text!r}",
                "repository names are lowercase; tags may use any case",
            )
        raise BadReference(f"invalid repository name {repository!r} in {text!r}")


_HOST_HINT = "write HOST[:PORT], e.g. localhost:5000"


def parse_registry_host(text: str, what: str = "registry") -> str:
    """A registry as ``--registry`` and its kin name it: ``HOST[:PORT]``, by the
    host grammar of references, with no scheme and no path. Checked before any
    request, so a typo is a usage error, not an unreachable registry. ``what``
    names the value in the message."""
    host = text.strip()
    bad = f"invalid {what} {text!r}"
    if "://" in host:
        raise BadReference(
            f"{bad}: it takes no scheme",
            f"{_HOST_HINT}; --insecure-registry HOST allows plain HTTP",
        )
    if "/" in host:
        raise BadReference(
            f"{bad}: a registry is a host, without a path",
            f"{_HOST_HINT}; --prefix PATH (unpack, sync) puts images under a path",
        )
    if not _HOST.fullmatch(host):
        raise BadReference(f"{bad}: not a HOST[:PORT]", _HOST_HINT)
    port = host.rpartition("]")[2].partition(":")[2]
    if port and not 1 <= int(port) <= 65535:
        raise BadReference(f"{bad}: port {port} is not in 1-65535", _HOST_HINT)
    return host
