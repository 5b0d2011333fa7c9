"""Real servers for the integration tests, and the tools that look at them.

A `Registry` is a `docker-registry serve` process (distribution 2.8) on a free
loopback port, optionally behind TLS from a throwaway CA and bcrypt htpasswd auth.
A `DockerDaemon` is a private dockerd with its own data root and socket, no bridge
and no iptables, so it touches neither the host's Docker nor its network.
`skopeo_inspect_raw` reads manifests with a tool that shares no code with airgap.
Nothing here talks to anything but 127.0.0.1 and local sockets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import click.testing
import docker
import imagebuild
import requests
import trustme
import yaml

REGISTRY_START_TIMEOUT = 20.0
DOCKERD_START_TIMEOUT = 60.0
USERNAME = "alice"


class ServerFailed(RuntimeError):
    """A test server did not come up; the message carries its log."""


def require_binary(name: str) -> str:
    """The path of `name`; a missing tool is a broken setup, not a reason to skip."""
    path = shutil.which(name)
    if path is None:
        raise ServerFailed(
            f"{name} is not on PATH; run scripts/test.sh, which installs the "
            "test dependencies"
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _terminate(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL to the whole group the process leads."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


@dataclass(frozen=True)
class Home:
    """The per-test home the isolated_home fixture points HOME and friends at."""

    home: Path
    docker_config: Path  # DOCKER_CONFIG, i.e. where config.json goes
    cache: Path  # XDG_CACHE_HOME
    config: Path  # XDG_CONFIG_HOME


# --- registry ----------------------------------------------------------------


@dataclass
class Registry:
    """A running registry; `url`, credentials and `ca_path` are all a client needs."""

    host: str
    url: str
    base_dir: Path
    data_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    ca_path: Path | None = None
    cert_dir: Path | None = None  # holds only ca.crt, for skopeo --cert-dir
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    start_seconds: float = 0.0

    @property
    def auth(self) -> tuple[str, str] | None:
        if self.username is None:
            return None
        return (self.username, self.password or "")

    def stop(self) -> None:
        _terminate(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An authenticated call to this registry, `verify` set explicitly."""
        return imagebuild.request(self, method, path, **kwargs)

    def get_manifest(self, repo: str, ref: str) -> requests.Response:
        accept = ", ".join(imagebuild.MANIFEST_TYPES)
        return self.request(
            "GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept}
        )

    def get_blob(self, repo: str, digest: str) -> bytes:
        response = self.request("GET", f"/v2/{repo}/blobs/{digest}")
        response.raise_for_status()
        return response.content

    def tags(self, repo: str) -> list[str]:
        response = self.request("GET", f"/v2/{repo}/tags/list")
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return sorted(response.json().get("tags") or [])

    def catalog(self) -> list[str]:
        response = self.request("GET", "/v2/_catalog")
        response.raise_for_status()
        return sorted(response.json().get("repositories") or [])


def start_registry(
    base_dir: Path,
    *,
    tls: bool = False,
    htpasswd: bool = False,
    config_extra: Mapping[str, Any] | None = None,
) -> Registry:
    """Start a registry under `base_dir`; retried if another process takes the port."""
    require_binary("docker-registry")
    base_dir.mkdir(parents=True, exist_ok=True)
    settings = _security(base_dir, tls, htpasswd)

    for _attempt in range(3):
        port = free_port()
        config = _registry_config(base_dir, port, settings, config_extra or {})
        try:
            return _launch_registry(base_dir, port, config, settings)
        except _PortTaken:
            continue
    raise ServerFailed("no free loopback port for the registry after 3 tries")


class _PortTaken(Exception):
    pass


@dataclass
class _Security:
    tls: dict[str, str] | None = None
    auth: dict[str, Any] | None = None
    ca_path: Path | None = None
    cert_dir: Path | None = None
    username: str | None = None
    password: str | None = None


def _security(base_dir: Path, tls: bool, htpasswd: bool) -> _Security:
    settings = _Security()
    if tls:
        _write_tls(base_dir, settings)
    if htpasswd:
        _write_htpasswd(base_dir, settings)
    return settings


def _write_tls(base_dir: Path, settings: _Security) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")

    # The server's key stays out of cert_dir: skopeo reads every *.key there
    # as a client key and fails without a matching *.cert.
    server_dir = base_dir / "tls"
    server_dir.mkdir()
    chain = b"".join(pem.bytes() for pem in cert.cert_chain_pems)
    (server_dir / "server.crt").write_bytes(chain)
    cert.private_key_pem.write_to_path(str(server_dir / "server.key"))
    settings.tls = {
        "certificate": str(server_dir / "server.crt"),
        "key": str(server_dir / "server.key"),
    }

    settings.cert_dir = base_dir / "certs"
    settings.cert_dir.mkdir()
    settings.ca_path = settings.cert_dir / "ca.crt"
    ca.cert_pem.write_to_path(str(settings.ca_path))


def _write_htpasswd(base_dir: Path, settings: _Security) -> None:
    # distribution 2.8 accepts bcrypt entries only; cost 4 keeps each request fast.
    password = secrets.token_urlsafe(12)
    line = subprocess.run(
        [require_binary("htpasswd"), "-nbBC", "4", USERNAME, password],
        check=True,
        capture_output=True,
    ).stdout.strip()
    path = base_dir / "htpasswd"
    path.write_bytes(line + b"\n")
    settings.auth = {"htpasswd": {"realm": "airgap-tests", "path": str(path)}}
    settings.username, settings.password = USERNAME, password


def _registry_config(
    base_dir: Path, port: int, settings: _Security, extra: Mapping[str, Any]
) -> dict[str, Any]:
    http: dict[str, Any] = {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex()}
    if settings.tls:
        http["tls"] = settings.tls
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(base_dir / "data")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if settings.auth:
        config["auth"] = settings.auth
    return deep_merge(config, extra)


def _launch_registry(
    base_dir: Path, port: int, config: dict[str, Any], settings: _Security
) -> Registry:
    config_path = base_dir / "config.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = base_dir / "registry.log"
    started = time.monotonic()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [require_binary("docker-registry"), "serve", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    scheme = "https" if settings.tls else "http"
    registry = Registry(
        host=f"127.0.0.1:{port}",
        url=f"{scheme}://127.0.0.1:{port}",
        base_dir=base_dir,
        data_dir=Path(config["storage"]["filesystem"]["rootdirectory"]),
        config_path=config_path,
        log_path=log_path,
        process=process,
        ca_path=settings.ca_path,
        cert_dir=settings.cert_dir,
        username=settings.username,
        password=settings.password,
    )
    _wait_for_registry(registry)
    registry.start_seconds = time.monotonic() - started
    return registry


def _wait_for_registry(registry: Registry) -> None:
    deadline = time.monotonic() + REGISTRY_START_TIMEOUT
    while time.monotonic() < deadline:
        if registry.process.poll() is not None:
            if "address already in use" in registry.log():
                raise _PortTaken()
            raise ServerFailed(f"registry exited:\n{_log_tail(registry.log_path)}")
        try:
            # Any answer will do: 401 means the auth layer is up, and that is ready.
            registry.request("GET", "/v2/", timeout=1)
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.05)
    registry.stop()
    raise ServerFailed(
        f"registry did not answer at {registry.url}/v2/ within "
        f"{REGISTRY_START_TIMEOUT:.0f}s:\n{_log_tail(registry.log_path)}"
    )


def write_docker_config(docker_config: Path, *registries: Registry) -> Path:
    """A config.json with `auths` entries for `registries`, as `docker login` does."""
    auths = {}
    for registry in registries:
        pair = f"{registry.username}:{registry.password}".encode()
        auths[registry.host] = {"auth": base64.b64encode(pair).decode()}
    docker_config.mkdir(parents=True, exist_ok=True)
    path = docker_config / "config.json"
    path.write_text(json.dumps({"auths": auths}, indent=2))
    return path


# --- skopeo ------------------------------------------------------------------


def skopeo_inspect_raw(ref: str, registry: Registry) -> bytes:
    """The manifest bytes skopeo reads for `ref` ("repo:tag" or "repo@digest")."""
    args = [require_binary("skopeo"), "inspect", "--raw"]
    if registry.cert_dir is not None:
        args.append(f"--cert-dir={registry.cert_dir}")
    else:
        args.append("--tls-verify=false")
    if registry.username is not None:
        args.append(f"--creds={registry.username}:{registry.password}")
    args.append(f"docker://{registry.host}/{ref}")

    # An empty registries.conf: no mirror or alias on the host can redirect us.
    env = dict(os.environ, CONTAINERS_REGISTRIES_CONF=os.devnull)
    result = subprocess.run(args, capture_output=True, env=env, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"skopeo inspect {ref}: {result.stderr.decode()}")
    return result.stdout


def skopeo_digest(ref: str, registry: Registry) -> str:
    return "sha256:" + hashlib.sha256(skopeo_inspect_raw(ref, registry)).hexdigest()


# --- docker daemon -----------------------------------------------------------


@dataclass
class DockerDaemon:
    """A private dockerd; point airgap at it with DOCKER_HOST=`host`."""

    host: str
    client: docker.DockerClient = field(repr=False)
    root: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    start_seconds: float = 0.0

    def docker(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the docker CLI against this daemon."""
        env = dict(os.environ, DOCKER_HOST=self.host)
        result = subprocess.run(
            [require_binary("docker"), *args],
            input=input,
            capture_output=True,
            env=env,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace')}"
            )
        return result

    def stop(self) -> None:
        self.client.close()
        _terminate(self.process, timeout=30)
        _unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def _unmount_under(root: Path) -> None:
    """Undo mounts dockerd leaves behind (its netns/default survives a clean exit)."""
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in reversed(points):  # the innermost were mounted last
        if point.startswith(f"{root}/"):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def start_docker_daemon() -> DockerDaemon:
    # A unix socket path has a ~108-byte limit, so the whole tree sits in /tmp.
    root = Path(tempfile.mkdtemp(prefix="/tmp/agd"))
    host = f"unix://{root}/docker.sock"
    log_path = root / "dockerd.log"
    args = [
        require_binary("dockerd"),
        f"--data-root={root}/data",
        f"--exec-root={root}/e",
        f"--pidfile={root}/dockerd.pid",
        f"-H={host}",
        "--iptables=false",
        "--bridge=none",
        "--storage-driver=vfs",
    ]
    started = time.monotonic()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = _wait_for_dockerd(host, process, log_path)
    return DockerDaemon(
        host, client, root, log_path, process, time.monotonic() - started
    )


def _wait_for_dockerd(
    host: str, process: subprocess.Popen[bytes], log_path: Path
) -> docker.DockerClient:
    deadline = time.monotonic() + DOCKERD_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerFailed(f"dockerd exited:\n{_log_tail(log_path)}")
        try:
            client = docker.DockerClient(base_url=host, timeout=30)
            client.ping()
            return client
        except docker.errors.DockerException:
            time.sleep(0.2)
    _terminate(process, timeout=30)
    raise ServerFailed(
        f"dockerd did not answer within {DOCKERD_START_TIMEOUT:.0f}s:\n"
        f"{_log_tail(log_path)}"
    )


# --- in-process CLI ----------------------------------------------------------


@dataclass
class CliResult:
    """What a command did: exit code, both streams, and any escaped exception."""

    exit_code: int
    stdout: str
    stderr: str
    stdout_bytes: bytes = field(repr=False)
    exception: BaseException | None = None
    traceback: str = ""

    def __str__(self) -> str:
        # Used as the assertion message, so a failure shows everything at once.
        return (
            f"exit code {self.exit_code}\n--- stdout\n{self.stdout}"
            f"--- stderr\n{self.stderr}{self.traceback}"
        )


def run_click(
    command: click.Command,
    args: Sequence[str],
    input: str | bytes | None = None,
    env: Mapping[str, str | None] | None = None,
) -> CliResult:
    """Invoke a click command in-process; exceptions become exit code 1."""
    result = click.testing.CliRunner().invoke(command, list(args), input=input, env=env)
    trace = ""
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        trace = "--- traceback\n" + "".join(
            traceback.format_exception(*result.exc_info)
        )
    return CliResult(
        exit_code=result.exit_code,
        stdout=result.stdout,
        stderr=result.stderr,
        stdout_bytes=result.stdout_bytes,
        exception=result.exception,
        traceback=trace,
    )


CliFunction = Callable[..., CliResult]
RegistryFactory = Callable[..., Registry]
