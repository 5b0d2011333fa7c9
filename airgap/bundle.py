"""The bundle: an OCI layout in one tar stream, with the digest index first.

Order inside (DESIGN.md): ``oci-layout``, ``airgap.json``, ``index.json``,
``manifest.json``, then ``blobs/sha256/<hex>``: manifests and configs first,
layers last. Readers see the whole index before the first layer byte.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import tarfile
from collections.abc import Callable, Container, Iterator
from typing import TYPE_CHECKING, Any

import zstandard

from airgap import archive
from airgap.copy import ResolvedImage, docker_manifest
from airgap.descriptor import Descriptor, Digest, HashingCheck, Platform
from airgap.errors import BundleCorrupt
from airgap.index import BlobRecord, DigestIndex, ImageRecord
from airgap.manifest import OCI_INDEX, Manifest
from airgap.media import write_side_files
from airgap.parts import RECOPY_HINT, PartDamaged, PartFile, PartReader, PartWriter
from airgap.progress import QUIET, Progress
from airgap.reference import Reference
from airgap.streams import ChunkReader, Reader

if TYPE_CHECKING:
    from airgap.baseline import Baseline

log = logging.getLogger(__name__)

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
HEADER_NAMES = ("oci-layout", "airgap.json", "index.json", "manifest.json")


@dataclasses.dataclass(frozen=True)
class PackOptions:
    compression: str = "zstd"
    level: int = 3
    threads: int = -1
    platform: Platform = Platform("linux", "amd64")
    split_size: int | None = None
    baseline: Baseline | None = None  # pack --since: leave out what it holds


@dataclasses.dataclass
class PackResult:
    index: DigestIndex
    path: str
    size: int
    sha256: str
    uploaded: int
    files: list[PartFile] = dataclasses.field(default_factory=list)
    cache_hits: int = 0


def blob_name(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"


# -- writing ------------------------------------------------------------------


class _Contents:
    """Every blob of every image, once, in bundle order; configs and layers
    in ``omit`` are left out (``omitted``), manifests always travel."""

    def __init__(
        self, images: list[ResolvedImage], omit: Container[Digest] = frozenset()
    ) -> None:
        self.small: dict[Digest, bytes] = {}
        self.records: dict[Digest, BlobRecord] = {}
        self.layers: dict[Digest, tuple[ResolvedImage, Descriptor]] = {}
        self.omitted: dict[Digest, BlobRecord] = {}
        self._omit = omit
        for image in images:
            for digest, manifest in image.manifests.items():
                self._add(digest, manifest.raw, manifest.media_type, "manifest")
        for image in images:
            config_types = {
                m.config.digest: m.config.media_type
                for m in image.manifests.values()
                if m.config
            }
            for digest, data in image.configs.items():
                self._add(digest, data, config_types.get(digest, ""), "config")
        # The registry image's layers lead, so unpack --start-registry can start
        # it after reading only a little of the stream.
        for image in sorted(images, key=lambda i: not i.record.registry_image):
            for digest, desc in image.layers.items():
                record = BlobRecord(digest, desc.size, desc.media_type, "layer")
                if digest not in self.records and self._keep(record):
                    self.records[digest] = record
                    self.layers[digest] = (image, desc)

    def _add(self, digest: Digest, data: bytes, media_type: str, kind: str) -> None:
        record = BlobRecord(digest, len(data), media_type, kind)
        if digest not in self.records and self._keep(record):
            self.records[digest] = record
            self.small[digest] = data

    def _keep(self, record: BlobRecord) -> bool:
        if record.kind != "manifest" and record.digest in self._omit:
            self.omitted.setdefault(record.digest, record)
            return False
        return True


def build_index(
    images: list[ResolvedImage], contents: _Contents, platform: Platform
) -> DigestIndex:
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return DigestIndex(
        images=[image.record for image in images],
        blobs=list(contents.records.values()),
        created=created,
        platform=str(platform),
    )


def oci_index(records: list[ImageRecord], sizes: dict[Digest, BlobRecord]) -> bytes:
    """The OCI ``index.json`` naming every image by its target name."""
    manifests = []
    for record in records:
        full = f"{_source_registry(record)}/{record.target}"
        if record.target_tag:
            annotations = {REF_NAME: record.target, CONTAINERD_NAME: full}
        else:
            # untagged (digest-only, attachments): no name a tool could mistake
            # for a tag; containerd takes a digest reference
            annotations = {CONTAINERD_NAME: f"{full}@{record.digest}"}
        manifests.append(
            {
                "mediaType": record.media_type,
                "digest": str(record.digest),
                "size": sizes[record.digest].size,
                "annotations": annotations,
            }
        )
    return manifests_json(manifests)


def manifests_json(manifests: list[dict[str, Any]]) -> bytes:
    data = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return (json.dumps(data, indent=2) + "\n").encode()


def docker_archive_manifest(
    images: list[ResolvedImage], platform: Platform, carried: Container[Digest]
) -> bytes:
    """``manifest.json`` so that ``docker load`` takes the decompressed tar; an
    image with blobs a differential bundle left out is not listed."""
    entries = []
    for image in images:
        manifest = docker_manifest(
            image.manifests, image.configs, image.record.digest, platform
        )
        if manifest is None or manifest.config is None or image.record.attachment_of:
            continue
        if any(blob.digest not in carried for blob in manifest.blobs):
            continue
        tag = image.record.target_tag
        entries.append(
            docker_archive_entry(manifest, [image.record.target] if tag else [])
        )
    return (json.dumps(entries, indent=2) + "\n").encode()


def write_bundle(
    images: list[ResolvedImage],
    path: str,
    options: PackOptions,
    progress: Progress = QUIET,
) -> PackResult:
    baseline = options.baseline
    contents = _Contents(images, baseline.holds if baseline else frozenset())
    index = build_index(images, contents, options.platform)
    if baseline:
        index.extra.update(baseline.record(list(contents.omitted.values())))
    out = PartWriter(path, options.split_size)
    try:
        _write(out, images, contents, index, options, progress)
        out.commit()
    except BaseException:
        out.abort()
        raise
    if path != "-":
        write_side_files(path, index.to_json(), out.files)
    return PackResult(index, path, out.size, out.sha256, 0, out.files)


def _write(
    out: PartWriter,
    images: list[ResolvedImage],
    contents: _Contents,
    index: DigestIndex,
    options: PackOptions,
    progress: Progress,
) -> None:
    writer = archive.ArchiveWriter(
        out,
        options.compression,
        options.level,
        options.threads,
    )
    try:
        _write_members(writer, images, contents, index, options, progress)
    except BaseException:
        writer.abandon()  # else tarfile flushes into parts already removed
        raise
    writer.close()


def _write_members(
    writer: archive.ArchiveWriter,
    images: list[ResolvedImage],
    contents: _Contents,
    index: DigestIndex,
    options: PackOptions,
    progress: Progress,
) -> None:
    writer.add_bytes("oci-layout", OCI_LAYOUT)
    writer.add_bytes("airgap.json", index.dumps())
    writer.add_bytes("index.json", oci_index(index.images, contents.records))
    docker_json = docker_archive_manifest(images, options.platform, contents.records)
    writer.add_bytes("manifest.json", docker_json)
    for digest, data in contents.small.items():
        writer.add_bytes(blob_name(digest), data)
    total = sum(desc.size for _, desc in contents.layers.values())
    with progress.bytes_bar(total, "pack") as bar:
        for digest, (image, desc) in contents.layers.items():
            bar.set_postfix_str(image.record.source, refresh=False)
            chunks = image.registry.open_blob(image.repository, desc)
            reader = ChunkReader(chunks, on_read=bar.update)
            writer.add_stream(blob_name(digest), desc.size, reader)
            reader.finish()


def _source_registry(record: ImageRecord) -> str:
    return Reference.parse(record.source).registry


def docker_archive_entry(manifest: Manifest, repo_tags: list[str]) -> dict[str, Any]:
    """One image of a Docker archive's ``manifest.json``, its files named as in
    the OCI layout; pack, --load and --start-registry all write these."""
    assert manifest.config is not None
    return {
        "Config": blob_name(manifest.config.digest),
        "RepoTags": repo_tags,
        "Layers": [blob_name(layer.digest) for layer in manifest.layers],
    }


# -- reading ------------------------------------------------------------------


@dataclasses.dataclass
class Header:
    index: DigestIndex
    oci_index: bytes
    docker_manifest: bytes | None


class VerifiedStream:
    """A bundle member read through its digest and size check."""

    def __init__(
        self,
        member: archive.Member,
        record: BlobRecord,
        on_read: Any = None,
        tee: Callable[[bytes], None] | None = None,
    ) -> None:
        desc = Descriptor(record.media_type, record.digest, record.size)
        self._stream = member.stream
        self._check = HashingCheck(desc, f"blob {record.digest}")
        self._done = False
        self._on_read = on_read
        self._tee = tee
        if member.size != record.size:
            raise BundleCorrupt(
                f"blob {record.digest} is {member.size} bytes in the tar, "
                f"{record.size} in airgap.json"
            )

    def __len__(self) -> int:
        return self._check.expected.size

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._stream.read(n)
        except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
            raise BundleCorrupt(f"the bundle is damaged or truncated: {exc}") from exc
        self._check.update(data)
        if self._tee and data:
            self._tee(data)
        if self._on_read and data:
            self._on_read(len(data))
        if not data or self._check.size == self._check.expected.size:
            self._verify()
        return data

    def read_all(self) -> bytes:
        parts: list[bytes] = []
        while True:
            data = self.read(archive.COPY_CHUNK)
            if not data:
                return b"".join(parts)
            parts.append(data)

    def finish(self) -> None:
        while self.read(archive.COPY_CHUNK):
            pass
        self._verify()

    def _verify(self) -> None:
        if not self._done:
            self._done = True
            self._check.verify()


class BundleReader:
    """Reads a bundle front to back: the header, then each blob once."""

    def __init__(self, stream: Reader, name: str) -> None:
        self.name = name
        self._source = stream
        self._members = archive.read_members(stream)
        self._pending: archive.Member | None = None
        self.unlisted: list[Digest] = []

    def part_problems(self) -> list[str]:
        """Reads what was left unread, checking every part to its end against
        the side files; the problems found in every part, in order."""
        if isinstance(self._source, PartReader):
            return self._source.check_rest()
        return []

    def diagnose(self, damage: BundleCorrupt) -> BundleCorrupt:
        """The bad parts, when there are any, rather than the stream error one
        of them caused."""
        problems = self.part_problems()
        if not problems:
            return damage
        return PartDamaged("; ".join(problems), RECOPY_HINT)

    def header(self) -> Header:
        try:
            return self._header()
        except BundleCorrupt as exc:
            named = self.diagnose(exc)
            if named is exc:
                raise
            raise named from exc

    def _header(self) -> Header:
        found: dict[str, bytes] = {}
        for expected in HEADER_NAMES:
            member = self._next()
            if member is None or member.name != expected:
                got = member.name if member else "the end of the stream"
                raise BundleCorrupt(
                    f"{self.name}: expected {expected}, found {got}",
                    "this is not an airgap bundle, or its start is damaged",
                )
            found[expected] = member.read_all()
        index = DigestIndex.loads(found["airgap.json"], f"{self.name}: airgap.json")
        return Header(index, found["index.json"], found["manifest.json"])

    def blobs(self, index: DigestIndex) -> Iterator[tuple[BlobRecord, archive.Member]]:
        table = {record.digest: record for record in index.blobs}
        while (member := self._next()) is not None:
            if not member.name.startswith("blobs/"):
                raise BundleCorrupt(f"{self.name}: {member.name} after the blobs began")
            digest = Digest("sha256", member.name.rsplit("/", 1)[1])
            record = table.get(digest)
            if record is None:
                # Not trusted and not needed: skipped, so one stray member does
                # not cost the images after it; verify reports it.
                self.unlisted.append(digest)
                log.warning(
                    "%s: blob %s is not in airgap.json; skipped", self.name, digest
                )
                continue
            yield record, member

    def _next(self) -> archive.Member | None:
        if self._pending is not None:
            member, self._pending = self._pending, None
            return member
        return next(self._members, None)


def manifests_in_order(
    record: ImageRecord, manifests: dict[Digest, Manifest]
) -> list[Manifest]:
    return [manifests[d] for d in record.manifests]
