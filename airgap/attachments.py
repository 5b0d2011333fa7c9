"""Attachments: signatures, attestations, SBOMs and other OCI referrers.

Two conventions find what is attached to a manifest of digest ``sha256:<hex>``:

- cosign's tags beside the image: ``sha256-<hex>.sig``, ``.att`` and ``.sbom``;
- OCI 1.1 referrers, manifests whose ``subject`` names the digest. The referrers
  API lists them; a registry without it (distribution 2.8 answers 404) is read
  and written through the fallback tag ``sha256-<hex>``, an index of them.

Each attachment travels as an image of its own, pushed after its subject into
the subject's repository.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from airgap.descriptor import Digest
from airgap.errors import AirgapError
from airgap.manifest import OCI_INDEX, Manifest
from airgap.registry import Registry

log = logging.getLogger(__name__)

COSIGN_SUFFIXES = (".sig", ".att", ".sbom")


@dataclasses.dataclass(frozen=True)
class Attachment:
    manifest: Manifest
    subject: Digest
    tag: str | None  # the cosign-style tag it was found under; None: a referrer


class AttachmentFailed(AirgapError):
    """An attachment could not be copied; the run fails, with the cause's code."""

    def __init__(self, what: str, cause: AirgapError) -> None:
        super().__init__(
            f"{what}: {cause.message}",
            "pass --no-attachments to leave signatures, attestations and SBOMs behind",
        )
        self.exit_code = cause.exit_code


def fallback_tag(digest: Digest) -> str:
    return f"{digest.algorithm}-{digest.hex}"


def discover(registry: Registry, repo: str, subject: Digest) -> list[Attachment]:
    """Everything attached to ``subject`` in ``repo``, cosign tags first; a
    manifest found both ways is listed once, under its tag."""
    found = _cosign_tags(registry, repo, subject)
    tagged = {a.manifest.digest for a in found}
    for digest in _referrer_digests(registry, repo, subject):
        if digest not in tagged:
            tagged.add(digest)
            manifest = registry.get_manifest(repo, str(digest))
            found.append(Attachment(manifest, subject, None))
    return found


def _cosign_tags(registry: Registry, repo: str, subject: Digest) -> list[Attachment]:
    found = []
    for suffix in COSIGN_SUFFIXES:
        tag = fallback_tag(subject) + suffix
        if registry.has_manifest(repo, tag):
            found.append(Attachment(registry.get_manifest(repo, tag), subject, tag))
    return found


def _referrer_digests(registry: Registry, repo: str, subject: Digest) -> list[Digest]:
    listed = registry.referrers(repo, subject)
    if listed is None and registry.has_manifest(repo, fallback_tag(subject)):
        index = registry.get_manifest(repo, fallback_tag(subject))
        listed = index.children if index.is_index else []
    return [desc.digest for desc in listed or []]


# -- the push side ------------------------------------------------------------


def referrer_descriptor(referrer: Manifest) -> dict[str, Any]:
    """The entry a referrers listing holds for ``referrer``."""
    out: dict[str, Any] = referrer.descriptor.to_json()
    if referrer.artifact_type:
        out["artifactType"] = referrer.artifact_type
    annotations = referrer.data.get("annotations")
    if isinstance(annotations, dict) and annotations:
        out["annotations"] = annotations
    return out


def add_to_fallback_tag(target: Registry, repo: str, referrer: Manifest) -> None:
    """Enter ``referrer`` in its subject's fallback tag, keeping what the tag
    already lists; for a registry without a referrers API."""
    subject = referrer.subject
    assert subject is not None
    tag = fallback_tag(subject.digest)
    existing = target.find_manifest(repo, tag)
    entries = _entries(existing, f"{target.display}/{repo}:{tag}")
    if any(e.get("digest") == str(referrer.digest) for e in entries):
        return
    entries.append(referrer_descriptor(referrer))
    data = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    raw = (json.dumps(data, indent=2) + "\n").encode()
    target.put_manifest(repo, tag, Manifest.parse(raw, OCI_INDEX))
    log.info("listed %s under %s/%s:%s", referrer.digest, target.display, repo, tag)


def _entries(existing: Manifest | None, what: str) -> list[dict[str, Any]]:
    if existing is None:
        return []
    if not existing.is_index:
        log.warning("%s is not an index of referrers; replacing it", what)
        return []
    return [dict(e) for e in existing.data.get("manifests") or []]
