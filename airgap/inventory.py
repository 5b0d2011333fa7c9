"""Inventories: what a registry holds, as a small JSON file: its repositories,
their tags, and the manifests and blobs those tags reach.

Taken on the isolated side (``airgap inventory``, ``unpack --inventory-out``)
and carried back, it lets ``pack --since`` leave out what is already there.
Untagged manifests are not listed: the registry API offers no way to find them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from typing import Any

from airgap.descriptor import Digest
from airgap.errors import ManifestUnknown, UsageError
from airgap.manifest import Manifest
from airgap.media import write_side_file
from airgap.registry import Registry

log = logging.getLogger(__name__)

FORMAT_KEY = "airgapInventory"
FORMAT_VERSION = 1
CATALOG_SCOPE = "registry:catalog:*"
_PAGE = 1000


@dataclasses.dataclass
class Repository:
    tags: dict[str, Digest]
    manifests: list[Digest]
    blobs: list[Digest]

    def to_json(self) -> dict[str, Any]:
        return {
            "tags": {tag: str(digest) for tag, digest in self.tags.items()},
            "manifests": [str(d) for d in self.manifests],
            "blobs": [str(d) for d in self.blobs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Repository:
        return cls(
            {str(t): Digest.parse(d) for t, d in (data.get("tags") or {}).items()},
            [Digest.parse(d) for d in data.get("manifests") or []],
            [Digest.parse(d) for d in data.get("blobs") or []],
        )


@dataclasses.dataclass
class Inventory:
    registry: str
    created: str
    repositories: dict[str, Repository]

    def blobs(self) -> set[Digest]:
        return {d for repo in self.repositories.values() for d in repo.blobs}

    def to_json(self) -> dict[str, Any]:
        return {
            FORMAT_KEY: FORMAT_VERSION,
            "registry": self.registry,
            "created": self.created,
            "repositories": {
                name: repo.to_json() for name, repo in self.repositories.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], what: str) -> Inventory:
        if data.get(FORMAT_KEY) != FORMAT_VERSION:
            raise UsageError(f"{what} is not an airgap inventory (format 1)")
        try:
            repositories = {
                str(name): Repository.from_json(repo)
                for name, repo in (data.get("repositories") or {}).items()
            }
        except (AttributeError, TypeError, ValueError) as exc:
            raise UsageError(f"{what} is a malformed inventory: {exc}") from exc
        return cls(
            str(data.get("registry", "")), str(data.get("created", "")), repositories
        )


def is_inventory(data: Any) -> bool:
    return isinstance(data, dict) and FORMAT_KEY in data


def take(registry: Registry) -> Inventory:
    """Walks every tag of every repository the catalog lists."""
    repositories = {name: _repository(registry, name) for name in catalog(registry)}
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Inventory(registry.display, created, repositories)


def write(inventory: Inventory, path: str) -> None:
    data = json.dumps(inventory.to_json(), indent=2) + "\n"
    write_side_file(path, data.encode())


def catalog(registry: Registry) -> list[str]:
    """Every repository name, following the catalog's pages."""
    names: list[str] = []
    path: str | None = f"/v2/_catalog?n={_PAGE}"
    while path:
        response = registry.transport.request(
            "GET", path, scopes=[CATALOG_SCOPE], expect=(200,)
        )
        names += response.json().get("repositories") or []
        path = response.links.get("next", {}).get("url")
    return names


def _repository(registry: Registry, name: str) -> Repository:
    tags: dict[str, Digest] = {}
    manifests: dict[Digest, None] = {}
    blobs: dict[Digest, None] = {}
    for tag in registry.list_tags(name):
        try:
            root = registry.get_manifest(name, tag)
        except ManifestUnknown:
            continue  # deleted between the tag list and now
        tags[tag] = root.digest
        _walk(registry, name, root, manifests, blobs)
    return Repository(tags, list(manifests), list(blobs))


def _walk(
    registry: Registry,
    repo: str,
    manifest: Manifest,
    manifests: dict[Digest, None],
    blobs: dict[Digest, None],
) -> None:
    if manifest.digest in manifests:
        return
    manifests[manifest.digest] = None
    blobs.update(dict.fromkeys(d.digest for d in manifest.blobs))
    for child in manifest.children:
        try:
            found = registry.get_manifest(repo, str(child.digest))
        except ManifestUnknown:
            log.warning("%s/%s: %s is not there", registry.display, repo, child.digest)
            continue
        _walk(registry, repo, found, manifests, blobs)
