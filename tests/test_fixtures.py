"""The fixtures themselves: if these fail, no other result can be trusted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import imagebuild as ib
import pytest
import requests
from servers import (
    CliFunction,
    DockerDaemon,
    Home,
    Registry,
    RegistryFactory,
    run_click,
    skopeo_digest,
    write_docker_config,
)

BUSYBOX = Path("/bin/busybox")


def small_image(seed: int = 1, **options: Any) -> ib.Image:
    files = {"etc/hello.txt": b"hello\n", **ib.random_files(seed, 3, 1024)}
    return ib.image([ib.layer(files)], **options)


def test_pushed_image_reads_back_through_skopeo_with_same_digest(
    registry: Registry,
) -> None:
    img = small_image()

    digest = ib.push_image(registry, "test/small", "v1", img)

    assert digest == img.digest
    assert skopeo_digest("test/small:v1", registry) == img.digest
    assert registry.tags("test/small") == ["v1"]
    assert registry.get_blob("test/small", img.layers[0].digest) == img.layers[0].data


def test_oci_zstd_image_pushes_and_keeps_its_digest(registry: Registry) -> None:
    blob = ib.layer({"a": b"zstd"}, compression="zstd", media_type_style="oci")
    img = ib.image([blob], oci=True, cmd=["/a"])

    ib.push_image(registry, "test/oci", "zstd", img)

    assert skopeo_digest("test/oci:zstd", registry) == img.digest
    assert json.loads(img.manifest)["mediaType"] == ib.OCI_MANIFEST


def test_secure_registry_refuses_anonymous_pulls(secure_registry: Registry) -> None:
    response = requests.get(
        f"{secure_registry.url}/v2/", verify=str(secure_registry.ca_path), timeout=5
    )

    assert response.status_code == 401


def test_secure_registry_rejects_a_client_without_its_ca(
    secure_registry: Registry,
) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{secure_registry.url}/v2/", verify=True, timeout=5)


def test_secure_registry_accepts_credentials_over_tls(
    secure_registry: Registry,
) -> None:
    img = small_image()

    ib.push_image(secure_registry, "test/secure", "v1", img)

    assert secure_registry.url.startswith("https://127.0.0.1:")
    assert secure_registry.request("GET", "/v2/").status_code == 200
    assert skopeo_digest("test/secure:v1", secure_registry) == img.digest


def test_docker_config_carries_the_secure_registry_credentials(
    secure_registry: Registry, isolated_home: Home
) -> None:
    ib.push_image(secure_registry, "test/login", "v1", small_image())
    authfile = write_docker_config(isolated_home.docker_config, secure_registry)
    args = ["skopeo", "inspect", "--raw", f"--cert-dir={secure_registry.cert_dir}"]
    url = f"docker://{secure_registry.host}/test/login:v1"

    with_file = subprocess.run([*args, f"--authfile={authfile}", url], check=False)
    without = subprocess.run([*args, "--no-creds", url], capture_output=True)

    assert with_file.returncode == 0
    assert without.returncode != 0 and b"unauthorized" in without.stderr.lower()


@pytest.mark.parametrize("oci", [True, False], ids=["oci-index", "docker-list"])
def test_two_platform_index_pushes_whole(registry: Registry, oci: bool) -> None:
    blob = ib.layer({"x": b"x"}, media_type_style="oci" if oci else "docker")
    amd64 = ib.image([blob], oci=oci)
    arm64 = ib.image([blob], oci=oci, architecture="arm64", variant="v8")
    idx = ib.index([amd64, arm64], oci=oci)

    ib.push_index(registry, "test/multi", "latest", idx)

    assert skopeo_digest("test/multi:latest", registry) == idx.digest
    platforms = [m["platform"] for m in json.loads(idx.data)["manifests"]]
    assert platforms[1] == {"os": "linux", "architecture": "arm64", "variant": "v8"}
    assert skopeo_digest(f"test/multi@{arm64.digest}", registry) == arm64.digest


def test_config_extra_reaches_the_registry(
    registry: Registry, registry_factory: RegistryFactory
) -> None:
    urls_allowed = {"validation": {"manifests": {"urls": {"allow": ["^https?://"]}}}}
    permissive = registry_factory(config_extra=urls_allowed)
    base = ib.layer({"base": b"b"})
    foreign = ib.foreign_layer(ib.layer({"f": b"f"}), ["https://example.invalid/f"])
    img = ib.image([foreign, base])

    ib.push_image(permissive, "test/foreign", "v1", img)

    assert skopeo_digest("test/foreign:v1", permissive) == img.digest
    with pytest.raises(RuntimeError, match="expected 201"):
        ib.push_image(registry, "test/foreign", "v1", img)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layers_are_deterministic(compression: ib.Compression) -> None:
    def build() -> ib.Blob:
        files = ib.random_files(7, 5, 4096)
        return ib.layer(files, compression, "oci")

    first, second = build(), build()

    assert first.digest == second.digest
    assert first.diff_id == second.diff_id
    assert ib.image([first]).digest == ib.image([second]).digest


def test_files_from_dir_keeps_modes_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    (tmp_path / "bin" / "tool").chmod(0o755)
    (tmp_path / "bin" / "alias").symlink_to("tool")

    files = ib.files_from_dir(tmp_path)

    assert files["bin/tool"].mode == 0o755
    assert files["bin/alias"] == ib.symlink("tool")
    assert files["bin"].kind == "dir"


def test_push_dir_command_pushes_a_directory(
    registry: Registry, tmp_path: Path
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "motd").write_text("hi\n")
    script = Path(ib.__file__)
    args = ["push-dir", "--registry", registry.host, "--repo", "demo/dir"]
    args += [
        "--dir",
        str(tmp_path),
        "--cmd",
        "cat /etc/motd",
        "--symlink",
        "m=etc/motd",
    ]

    result = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, check=True
    )

    digest = result.stdout.decode().strip()
    assert skopeo_digest("demo/dir:latest", registry) == digest


def test_run_click_separates_streams_and_keeps_exit_code() -> None:
    @click.command()
    def fails() -> None:
        click.echo("result")
        click.echo("airgap: error: boom", err=True)
        raise SystemExit(3)

    result = run_click(fails, [])

    assert (result.exit_code, result.stdout, result.stderr) == (
        3,
        "result\n",
        "airgap: error: boom\n",
    )


def test_run_click_keeps_an_escaped_exception() -> None:
    @click.command()
    def crashes() -> None:
        raise ValueError("bug")

    result = run_click(crashes, [])

    assert result.exit_code == 1
    assert isinstance(result.exception, ValueError)
    assert "ValueError: bug" in str(result)


def test_cli_fixture_runs_airgap_in_process(cli: CliFunction) -> None:
    pytest.importorskip("airgap.cli", reason="airgap.cli is not written yet")

    result = cli("--help")

    assert result.exit_code == 0, result


def test_home_is_isolated(isolated_home: Home) -> None:
    assert os.environ["HOME"] == str(isolated_home.home)
    assert os.environ["DOCKER_CONFIG"] == str(isolated_home.docker_config)
    assert "DOCKER_HOST" not in os.environ


@pytest.mark.docker
def test_docker_daemon_loads_and_runs_a_busybox_image(
    docker_daemon: DockerDaemon,
) -> None:
    assert BUSYBOX.is_file(), (
        f"{BUSYBOX} is missing: apt-get install -y busybox-static (scripts/test.sh)"
    )
    files = {
        "bin/busybox": ib.host_file(BUSYBOX, 0o755),
        "bin/sh": ib.symlink("busybox"),
        "bin/echo": ib.symlink("busybox"),
    }
    img = ib.image([ib.layer(files)], cmd=["sh"])
    tag = "airgap-test/busybox:fixture"

    docker_daemon.client.images.load(ib.docker_archive(img, [tag]))
    run = docker_daemon.docker("run", "--rm", "--network", "host", tag, "echo", "hi")

    assert run.stdout == b"hi\n"
    loaded = docker_daemon.client.images.get(tag)
    assert loaded.id == img.config.digest
