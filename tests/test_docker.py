"""The Docker host: bootstrap the bundled registry, load into Docker, pack
images that exist only in the daemon. Against a real dockerd (host networking)
and a registry image built here from Debian's docker-registry binary."""

from __future__ import annotations

import json
import re
import socketserver
import subprocess
import threading
import uuid
from pathlib import Path

import imagebuild as ib
import pytest
import trustme
from servers import DockerDaemon, Registry, free_port, skopeo_digest

from airgap.daemon import Daemon
from airgap.errors import UsageError

pytestmark = pytest.mark.docker

BUSYBOX = Path("/bin/busybox")
REGISTRY_BIN = Path("/usr/bin/docker-registry")
REGISTRY_CONFIG = b"""version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
"""


def _libraries(binary: Path) -> dict[str, ib.File]:
    """The shared libraries a dynamically linked binary needs, at their paths."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    files = {}
    for path in re.findall(r"(/\S+\.so[^\s]*)", out):
        files[path.lstrip("/")] = ib.host_file(Path(path).resolve(), 0o755)
    return files


def busybox_layer() -> ib.Blob:
    return ib.layer(
        {
            "bin/busybox": ib.host_file(BUSYBOX, 0o755),
            "bin/sh": ib.symlink("busybox"),
            "bin/echo": ib.symlink("busybox"),
        }
    )


def registry_image() -> ib.Image:
    files = {
        "bin/registry": ib.host_file(REGISTRY_BIN, 0o755),
        "etc/docker/registry/config.yml": REGISTRY_CONFIG,
        **_libraries(REGISTRY_BIN),
    }
    return ib.image(
        [busybox_layer(), ib.layer(files)],
        entrypoint=["/bin/registry", "serve", "/etc/docker/registry/config.yml"],
    )


def hello_image(word: str, architecture: str = "amd64") -> ib.Image:
    return ib.image(
        [busybox_layer(), ib.layer({"etc/word": word.encode()})],
        cmd=["echo", word],
        architecture=architecture,
    )


@pytest.fixture
def docker_env(docker_daemon: DockerDaemon, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DOCKER_HOST", docker_daemon.host)
    names: list[str] = []
    yield names
    for name in names:
        docker_daemon.docker("rm", "-f", name, check=False)
        docker_daemon.docker("volume", "rm", "-f", f"{name}-data", check=False)


@pytest.fixture
def bundle(tmp_path: Path, registry: Registry, cli) -> Path:
    """Two images, a two-platform index and the registry image, packed."""
    ib.push_image(registry, "library/registry", "2", registry_image())
    ib.push_image(registry, "team/hello", "1", hello_image("hello"))
    ib.push_image(registry, "team/bye", "1", hello_image("bye"))
    multi = ib.index(
        [
            (hello_image("amd"), "linux/amd64"),
            (hello_image("arm", "arm64"), "linux/arm64"),
        ]
    )
    ib.push_index(registry, "team/multi", "1", multi)
    listing = tmp_path / "images.yaml"
    up = registry.host
    listing.write_text(
        f"registry-image: {up}/library/registry:2\n"
        f"images:\n  - {up}/team/hello:1\n  - {up}/team/bye:1\n  - {up}/team/multi:1\n"
    )
    out = tmp_path / "b.tar.zst"
    result = cli("pack", str(listing), "-o", str(out))
    assert result.exit_code == 0, result
    return out


def _start_args(port: int, name: str) -> list[str]:
    return [
        "--registry",
        f"127.0.0.1:{port}",
        "--start-registry",
        "--registry-network",
        "host",
        "--registry-name",
        name,
    ]


def _plain(port: int) -> Registry:
    reg = Registry.__new__(Registry)
    reg.host, reg.url = f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    reg.ca_path = reg.username = reg.password = None
    reg.cert_dir = None
    return reg


def _digests(registry: Registry) -> dict[str, str]:
    upstream = {}
    for ref in ("team/hello:1", "team/bye:1", "team/multi:1", "library/registry:2"):
        upstream[ref] = skopeo_digest(ref, registry)
    return upstream


def test_start_registry_from_nothing_runs_the_bundled_image_and_pushes(
    bundle: Path, registry: Registry, cli, docker_env, docker_daemon: DockerDaemon
) -> None:
    port, name = free_port(), f"reg-{uuid.uuid4().hex[:8]}"
    docker_env.append(name)

    result = cli("unpack", str(bundle), *_start_args(port, name))

    assert result.exit_code == 0, result
    target = _plain(port)
    for ref, digest in _digests(registry).items():
        assert skopeo_digest(ref, target) == digest, ref
    info = json.loads(docker_daemon.docker("inspect", name).stdout)[0]
    assert info["State"]["Running"]
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert info["Mounts"][0]["Destination"] == "/var/lib/registry"


def test_start_registry_reuses_a_running_container_and_starts_a_stopped_one(
    bundle: Path, cli, docker_env, docker_daemon: DockerDaemon, registry: Registry
) -> None:
    port, name = free_port(), f"reg-{uuid.uuid4().hex[:8]}"
    docker_env.append(name)
    assert cli("unpack", str(bundle), *_start_args(port, name)).exit_code == 0
    state = "{{.Id}} {{.State.StartedAt}}"
    first = docker_daemon.docker("inspect", "-f", state, name).stdout

    again = cli("unpack", str(bundle), *_start_args(port, name))
    assert again.exit_code == 0, again
    assert docker_daemon.docker("inspect", "-f", state, name).stdout == first
    docker_daemon.docker("stop", name)
    restarted = cli("unpack", str(bundle), *_start_args(port, name))

    assert restarted.exit_code == 0, restarted
    assert "starting the stopped registry container" in restarted.stderr
    container_id = docker_daemon.docker("inspect", "-f", "{{.Id}}", name).stdout
    assert container_id.split() == first.split()[:1]
    assert skopeo_digest("team/hello:1", _plain(port)) == skopeo_digest(
        "team/hello:1", registry
    )


def test_start_registry_with_htpasswd_and_tls_needs_the_login(
    bundle: Path, tmp_path: Path, cli, docker_env
) -> None:
    port, name = free_port(), f"reg-{uuid.uuid4().hex[:8]}"
    docker_env.append(name)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "chain.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    htpasswd = subprocess.run(
        ["htpasswd", "-Bbn", "ops", "s3cret"], capture_output=True, check=True
    ).stdout
    (tmp_path / "htpasswd").write_bytes(htpasswd)
    args = [
        *_start_args(port, name),
        "--registry-htpasswd",
        str(tmp_path / "htpasswd"),
        "--registry-tls-cert",
        str(tmp_path / "chain.pem"),
        "--registry-tls-key",
        str(tmp_path / "key.pem"),
        "--ca-cert",
        str(tmp_path / "ca.pem"),
    ]

    anonymous = cli("unpack", str(bundle), *args)
    logged_in = cli(
        "unpack",
        str(bundle),
        *args,
        "--username",
        "ops",
        "--password-stdin",
        input="s3cret\n",
    )

    assert anonymous.exit_code == 4, anonymous
    assert logged_in.exit_code == 0, logged_in


def test_load_puts_only_the_bundle_platform_into_docker_with_checked_ids(
    bundle: Path, cli, docker_env, docker_daemon: DockerDaemon
) -> None:
    result = cli("unpack", str(bundle), "--load", "--json")

    assert result.exit_code == 0, result
    loaded = {
        item["name"]: item["imageId"] for item in json.loads(result.stdout)["loaded"]
    }
    assert set(loaded) == {
        "team/hello:1",
        "team/bye:1",
        "team/multi:1",
        "library/registry:2",
    }
    assert loaded["team/multi:1"] == hello_image("amd").config.digest
    for name, image_id in loaded.items():
        inspected = docker_daemon.docker("inspect", "-f", "{{.Id}}", name).stdout
        assert inspected.decode().strip() == image_id
    run = docker_daemon.docker("run", "--rm", "--network", "host", "team/bye:1")
    assert run.stdout.decode().strip() == "bye"


def test_a_corrupt_bundle_loads_nothing_into_docker(
    tmp_path: Path, registry: Registry, cli, docker_env, docker_daemon: DockerDaemon
) -> None:
    ib.push_image(registry, "team/fragile", "1", hello_image("fragile"))
    listing = tmp_path / "l.yaml"
    listing.write_text(
        f"registry-image: false\nimages:\n  - {registry.host}/team/fragile:1\n"
    )
    out = tmp_path / "b.tar"
    packed = cli("pack", str(listing), "-o", str(out), "--compression", "none")
    assert packed.exit_code == 0, packed
    layer = hello_image("fragile").layers[1].data
    raw = bytearray(out.read_bytes())
    at = raw.find(layer) + len(layer) // 2
    raw[at] ^= 0xFF
    out.write_bytes(bytes(raw))

    result = cli("unpack", str(out), "--load")

    assert result.exit_code == 5, result
    missing = docker_daemon.docker("image", "inspect", "team/fragile:1", check=False)
    assert missing.returncode != 0


def test_decompressed_bundle_is_accepted_by_docker_load(
    bundle: Path, docker_env, docker_daemon: DockerDaemon
) -> None:
    tar = subprocess.run(["zstd", "-dc", str(bundle)], capture_output=True, check=True)

    docker_daemon.docker("load", input=tar.stdout)

    run = docker_daemon.docker("run", "--rm", "--network", "host", "team/hello:1")
    assert run.stdout.decode().strip() == "hello"


def test_daemon_only_image_is_packed_unpacked_and_pulled_back(
    tmp_path: Path, registry_factory, cli, docker_env, docker_daemon: DockerDaemon
) -> None:
    local = hello_image("built-here")
    docker_daemon.docker("load", input=ib.docker_archive(local, ["acme/local:dev"]))
    listing = tmp_path / "images.yaml"
    listing.write_text(
        "registry-image: false\nimages:\n  - name: acme/local:dev\n    source: docker\n"
    )
    out = tmp_path / "b.tar.zst"
    target = registry_factory()

    packed = cli("pack", str(listing), "-o", str(out), "--json")
    unpacked = cli("unpack", str(out), "--registry", target.host)

    assert packed.exit_code == 0, packed
    assert unpacked.exit_code == 0, unpacked
    record = json.loads(packed.stdout)["images"][0]
    assert record["origin"] == "docker"
    assert skopeo_digest("acme/local:dev", target) == record["digest"]
    docker_daemon.docker("rmi", "acme/local:dev")
    docker_daemon.docker("pull", f"{target.host}/acme/local:dev")
    run = docker_daemon.docker(
        "run", "--rm", "--network", "host", f"{target.host}/acme/local:dev"
    )
    assert run.stdout.decode().strip() == "built-here"
    pulled_id = (
        docker_daemon.docker(
            "inspect", "-f", "{{.Id}}", f"{target.host}/acme/local:dev"
        )
        .stdout.decode()
        .strip()
    )
    assert pulled_id == local.config.digest


def test_no_daemon_reachable_exits_3_with_a_hint(
    bundle: Path, cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")

    result = cli("unpack", str(bundle), "--load")

    assert result.exit_code == 3, result
    assert "DOCKER_HOST" in result.stderr


def test_start_registry_never_retags_a_hosts_own_registry_image(
    bundle: Path, registry: Registry, cli, docker_env, docker_daemon: DockerDaemon
) -> None:
    own = hello_image("the host's own registry")
    docker_daemon.docker("load", input=ib.docker_archive(own, ["library/registry:2"]))
    port, name = free_port(), f"reg-{uuid.uuid4().hex[:8]}"
    docker_env.append(name)

    result = cli("unpack", str(bundle), *_start_args(port, name))

    assert result.exit_code == 0, result
    kept = docker_daemon.docker("inspect", "-f", "{{.Id}}", "library/registry:2")
    assert kept.stdout.decode().strip() == own.config.digest
    running = docker_daemon.docker("inspect", "-f", "{{.Config.Image}}", name)
    assert running.stdout.decode().strip().startswith("airgap-registry:")
    assert skopeo_digest("team/bye:1", _plain(port)) == skopeo_digest(
        "team/bye:1", registry
    )
    docker_daemon.docker("rmi", "library/registry:2")


# -- break-it review of --start-registry (issue 3) ------------------------------


def _new_name(docker_env: list[str]) -> str:
    name = f"reg-{uuid.uuid4().hex[:8]}"
    docker_env.append(name)
    return name


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("airgap: error:")]


def _exists(docker_daemon: DockerDaemon, name: str) -> bool:
    return docker_daemon.docker("inspect", name, check=False).returncode == 0


def _tls_args(tmp_path: Path) -> list[str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "chain.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return [
        "--registry-tls-cert",
        str(tmp_path / "chain.pem"),
        "--registry-tls-key",
        str(tmp_path / "key.pem"),
        "--ca-cert",
        str(tmp_path / "ca.pem"),
    ]


@pytest.mark.parametrize("name", ["bad name/..", "-registry", "r"])
def test_start_registry_refuses_a_name_outside_dockers_container_grammar(
    bundle: Path, cli, docker_env, name: str
) -> None:
    result = cli("unpack", str(bundle), *_start_args(free_port(), name))

    assert result.exit_code == 2, result
    (error,) = _error_lines(result.stderr)
    assert f"--registry-name {name!r}" in error
    assert "hint: a container name is" in result.stderr


def test_daemon_container_lookup_is_by_exact_name_and_fails_in_one_line(
    docker_env, docker_daemon: DockerDaemon
) -> None:
    archive = ib.docker_archive(hello_image("idle"), ["acme/idle:1"])
    docker_daemon.docker("load", input=archive)
    name = _new_name(docker_env)
    created = docker_daemon.docker("create", "--name", name, "acme/idle:1")
    container_id = created.stdout.decode().strip()
    daemon = Daemon.connect()

    with pytest.raises(UsageError) as caught:
        daemon.container("bad name/..")

    assert "\n" not in caught.value.message
    assert daemon.container(name).id == container_id
    assert daemon.container(container_id[:12]) is None


def test_start_registry_refuses_at_once_a_container_on_another_port(
    bundle: Path, cli, docker_env, docker_daemon: DockerDaemon
) -> None:
    port, name = free_port(), _new_name(docker_env)
    assert cli("unpack", str(bundle), *_start_args(port, name)).exit_code == 0
    before = docker_daemon.docker("inspect", "-f", "{{.Id}}", name).stdout

    result = cli("unpack", str(bundle), *_start_args(free_port(), name))

    assert result.exit_code == 2, result
    (error,) = _error_lines(result.stderr)
    assert f"container {name}" in error
    assert f"it serves 127.0.0.1:{port}" in error
    assert f"docker rm -f {name}" in result.stderr
    assert "--registry-name" in result.stderr
    assert docker_daemon.docker("inspect", "-f", "{{.Id}}", name).stdout == before


def test_start_registry_refuses_at_once_a_plain_container_when_tls_is_asked(
    bundle: Path, tmp_path: Path, cli, docker_env, docker_daemon: DockerDaemon
) -> None:
    port, name = free_port(), _new_name(docker_env)
    assert cli("unpack", str(bundle), *_start_args(port, name)).exit_code == 0
    other = free_port()

    result = cli("unpack", str(bundle), *_start_args(other, name), *_tls_args(tmp_path))

    assert result.exit_code == 2, result
    (error,) = _error_lines(result.stderr)
    assert f"127.0.0.1:{port}" in error
    assert "plain HTTP, not TLS" in error
    assert _exists(docker_daemon, name)


def test_a_registry_container_that_dies_is_reported_in_one_short_line(
    bundle: Path, cli, docker_env, docker_daemon: DockerDaemon
) -> None:
    archive = ib.docker_archive(hello_image("noisy"), ["acme/noisy:1"])
    docker_daemon.docker("load", input=archive)
    port, name = free_port(), _new_name(docker_env)
    script = 'for i in 1 2 3 4 5 6 7 8; do echo "line$i $(printf %0900d 0)"; done'
    docker_daemon.docker(
        *("create", "--name", name, "--network", "host", "--restart", "always"),
        *("-e", f"REGISTRY_HTTP_ADDR=127.0.0.1:{port}", "--entrypoint", "/bin/sh"),
        *("acme/noisy:1", "-c", f"{script}; exit 1"),
    )

    result = cli("unpack", str(bundle), *_start_args(port, name))

    assert result.exit_code == 3, result
    (error,) = _error_lines(result.stderr)
    tail = error.split(f"answer at 127.0.0.1:{port}: ")[1].split(" | ")
    assert [line.split()[0] for line in tail] == ["line6", "line7", "line8"]
    assert all(len(line) <= 200 for line in tail)


def test_start_registry_on_an_unknown_network_names_it_and_leaves_nothing(
    bundle: Path, cli, docker_env, docker_daemon: DockerDaemon
) -> None:
    name = _new_name(docker_env)
    args = [
        *("--registry", f"127.0.0.1:{free_port()}", "--start-registry"),
        *("--registry-network", "nosuchnet", "--registry-name", name),
    ]

    first = cli("unpack", str(bundle), *args)
    again = cli("unpack", str(bundle), *args)

    for result in (first, again):
        assert result.exit_code == 2, result
        (error,) = _error_lines(result.stderr)
        assert "no network nosuchnet" in error
        assert "docker network create nosuchnet" in result.stderr
    assert not _exists(docker_daemon, name)


@pytest.mark.parametrize("under", ["", "sub"])
def test_start_registry_refuses_a_data_path_that_is_or_lies_under_a_file(
    bundle: Path, tmp_path: Path, cli, docker_env, docker_daemon: DockerDaemon, under
) -> None:
    name = _new_name(docker_env)
    (tmp_path / "data").write_text("not a directory")
    data = tmp_path / "data" / under

    result = cli(
        "unpack",
        str(bundle),
        *_start_args(free_port(), name),
        "--registry-data",
        str(data),
    )

    assert result.exit_code == 2, result
    (error,) = _error_lines(result.stderr)
    assert f"{tmp_path / 'data'} is not a directory" in error
    assert "--registry-data" in result.stderr.split("hint:")[-1]
    assert not _exists(docker_daemon, name)


class _PortHolder(socketserver.TCPServer):
    """Another process on the port: it listens and hangs up on every client."""

    allow_reuse_address = True  # the stopped registry's port is in TIME_WAIT


def test_a_stopped_registry_whose_port_is_now_taken_fails_in_one_line_with_exit_3(
    bundle: Path, cli, docker_env, docker_daemon: DockerDaemon
) -> None:
    port, name = free_port(), _new_name(docker_env)
    assert cli("unpack", str(bundle), *_start_args(port, name)).exit_code == 0
    docker_daemon.docker("stop", name)

    holder = _PortHolder(("127.0.0.1", port), socketserver.BaseRequestHandler)
    threading.Thread(target=holder.serve_forever, daemon=True).start()
    try:
        result = cli("unpack", str(bundle), *_start_args(port, name))
    finally:
        holder.shutdown()
        holder.server_close()

    assert result.exit_code == 3, result
    (error,) = _error_lines(result.stderr)
    assert "address already in use" in error
    tail = error.split(f"answer at 127.0.0.1:{port}: ")[1].split(" | ")
    assert all(len(line) <= 200 for line in tail)
    assert f"hint: see 'docker logs {name}'" in result.stderr
