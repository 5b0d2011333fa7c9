"""unpack: read a bundle once, front to back, verifying every blob while it is
pushed, then push each image whose every blob arrived intact."""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict

from airgap.bundle import BundleReader, VerifiedStream
from airgap.copy import BlobPlacer, push_manifests
from airgap.descriptor import Descriptor, Digest
from airgap.errors import AirgapError, BundleCorrupt, IntegrityError
from airgap.index import BlobRecord, DigestIndex, ImageRecord, split_target
from airgap.manifest import Manifest
from airgap.progress import QUIET, Progress
from airgap.registry import Registry

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Landed:
    record: ImageRecord
    repository: str
    tag: str | None

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}" if self.tag else self.repository


@dataclasses.dataclass
class UnpackResult:
    registry: str
    landed: list[Landed]
    broken: dict[str, str]
    uploaded: int = 0
    skipped: int = 0


def target_name(record: ImageRecord, prefix: str = "") -> tuple[str, str | None]:
    """Where an image lands under the target registry: its target name, under
    ``prefix`` when one is given."""
    repo, tag = split_target(record.target)
    if prefix:
        repo = f"{prefix.strip('/')}/{repo}"
    return repo, tag


class _Unpacker:
    def __init__(self, target: Registry, index: DigestIndex, prefix: str) -> None:
        self.target = target
        self.index = index
        self.placer = BlobPlacer(target)
        self.names = {id(r): target_name(r, prefix) for r in index.images}
        self.users: dict[Digest, list[ImageRecord]] = defaultdict(list)
        for record in index.images:
            for digest in record.needs():
                self.users[digest].append(record)
        self.manifests: dict[Digest, Manifest] = {}
        self.bad: dict[Digest, str] = {}
        self.uploaded = 0
        self.skipped = 0

    def repos_for(self, digest: Digest) -> list[str]:
        return [self.names[id(r)][0] for r in self.users[digest]]

    def take(self, record: BlobRecord, stream: VerifiedStream) -> None:
        if record.kind == "manifest":
            self.manifests[record.digest] = Manifest.parse(stream.read_all())
            return
        desc = Descriptor(record.media_type, record.digest, record.size)
        sent = self.placer.place(self.repos_for(record.digest), desc, stream)
        stream.finish()
        self.uploaded += sent
        self.skipped += 0 if sent else record.size

    def push_images(self) -> tuple[list[Landed], dict[str, str]]:
        landed, broken = [], {}
        for record in self.index.images:
            problem = self._problem(record)
            if problem:
                broken[record.target] = problem
                log.error("not pushing %s: %s", record.target, problem)
                continue
            repo, tag = self.names[id(record)]
            manifests = [self.manifests[d] for d in record.manifests]
            push_manifests(self.target, repo, tag, manifests)
            landed.append(Landed(record, repo, tag))
        return landed, broken

    def _problem(self, record: ImageRecord) -> str | None:
        for digest in record.needs():
            if digest in self.bad:
                return f"blob {digest}: {self.bad[digest]}"
        return None


def unpack(
    reader: BundleReader,
    target: Registry,
    prefix: str = "",
    progress: Progress = QUIET,
) -> UnpackResult:
    header = reader.header()
    index = header.index
    work = _Unpacker(target, index, prefix)
    target.ping()
    seen: set[Digest] = set()
    damaged: AirgapError | None = None
    total = sum(b.size for b in index.blobs)
    with progress.bytes_bar(total, "unpack") as bar:
        current: Digest | None = None
        try:
            for record, member in reader.blobs(index):
                current = record.digest
                seen.add(current)
                try:
                    work.take(record, VerifiedStream(member, record, bar.update))
                except BundleCorrupt:
                    raise
                except IntegrityError as exc:
                    work.bad[current] = exc.message
        except BundleCorrupt as exc:
            damaged = exc
            if current is not None:
                work.bad[current] = exc.message
    for blob in index.blobs:
        if blob.digest not in seen:
            work.bad.setdefault(blob.digest, "missing from the bundle")
    landed, broken = work.push_images()
    result = UnpackResult(target.display, landed, broken, work.uploaded, work.skipped)
    if broken or damaged:
        raise UnpackIncomplete(result, damaged)
    return result


class UnpackIncomplete(IntegrityError):
    def __init__(self, result: UnpackResult, damaged: AirgapError | None) -> None:
        first_target, first_problem = next(iter(result.broken.items()), ("", ""))
        where = f"{first_target}: {first_problem}" if first_target else ""
        count = len(result.broken)
        message = (
            f"{count} image(s) not pushed, their bundle content is corrupt or "
            f"missing; {where}"
            if count
            else f"the bundle is damaged: {damaged.message if damaged else ''}"
        )
        super().__init__(
            message,
            "run 'airgap verify' on the bundle and copy it again from the source "
            "media; images that were complete have been pushed",
        )
        self.result = result
