"""The baseline of a differential bundle: what an earlier bundle, its
``.index.json`` or a registry's inventory holds.

``pack --since`` leaves out every config and layer the baseline holds, while
manifests always travel (they are small, and they name what must arrive); the
bundle's ``airgap.json`` records what the baseline was (``since``) and every
blob left out (``omitted``, each with the bundle that carried it). Before
pushing anything, unpack checks that the target holds each of those blobs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airgap import inventory
from airgap.bundle import BundleReader
from airgap.copy import BlobPlacer
from airgap.descriptor import Digest
from airgap.errors import AirgapError, IntegrityError, UsageError
from airgap.index import BlobRecord, DigestIndex
from airgap.media import base_name, bundle_files, bundle_label
from airgap.parts import PartReader

log = logging.getLogger(__name__)

SINCE = "since"
OMITTED = "omitted"
CARRIED_BY = "carriedBy"


@dataclasses.dataclass
class Baseline:
    identity: dict[str, Any]
    holds: dict[Digest, str]  # blob -> the bundle (or registry) that had it

    def record(self, omitted: list[BlobRecord]) -> dict[str, Any]:
        """The fields a differential bundle's ``airgap.json`` carries."""
        return {
            SINCE: self.identity,
            OMITTED: [
                {**r.to_json(), CARRIED_BY: self.holds[r.digest]} for r in omitted
            ],
        }


def load(path: str) -> Baseline:
    """OLD of ``pack --since``: a bundle named any way unpack takes it, its
    ``.index.json``, or an inventory."""
    if not path.endswith(".json"):
        files = bundle_files(path)
        index = BundleReader(PartReader(files), path).header().index
        return from_index(index, bundle_label(files[0].path))
    try:
        raw = Path(path).read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    if inventory.is_inventory(data):
        return from_inventory(inventory.Inventory.from_json(data, path), path)
    return from_index(DigestIndex.loads(raw, path), _label(data, path))


def from_index(index: DigestIndex, label: str) -> Baseline:
    """A bundle holds what it carries, and what it left out in turn: a target
    that took it had to hold those already."""
    holds = {blob.digest: label for blob in index.blobs}
    for item in index.extra.get(OMITTED) or []:
        holds.setdefault(Digest.parse(item["digest"]), item.get(CARRIED_BY, label))
    identity = {"bundle": label, "created": index.created, "tool": index.tool}
    return Baseline(identity, holds)


def from_inventory(held: inventory.Inventory, path: str) -> Baseline:
    label = f"registry {held.registry}"
    identity = {
        "inventory": os.path.basename(path),
        "registry": held.registry,
        "created": held.created,
    }
    return Baseline(identity, dict.fromkeys(held.blobs(), label))


def _label(side: dict[str, Any], path: str) -> str:
    files = side.get("files") or [{}]
    name = files[0].get("name") if isinstance(files[0], dict) else None
    return bundle_label(name) if name else os.path.basename(base_name(path))


# -- unpack: the target must hold what was left out ---------------------------


@dataclasses.dataclass(frozen=True)
class _Lack:
    record: BlobRecord
    repo: str
    carried_by: str

    def __str__(self) -> str:
        return (
            f"{self.record.digest} ({self.record.kind} for {self.repo}, "
            f"carried by {self.carried_by})"
        )


class TargetLacksBlobs(IntegrityError):
    """Every blob lacking is logged; the message names the first few."""

    SHOWN = 5

    def __init__(self, registry: str, lacking: list[_Lack]) -> None:
        for lack in lacking:
            log.error("%s lacks %s", registry, lack)
        carriers = ", ".join(dict.fromkeys(lack.carried_by for lack in lacking))
        shown = "; ".join(map(str, lacking[: self.SHOWN]))
        more = len(lacking) - self.SHOWN
        super().__init__(
            f"{registry} lacks {len(lacking)} blob(s) this differential bundle "
            f"left out, so nothing was pushed: {shown}"
            + (f"; and {more} more" if more > 0 else ""),
            f"unpack {carriers} into {registry} first, or pack again without --since",
        )
        self.lacking = lacking


def omitted(index: DigestIndex) -> dict[Digest, tuple[BlobRecord, str]]:
    """What a differential bundle left out, and the bundle that carried each."""
    found = {}
    for item in index.extra.get(OMITTED) or []:
        record = BlobRecord.from_json(item)
        found[record.digest] = (record, str(item.get(CARRIED_BY, "an earlier bundle")))
    return found


def check_target(
    placer: BlobPlacer, index: DigestIndex, repos_for: Callable[[Digest], list[str]]
) -> None:
    """Stops before anything is pushed unless the target holds every blob the
    bundle left out, in each repository that needs it or in another one to
    mount it from; then mounts those."""
    left_out = omitted(index)
    if not left_out:
        return
    search = _Search(placer, [r for d in left_out for r in repos_for(d)])
    mounts: list[tuple[str, Digest, str]] = []
    lacking: list[_Lack] = []
    for digest, (record, carried_by) in left_out.items():
        for repo in dict.fromkeys(repos_for(digest)):
            if placer.has(repo, digest):
                continue
            source = search.find(digest)
            if source is None:
                lacking.append(_Lack(record, repo, carried_by))
                break
            mounts.append((repo, digest, source))
    if lacking:
        raise TargetLacksBlobs(placer.target.display, lacking)
    for repo, digest, source in mounts:
        if not placer.target.mount_blob(repo, digest, source):
            record, carried_by = left_out[digest]
            raise TargetLacksBlobs(
                placer.target.display, [_Lack(record, repo, carried_by)]
            )
    log.info("the target holds all %d blobs the bundle left out", len(left_out))


class _Search:
    """Finds a blob in some repository of the target: the bundle's own first,
    then every one the catalog lists."""

    def __init__(self, placer: BlobPlacer, repos: list[str]) -> None:
        self.placer = placer
        self.repos = list(dict.fromkeys(repos))
        self._catalog: list[str] | None = None

    def find(self, digest: Digest) -> str | None:
        for repo in self.repos + self.catalog():
            if self.placer.has(repo, digest):
                return repo
        return None

    def catalog(self) -> list[str]:
        if self._catalog is None:
            try:
                listed = inventory.catalog(self.placer.target)
            except AirgapError as exc:
                log.info("cannot list the target's repositories: %s", exc.message)
                listed = []
            self._catalog = [r for r in listed if r not in self.repos]
        return self._catalog
