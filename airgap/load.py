"""unpack --load: the bundle's images of its platform into the local Docker
daemon, without a registry.

While the bundle streams past, the blobs those images need are teed into a
Docker archive fed to ``docker load``. Its ``manifest.json`` goes last, and only
once every blob was verified, so a damaged bundle loads nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from airgap import archive
from airgap.baseline import omitted
from airgap.bundle import blob_name, docker_archive_entry
from airgap.copy import docker_manifest
from airgap.daemon import Daemon, PipeLoad
from airgap.descriptor import Digest, Platform
from airgap.errors import AirgapError, IntegrityError
from airgap.index import BlobRecord, DigestIndex, ImageRecord
from airgap.manifest import Manifest

log = logging.getLogger(__name__)


class DockerLoader:
    def __init__(self, daemon: Daemon, index: DigestIndex, names: dict[int, str]):
        self.daemon = daemon
        self.index = index
        self.platform = Platform.parse(index.platform)
        self.names = names
        self.manifests: dict[Digest, Manifest] = {}
        self.configs: dict[Digest, bytes] = {}
        self.chosen: dict[int, Manifest] = {}
        self._needed: set[Digest] | None = None
        self.left_out: list[str] = []
        self._pipe = PipeLoad(daemon)
        self._tar = archive.ArchiveWriter(self._pipe.writer, compression="none")
        self._buffer: list[bytes] = []
        self._writing = False

    # -- fed by unpack, blob by blob ------------------------------------------

    def tee_for(self, record: BlobRecord) -> Callable[[bytes], None] | None:
        """The chunk sink for this blob, or None when the load needs none of it."""
        self._buffer = []
        if record.kind in ("manifest", "config"):
            return self._buffer.append
        if record.digest not in self._plan():
            return None
        self._tar.begin(blob_name(record.digest), record.size)
        self._writing = True
        return self._write

    def blob_done(self, record: BlobRecord) -> None:
        data = b"".join(self._buffer)
        self._buffer = []
        if record.kind == "manifest":
            self.manifests[record.digest] = Manifest.parse(data)
        elif record.kind == "config":
            self.configs[record.digest] = data
        elif self._writing:
            self._tar.end()
            self._writing = False

    def finish(self) -> list[tuple[ImageRecord, str, str]]:
        """Write what remains, let docker load it, and check every image ID."""
        self._plan()
        for digest in self._config_digests():
            self._tar.add_bytes(blob_name(digest), self.configs[digest])
        self._tar.add_bytes("manifest.json", self._archive_manifest())
        self._tar.close()
        self._pipe.finish()
        return self._check_ids()

    def left_out_error(self) -> IntegrityError | None:
        """Images asked for but not loaded because a differential bundle left
        their blobs out: the run must not look like a success."""
        if not self.left_out:
            return None
        return IntegrityError(
            f"{len(self.left_out)} image(s) not loaded into Docker, a differential "
            f"bundle left out their blobs: {', '.join(self.left_out)}",
            "unpack it into the registry that holds them, then docker pull",
        )

    def abort(self) -> None:
        self._tar.abandon()
        self._pipe.abort()

    # -- internals --------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self._tar.write(data)
        except BrokenPipeError:
            self._pipe.finish()
            raise AirgapError("docker load stopped reading the archive") from None

    def _plan(self) -> set[Digest]:
        if self._needed is None:
            self._needed = set()
            left_out = omitted(self.index)
            for record in self.index.images:
                if any(digest in left_out for digest in record.needs()):
                    # decided before the platform: a left-out config looks like
                    # a missing platform otherwise
                    self.left_out.append(record.target)
                    continue
                manifest = docker_manifest(
                    self.manifests, self.configs, record.digest, self.platform
                )
                if manifest is None or manifest.config is None:
                    log.info(
                        "%s has no %s image; not loaded", record.target, self.platform
                    )
                    continue
                self.chosen[id(record)] = manifest
                self._needed.update(layer.digest for layer in manifest.layers)
        return self._needed

    def _config_digests(self) -> list[Digest]:
        return list(
            dict.fromkeys(m.config.digest for m in self.chosen.values() if m.config)
        )

    def _archive_manifest(self) -> bytes:
        entries = []
        for record in self.index.images:
            manifest = self.chosen.get(id(record))
            if manifest is None or manifest.config is None:
                continue
            name = self.names.get(id(record))
            entries.append(docker_archive_entry(manifest, [name] if name else []))
        return json.dumps(entries).encode()

    def _check_ids(self) -> list[tuple[ImageRecord, str, str]]:
        loaded = []
        for record in self.index.images:
            manifest = self.chosen.get(id(record))
            if manifest is None or manifest.config is None:
                continue
            expected = str(manifest.config.digest)
            name = self.names.get(id(record), expected)
            actual = self.daemon.image_id(name)
            if actual != expected:
                raise IntegrityError(
                    f"docker loaded {name} as {actual}, the bundle says {expected}",
                    "the daemon may have rewritten the image; check 'docker inspect'",
                )
            loaded.append((record, name, expected))
        return loaded
