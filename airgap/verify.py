"""verify and list: read a bundle offline, touching nothing else."""

from __future__ import annotations

import dataclasses
import logging

from airgap.baseline import omitted
from airgap.bundle import BundleReader, Header, VerifiedStream
from airgap.descriptor import Digest
from airgap.errors import BundleCorrupt, IntegrityError
from airgap.index import DigestIndex, ImageRecord
from airgap.manifest import Manifest
from airgap.progress import QUIET, Progress

log = logging.getLogger(__name__)


@dataclasses.dataclass
class VerifyResult:
    index: DigestIndex
    problems: list[str]
    blobs: int
    size: int


def read_header(reader: BundleReader) -> Header:
    return reader.header()


def verify(reader: BundleReader, progress: Progress = QUIET) -> VerifyResult:
    """Every blob's sha256 and size, and every reference of every manifest."""
    index = reader.header().index
    problems: list[str] = []
    manifests: dict[Digest, Manifest] = {}
    seen: set[Digest] = set()
    size = 0
    with progress.bytes_bar(sum(b.size for b in index.blobs), "verify") as bar:
        try:
            for record, member in reader.blobs(index):
                if record.digest in seen:
                    problems.append(f"blob {record.digest} is stored twice")
                seen.add(record.digest)
                stream = VerifiedStream(member, record, bar.update)
                try:
                    if record.kind == "manifest":
                        manifests[record.digest] = Manifest.parse(stream.read_all())
                    else:
                        stream.finish()
                except BundleCorrupt as exc:
                    # The stream broke inside this blob: say which one.
                    named = f"blob {record.digest}: {exc.message}"
                    raise BundleCorrupt(named, exc.hint) from exc
                except IntegrityError as exc:
                    problems.append(exc.message)
                size += record.size
        except BundleCorrupt as exc:
            problems.append(exc.message)
    problems += _graph_problems(index, manifests, seen)
    problems += [
        f"blob {d} is in the tar but not in airgap.json" for d in reader.unlisted
    ]
    return VerifyResult(index, _parts_first(reader, problems), len(seen), size)


def _parts_first(reader: BundleReader, problems: list[str]) -> list[str]:
    """Every bad part, named first: copying it again is the user's next step."""
    parts = reader.part_problems()
    return parts + [p for p in problems if p not in parts]


def _graph_problems(
    index: DigestIndex, manifests: dict[Digest, Manifest], seen: set[Digest]
) -> list[str]:
    problems = [
        f"blob {blob.digest} ({blob.kind}) is missing"
        for blob in index.blobs
        if blob.digest not in seen
    ]
    known = known_digests(index)
    for record in index.images:
        problems += graph_problems(record, manifests, known)
    return problems


def known_digests(index: DigestIndex) -> set[Digest]:
    """What the digest index accounts for: the blobs carried, and those a
    differential bundle left out."""
    return {b.digest for b in index.blobs} | set(omitted(index))


def graph_problems(
    record: ImageRecord, manifests: dict[Digest, Manifest], known: set[Digest]
) -> list[str]:
    """Whether an image's record and its manifests agree: its root is its last
    manifest, everything a manifest names is listed for the image, and
    everything listed is accounted for. unpack asks this before it pushes."""
    what = record.target
    if not record.manifests or record.manifests[-1] != record.digest:
        return [f"{what}: its manifest {record.digest} is not in its graph"]
    problems = [
        f"{what}: {digest} is not among the bundle's blobs"
        for digest in record.needs()
        if digest not in known
    ]
    needed = set(record.needs())
    for digest in record.manifests:
        manifest = manifests.get(digest)
        for desc in manifest.children + manifest.blobs if manifest else []:
            if desc.digest not in needed:
                problems.append(
                    f"{what}: manifest {digest} names {desc.digest}, "
                    "which the digest index does not list for it"
                )
    return problems
