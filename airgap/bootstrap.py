"""unpack --start-registry: when nothing answers at the target, start the
bundle's own registry image in the local Docker daemon, as a user would with

    docker run -d -p PORT:5000 --restart=always --name registry \\
        -v DATA:/var/lib/registry registry:2

A container of that name that already exists is reused when running and started
when stopped; it is never replaced, and refused at once when its port or TLS
setting cannot be the registry asked for.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import docker.errors

from airgap import archive
from airgap.bundle import blob_name, docker_archive_entry
from airgap.copy import docker_manifest
from airgap.daemon import NAME_RULE, Daemon, is_container_name
from airgap.descriptor import Digest
from airgap.errors import AirgapError, RegistryUnreachable, UsageError
from airgap.index import DigestIndex, ImageRecord
from airgap.manifest import Manifest
from airgap.registry import Registry
from airgap.transport import is_loopback

log = logging.getLogger(__name__)

REGISTRY_PORT = 5000
DATA_DIR = "/var/lib/registry"
READY_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class RegistrySpec:
    name: str = "registry"
    data: str | None = None
    network: str | None = None
    htpasswd: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def check(self) -> None:
        if not is_container_name(self.name):
            raise UsageError(
                f"--registry-name {self.name!r} is not a Docker container name",
                NAME_RULE,
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise UsageError(
                "--registry-tls-cert and --registry-tls-key go together",
                "pass both the certificate and its key",
            )
        for path in (self.htpasswd, self.tls_cert, self.tls_key):
            if path and not Path(path).is_file():
                raise UsageError(f"{path} is not a file")
        if self.data:
            _check_data_dir(self.data)


class Bootstrap:
    """Brings up the registry the unpack will push into."""

    def __init__(self, target: Registry, spec: RegistrySpec) -> None:
        spec.check()
        self.target = target
        self.spec = spec
        self.host, self.port = _host_port(target.host)
        self._daemon: Daemon | None = None

    @property
    def daemon(self) -> Daemon:
        if self._daemon is None:
            self._daemon = Daemon.connect()
        return self._daemon

    def reuse_existing(self) -> bool:
        """Start or reuse a container of our name; False when there is none."""
        container = self.daemon.container(self.spec.name)
        if container is None:
            return False
        self._check_fits(container.attrs)
        if container.status in ("running", "restarting"):
            log.info(
                "reusing the %s registry container %s", container.status, self.spec.name
            )
        else:
            log.info("starting the stopped registry container %s", self.spec.name)
            self._start(container)
        self._wait(container)
        return True

    def needs(
        self,
        index: DigestIndex,
        manifests: dict[Digest, Manifest],
        configs: dict[Digest, bytes],
    ) -> tuple[ImageRecord, Manifest] | None:
        """The bundled registry image for this daemon's platform, once its
        manifests and config have been read; None until then."""
        record = registry_record(index)
        platform = self.daemon.platform()
        manifest = docker_manifest(manifests, configs, record.digest, platform)
        if manifest is None and _configs_read(index, record, configs):
            raise AirgapError(
                f"the bundled registry image {record.source} has no {platform} variant",
                "pack again with a registry image for this platform",
            )
        return (record, manifest) if manifest else None

    def start(
        self, record: ImageRecord, manifest: Manifest, blob_path: dict[Digest, Path]
    ) -> None:
        assert manifest.config is not None
        name = self._image_name(record.target, str(manifest.config.digest))
        self._load(name, manifest, blob_path)
        container = self._run(name)
        self._wait(container)

    def _image_name(self, target: str, image_id: str) -> str:
        """The target name, unless the daemon already has another image under
        it: a host's own registry:2 is never retagged behind its owner's back."""
        held = self.daemon.image_id(target)
        if held is None or held == image_id:
            return target
        name = f"airgap-registry:{image_id.removeprefix('sha256:')[:12]}"
        log.warning("%s is another image on this daemon; loading as %s", target, name)
        return name

    # -- internals --------------------------------------------------------------

    def _load(
        self, name: str, manifest: Manifest, blob_path: dict[Digest, Path]
    ) -> None:
        assert manifest.config is not None
        entry = docker_archive_entry(manifest, [name])
        with tempfile.TemporaryFile() as tar:
            writer = archive.ArchiveWriter(tar, compression="none")
            for desc in [manifest.config, *manifest.layers]:
                with open(blob_path[desc.digest], "rb") as blob:
                    writer.add_stream(blob_name(desc.digest), desc.size, blob)
            writer.add_bytes("manifest.json", json.dumps([entry]).encode())
            writer.close()
            tar.seek(0)
            log.info("loading the bundled registry image as %s", name)
            self.daemon.load(tar)
        loaded = self.daemon.image_id(name)
        if loaded != str(manifest.config.digest):
            raise AirgapError(
                f"docker loaded {name} as {loaded}, expected {manifest.config.digest}"
            )

    def _check_fits(self, attrs: dict[str, Any]) -> None:
        """Refuse at once a container that cannot be the registry asked for:
        waiting on it would only time out."""
        differences = self._differences(attrs)
        if differences:
            name = self.spec.name
            raise UsageError(
                f"the existing container {name} cannot be the registry at "
                f"{self.target.host}: {'; '.join(differences)}",
                f"pass --registry-name with another name, or 'docker rm -f {name}' "
                "to replace it",
            )

    def _differences(self, attrs: dict[str, Any]) -> list[str]:
        found = []
        served = _served(attrs)
        accepted = {"", "0.0.0.0", "::", self.host, self._bind_address()}
        if not any(port == self.port and addr in accepted for addr, port in served):
            where = ", ".join(f"{addr or '*'}:{port}" for addr, port in served)
            found.append(f"it serves {where or 'no published port'}")
        tls = "REGISTRY_HTTP_TLS_CERTIFICATE" in _env(attrs)
        if tls != bool(self.spec.tls_cert):
            found.append(
                "it serves TLS, not plain HTTP"
                if tls
                else "it serves plain HTTP, not TLS"
            )
        return found

    def _run(self, image: str) -> Any:
        options = self._run_options()
        log.info("starting registry container %s on port %d", self.spec.name, self.port)
        try:
            container = self.daemon.client.containers.create(image, **options)
        except docker.errors.APIError as exc:
            raise self._start_error(exc) from exc
        try:
            self._start(container)
        except AirgapError:
            _remove(container)  # a re-run then creates it afresh
            raise
        return container

    def _start(self, container: Any) -> None:
        try:
            container.start()
        except docker.errors.APIError as exc:
            raise self._start_error(exc) from exc

    def _start_error(self, exc: docker.errors.APIError) -> AirgapError:
        why = _clip(str(exc.explanation or exc))
        name, network = self.spec.name, self.spec.network
        if network and f"network {network} not found" in why:
            return UsageError(
                f"the Docker daemon has no network {network}",
                "pick one from 'docker network ls' (or 'host'), or create it with "
                f"'docker network create {network}'",
            )
        if "already allocated" in why or "address already in use" in why:
            return RegistryUnreachable(
                f"registry container {name} cannot take port {self.port}: {why}",
                "free the port, or pick another with --registry HOST:PORT",
            )
        return AirgapError(
            f"docker could not start the registry container {name}: {why}",
            "fix what docker reports, then run unpack again",
        )

    def _run_options(self) -> dict[str, Any]:
        env, volumes = self._env_and_mounts()
        options: dict[str, Any] = {
            "detach": True,
            "name": self.spec.name,
            "restart_policy": {"Name": "always"},
            "environment": env,
            "volumes": volumes,
        }
        bind = self._bind_address()
        if self.spec.network == "host":
            options["network_mode"] = "host"
            env["REGISTRY_HTTP_ADDR"] = f"{bind}:{self.port}"
        else:
            if self.spec.network:
                options["network"] = self.spec.network
            options["ports"] = {f"{REGISTRY_PORT}/tcp": (bind, self.port)}
        return options

    def _env_and_mounts(self) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
        data = self.spec.data
        source = str(Path(data).resolve()) if data else f"{self.spec.name}-data"
        if data:
            Path(source).mkdir(parents=True, exist_ok=True)
        volumes = {source: {"bind": DATA_DIR, "mode": "rw"}}
        env: dict[str, str] = {}
        if self.spec.htpasswd:
            volumes[str(Path(self.spec.htpasswd).resolve())] = {
                "bind": "/auth/htpasswd",
                "mode": "ro",
            }
            env.update(
                REGISTRY_AUTH="htpasswd",
                REGISTRY_AUTH_HTPASSWD_REALM="airgap registry",
                REGISTRY_AUTH_HTPASSWD_PATH="/auth/htpasswd",
            )
        if self.spec.tls_cert and self.spec.tls_key:
            for name, path in (
                ("cert.pem", self.spec.tls_cert),
                ("key.pem", self.spec.tls_key),
            ):
                volumes[str(Path(path).resolve())] = {
                    "bind": f"/certs/{name}",
                    "mode": "ro",
                }
            env.update(
                REGISTRY_HTTP_TLS_CERTIFICATE="/certs/cert.pem",
                REGISTRY_HTTP_TLS_KEY="/certs/key.pem",
            )
        return env, volumes

    def _bind_address(self) -> str:
        # A loopback target stays on loopback; a local address serves the site.
        if self.host == "localhost":
            return "127.0.0.1"
        return self.host if is_loopback(self.host) else "0.0.0.0"

    def _wait(self, container: Any) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            try:
                self.target.ping()
                return
            except RegistryUnreachable:
                container.reload()
                # With --restart=always, a registry that died is "restarting".
                failed = container.status in ("exited", "dead", "restarting")
                if failed or time.monotonic() > deadline:
                    raise self._not_ready(container) from None
                time.sleep(0.3)

    def _not_ready(self, container: Any) -> AirgapError:
        return RegistryUnreachable(
            f"registry container {self.spec.name} ({container.status}) does not "
            f"answer at {self.target.host}: {_log_tail(container)}",
            f"see 'docker logs {self.spec.name}'; is port {self.port} free?",
        )


def _log_tail(container: Any, lines: int = 3) -> str:
    """The last log lines, clipped, on one line: the error must stay readable."""
    try:
        raw = container.logs(tail=lines).decode(errors="replace")
    except docker.errors.APIError:
        return "no log output"
    kept = [_clip(line) for line in raw.splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no log output"


def _clip(text: str, limit: int = 200) -> str:
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except docker.errors.APIError as exc:
        log.warning(
            "could not remove container %s: %s", container.name, _clip(str(exc))
        )


def _env(attrs: dict[str, Any]) -> dict[str, str]:
    pairs = (
        item.partition("=") for item in (attrs.get("Config") or {}).get("Env") or []
    )
    return {key: value for key, _, value in pairs}


def _served(attrs: dict[str, Any]) -> list[tuple[str, int]]:
    """Where the container's registry answers on the host, as (address, port);
    an empty address is every address."""
    addr, _, inner = _env(attrs).get("REGISTRY_HTTP_ADDR", "").rpartition(":")
    port = int(inner) if inner.isdigit() else REGISTRY_PORT
    host_config = attrs.get("HostConfig") or {}
    if host_config.get("NetworkMode") == "host":
        return [(addr.strip("[]"), port)]
    bindings = (host_config.get("PortBindings") or {}).get(f"{port}/tcp") or []
    return [
        (b.get("HostIp") or "", int(b["HostPort"]))
        for b in bindings
        if str(b.get("HostPort", "")).isdigit()
    ]


def _check_data_dir(data: str) -> None:
    path = Path(data).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == path else f": {existing}"
        raise UsageError(
            f"--registry-data {data}{where} is not a directory",
            "pass a directory (created when missing), or leave --registry-data out "
            "for a named volume",
        )


def registry_record(index: DigestIndex) -> ImageRecord:
    for record in index.images:
        if record.registry_image:
            return record
    raise UsageError(
        "the bundle carries no registry image, so --start-registry cannot start one",
        "pack with a registry image (registry-image in the list), or start a "
        "registry yourself",
    )


def check_local(host: str) -> None:
    name, _ = _host_port(host)
    if is_loopback(name) or _is_own_address(name):
        return
    raise UsageError(
        f"--start-registry starts a registry on this host, but {host} is not local",
        "use --registry localhost:PORT or one of this host's addresses",
    )


def _is_own_address(name: str) -> bool:
    try:
        address = socket.gethostbyname(name)
        ipaddress.ip_address(address)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
        return True
    except (OSError, ValueError):
        return False


def _host_port(host: str) -> tuple[str, int]:
    name, sep, port = host.rpartition(":")
    if not sep or not port.isdigit() or name.endswith(":"):
        raise UsageError(
            f"--start-registry needs a port in --registry: {host}",
            f"write --registry {host}:{REGISTRY_PORT}",
        )
    return name.strip("[]"), int(port)


def _configs_read(
    index: DigestIndex, record: ImageRecord, configs: dict[Digest, bytes]
) -> bool:
    kinds = {b.digest: b.kind for b in index.blobs}
    return all(d in configs for d in record.blobs if kinds.get(d) == "config")


def spool_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="airgap-spool-", dir=os.environ.get("TMPDIR")))
