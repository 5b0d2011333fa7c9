"""unpack: read a bundle once, front to back, verifying every blob while it is
pushed, then push each image whose every blob arrived intact."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from airgap import archive
from airgap.baseline import check_target
from airgap.bootstrap import Bootstrap, check_local, registry_record, spool_dir
from airgap.bundle import BundleReader, VerifiedStream
from airgap.copy import BlobPlacer, push_image
from airgap.descriptor import Descriptor, Digest
from airgap.errors import (
    AirgapError,
    BundleCorrupt,
    IntegrityError,
    RegistryUnreachable,
    UsageError,
)
from airgap.index import BlobRecord, DigestIndex, ImageRecord, split_target
from airgap.load import DockerLoader
from airgap.manifest import Manifest
from airgap.progress import QUIET, Progress
from airgap.reference import Reference
from airgap.registry import Registry
from airgap.verify import graph_problems, known_digests

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Landed:
    record: ImageRecord
    repository: str
    tag: str | None

    @property
    def reference(self) -> str:
        """What names the image at the target: its tag, else its digest."""
        if self.tag:
            return f"{self.repository}:{self.tag}"
        return f"{self.repository}@{self.record.digest}"


@dataclasses.dataclass
class UnpackResult:
    registry: str
    landed: list[Landed]
    broken: dict[str, str]
    uploaded: int = 0
    skipped: int = 0
    loaded: list[tuple[ImageRecord, str, str]] = dataclasses.field(default_factory=list)


def target_name(record: ImageRecord, prefix: str = "") -> tuple[str, str | None]:
    """Where an image lands under the target registry: its target name, under
    ``prefix`` when one is given."""
    repo, tag = split_target(record.target)
    if prefix:
        repo = f"{checked_prefix(prefix)}/{repo}"
    return repo, tag


def checked_prefix(prefix: str) -> str:
    """--prefix as a repository path: lowercase components, no '..'."""
    path = prefix.strip("/")
    try:
        parsed = Reference.parse(f"prefix.invalid/{path}/x") if path else None
    except AirgapError as exc:
        raise UsageError(
            f"invalid --prefix {prefix!r}: {exc.message}",
            "write a repository path such as 'mirror' or 'team/images'",
        ) from exc
    if parsed is None or parsed.repository != f"{path}/x":
        raise UsageError(
            f"invalid --prefix {prefix!r}",
            "write a repository path such as 'mirror' or 'team/images'",
        )
    return path


class _Unpacker:
    def __init__(
        self,
        target: Registry,
        index: DigestIndex,
        prefix: str,
        attachments: bool = True,
    ) -> None:
        self.target = target
        self.index = index
        # Without attachments, their blobs have no user and go nowhere.
        self.records = [r for r in index.images if attachments or not r.attachment_of]
        self.placer = BlobPlacer(target)
        self.names = {id(r): target_name(r, prefix) for r in index.images}
        self.users: dict[Digest, list[ImageRecord]] = defaultdict(list)
        for record in self.records:
            for digest in record.needs():
                self.users[digest].append(record)
        self.manifests: dict[Digest, Manifest] = {}
        self.known = known_digests(index)
        self.bad: dict[Digest, str] = {}
        self.uploaded = 0
        self.skipped = 0

    def repos_for(self, digest: Digest) -> list[str]:
        return [self.names[id(r)][0] for r in self.users[digest]]

    def take(self, record: BlobRecord, stream: VerifiedStream) -> None:
        if record.kind == "manifest":
            raw = stream.read_all()
            self.manifests[record.digest] = Manifest.parse(raw, record.media_type)
            return
        desc = Descriptor(record.media_type, record.digest, record.size)
        sent = self.placer.place(self.repos_for(record.digest), desc, stream)
        stream.finish()
        self.uploaded += sent
        self.skipped += 0 if sent else record.size

    def push_images(self) -> tuple[list[Landed], dict[str, str]]:
        landed, broken = [], {}
        failed: set[Digest] = set()
        for record in self.records:
            problem = self._problem(record, failed)
            if problem:
                failed.update(record.manifests)
                broken[record.target] = problem
                log.error("not pushing %s: %s", record.target, problem)
                continue
            repo, tag = self.names[id(record)]
            manifests = [self.manifests[d] for d in record.manifests]
            push_image(self.target, repo, tag, manifests)
            landed.append(Landed(record, repo, tag))
        return landed, broken

    def _problem(self, record: ImageRecord, failed: set[Digest]) -> str | None:
        if record.attachment_of in failed:
            return f"its subject {record.attachment_of} was not pushed"
        graph = graph_problems(record, self.manifests, self.known)
        if graph:
            return graph[0]
        for digest in record.needs():
            if digest in self.bad:
                problem = self.bad[digest]
                return (
                    problem if str(digest) in problem else f"blob {digest}: {problem}"
                )
        return None


def unpack(
    reader: BundleReader,
    target: Registry | None,
    prefix: str = "",
    progress: Progress = QUIET,
    bootstrap: Bootstrap | None = None,
    load: Callable[[DigestIndex, dict[int, str]], DockerLoader] | None = None,
    attachments: bool = True,
) -> UnpackResult:
    """Push into ``target`` (started first by ``bootstrap`` when nothing answers
    there), and/or load into Docker through the loader ``load`` makes;
    ``attachments`` False leaves the bundle's attachments unpushed."""
    index = reader.header().index
    work = _Unpacker(target, index, prefix, attachments) if target else None
    spool = (
        _Spool(bootstrap, index) if target and not _ready(target, bootstrap) else None
    )
    loader = load(index, docker_names(index, prefix)) if load else None
    if work and spool is None:
        check_target(work.placer, index, work.repos_for)
    bad: dict[Digest, str] = work.bad if work else {}
    seen: set[Digest] = set()
    damaged: AirgapError | None = None
    current: Digest | None = None
    with progress.bytes_bar(sum(b.size for b in index.blobs), "unpack") as bar:
        try:
            for record, member in reader.blobs(index):
                current = record.digest
                seen.add(current)
                tee = loader.tee_for(record) if loader else None
                stream = VerifiedStream(member, record, bar.update, tee)
                try:
                    if spool and work:
                        spool = spool.take(record, stream, work)
                    elif work:
                        work.take(record, stream)
                    else:
                        stream.finish()
                except BundleCorrupt:
                    raise
                except IntegrityError as exc:
                    bad[current] = exc.message
                # Read whole: damage found after this point is not this blob's.
                current = None
                if loader:
                    loader.blob_done(record)
        except BundleCorrupt as exc:
            damaged = reader.diagnose(exc)
            if current is not None:
                bad[current] = exc.message
    for blob in index.blobs:
        if blob.digest not in seen:
            bad.setdefault(blob.digest, "missing from the bundle")
    loaded = _finish_load(loader, bad, damaged)
    if spool is not None:
        spool.close()
        raise damaged or spool.never_started()
    landed, broken = work.push_images() if work else ([], {})
    name = target.display if target else "docker"
    result = UnpackResult(
        name,
        landed,
        broken,
        work.uploaded if work else 0,
        work.skipped if work else 0,
        loaded,
    )
    if broken or damaged:
        raise UnpackIncomplete(result, damaged)
    skipped = loader.left_out_error() if loader else None
    if skipped:
        skipped.partial = {"loaded": [name for _, name, _ in loaded]}
        raise skipped
    return result


def docker_names(index: DigestIndex, prefix: str) -> dict[int, str]:
    names = {}
    for record in index.images:
        repo, tag = target_name(record, prefix)
        if tag:
            names[id(record)] = f"{repo}:{tag}"
    return names


def _ready(target: Registry, bootstrap: Bootstrap | None) -> bool:
    """Whether the target answers; with --start-registry, an existing container
    of our name is started or reused first."""
    try:
        target.ping()
        return True
    except RegistryUnreachable:
        if bootstrap is None:
            raise
    check_local(target.host)
    if bootstrap.reuse_existing():
        return True
    return False


def _finish_load(
    loader: DockerLoader | None, bad: dict[Digest, str], damaged: AirgapError | None
) -> list[tuple[ImageRecord, str, str]]:
    if loader is None:
        return []
    if damaged or bad:
        loader.abort()
        first = next(iter(bad.items()), None)
        if damaged:
            raise damaged
        assert first is not None
        raise IntegrityError(
            f"nothing loaded into Docker: blob {first[0]}: {first[1]}",
            "run 'airgap verify' on the bundle and copy it again",
        )
    return loader.finish()


class _Spool:
    """Holds verified blobs on disk until the bundled registry is up, then
    hands them to the unpacker as if they had just arrived."""

    def __init__(self, bootstrap: Bootstrap | None, index: DigestIndex) -> None:
        assert bootstrap is not None
        registry_record(index)
        self.bootstrap = bootstrap
        self.index = index
        self.dir = spool_dir()
        self.paths: dict[Digest, Path] = {}
        self.records: list[BlobRecord] = []
        self.configs: dict[Digest, bytes] = {}

    def take(
        self, record: BlobRecord, stream: VerifiedStream, work: _Unpacker
    ) -> _Spool | None:
        """Keep one blob; start the registry once its image is complete.
        Returns None once the spool has been handed over."""
        if record.kind == "manifest":
            work.take(record, stream)
            return self
        path = self.dir / record.digest.hex
        with open(path, "wb") as out:
            while data := stream.read(1 << 20):
                out.write(data)
        stream.finish()
        self.paths[record.digest] = path
        self.records.append(record)
        if record.kind == "config":
            self.configs[record.digest] = path.read_bytes()
        wanted = self.bootstrap.needs(self.index, work.manifests, self.configs)
        if wanted is None or not self._complete(wanted[1]):
            return self
        self.bootstrap.start(wanted[0], wanted[1], self.paths)
        check_target(work.placer, self.index, work.repos_for)
        self._hand_over(work)
        return None

    def _complete(self, manifest: Manifest) -> bool:
        return all(d.digest in self.paths for d in manifest.blobs)

    def _hand_over(self, work: _Unpacker) -> None:
        for record in self.records:
            path = self.paths[record.digest]
            with open(path, "rb") as blob:
                member = archive.Member(str(path), record.size, blob)
                work.take(record, VerifiedStream(member, record))
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def never_started(self) -> AirgapError:
        return BundleCorrupt(
            "the bundle ended before the registry image was complete; "
            "nothing was pushed",
            "run 'airgap verify' on the bundle",
        )


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
