"""Images that exist only in the local Docker daemon (built, never pushed).

``docker save`` streams an archive whose layers are uncompressed tars; they are
spooled to disk, gzip-compressed once, and given a Docker v2 manifest, so the
image travels and lands like any pulled from a registry.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airgap.copy import ResolvedImage
from airgap.daemon import Daemon
from airgap.descriptor import Descriptor, Digest
from airgap.errors import AirgapError
from airgap.imagelist import ImageEntry
from airgap.index import ImageRecord
from airgap.manifest import DOCKER_CONFIG, DOCKER_MANIFEST, Manifest, platform_of_config
from airgap.streams import ChunkReader

log = logging.getLogger(__name__)

GZIP_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
_CHUNK = 1 << 20


class LocalBlobs:
    """Blobs written by airgap itself, read back from disk at pack time."""

    display = "docker"

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: Digest) -> Path:
        return self.root / digest.hex

    def open_blob(self, repo: str, desc: Descriptor) -> Iterator[bytes]:
        with open(self.path(desc.digest), "rb") as blob:
            while data := blob.read(_CHUNK):
                yield data


def resolve_from_docker(entry: ImageEntry, daemon: Daemon, work: Path) -> ResolvedImage:
    ref = entry.reference
    name = f"{ref.name}:{ref.tag}" if ref.tag else str(ref)
    raw_dir = work / "saved"
    raw_dir.mkdir(parents=True, exist_ok=True)
    files = _spool_save(daemon.save(name), raw_dir)
    listing = json.loads(_read(files, "manifest.json", name))
    if not isinstance(listing, list) or not listing:
        raise AirgapError(f"docker save of {name} has an empty manifest.json")
    config = _read(files, listing[0]["Config"], name)
    blobs = LocalBlobs(work / "blobs")
    blobs.root.mkdir(exist_ok=True)
    layers = [_compress(files[path], blobs) for path in listing[0]["Layers"]]
    _check_diff_ids(config, layers, name)
    manifest = _manifest(config, [desc for desc, _ in layers])
    config_digest = Digest.of(config)
    platform = platform_of_config(config)
    record = ImageRecord(
        source=str(ref),
        target=entry.target_name,
        digest=manifest.digest,
        media_type=DOCKER_MANIFEST,
        platforms=[str(platform)] if platform else [],
        manifests=[manifest.digest],
        blobs=[config_digest] + [desc.digest for desc, _ in layers],
        registry_image=entry.is_registry_image,
        origin="docker",
    )
    log.info("exported %s from docker as %s", name, manifest.digest)
    return ResolvedImage(
        entry=entry,
        record=record,
        registry=blobs,
        repository=ref.repository,
        manifests={manifest.digest: manifest},
        configs={config_digest: config},
        layers={desc.digest: desc for desc, _ in layers},
    )


def _spool_save(chunks: Iterator[bytes], root: Path) -> dict[str, Path]:
    """Every regular file of the saved archive, by its name, on disk; names
    are never used as paths, so nothing in the archive can escape ``root``."""
    stream = ChunkReader(chunks)
    files: dict[str, Path] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
        for info in tar:
            if not info.isfile():
                continue
            path = root / f"{len(files):06d}"
            source = tar.extractfile(info)
            assert source is not None
            with open(path, "wb") as out:
                while data := source.read(_CHUNK):
                    out.write(data)
            files[info.name.removeprefix("./")] = path
    return files


def _read(files: dict[str, Path], name: str, image: str) -> bytes:
    path = files.get(name)
    if path is None:
        raise AirgapError(f"docker save of {image} lacks {name}")
    return path.read_bytes()


def _compress(raw: Path, blobs: LocalBlobs) -> tuple[Descriptor, str]:
    """The layer as a gzip blob and its diff_id; already-compressed layers keep
    their bytes."""
    with open(raw, "rb") as source:
        compressed = source.read(2) == b"\x1f\x8b"
    tmp = blobs.root / f"{raw.name}.gz"
    if compressed:
        raw.replace(tmp)
        diff_id = _sha256_of(gzip.open(tmp, "rb"))
    else:
        diff_id = _gzip_into(raw, tmp)
        raw.unlink()
    digest = _sha256_of(open(tmp, "rb"))
    desc = Descriptor(GZIP_LAYER, Digest("sha256", digest), tmp.stat().st_size)
    tmp.replace(blobs.path(desc.digest))
    return desc, f"sha256:{diff_id}"


def _gzip_into(raw: Path, out_path: Path) -> str:
    plain = hashlib.sha256()
    with open(raw, "rb") as source, open(out_path, "wb") as out:
        # filename "" and mtime 0: the same layer always gives the same digest
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
            while data := source.read(_CHUNK):
                plain.update(data)
                gz.write(data)
    return plain.hexdigest()


def _sha256_of(stream: Any) -> str:
    digest = hashlib.sha256()
    with stream:
        while data := stream.read(_CHUNK):
            digest.update(data)
    return digest.hexdigest()


def _check_diff_ids(
    config: bytes, layers: list[tuple[Descriptor, str]], name: str
) -> None:
    declared = json.loads(config).get("rootfs", {}).get("diff_ids", [])
    if declared != [diff_id for _, diff_id in layers]:
        raise AirgapError(
            f"docker save of {name}: the layers do not match the image config",
            "the image may have changed during the export; run pack again",
        )


def _manifest(config: bytes, layers: list[Descriptor]) -> Manifest:
    data = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": Descriptor.for_bytes(DOCKER_CONFIG, config).to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    return Manifest.parse(json.dumps(data, indent=3).encode())
