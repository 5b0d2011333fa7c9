"""Basic auth behind TLS: the secure registry fixture (bcrypt htpasswd, a
throwaway trustme CA), credentials from a Docker config.json or the command
line, and the errors a user sees when either side of that is wrong."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import imagebuild as ib
import pytest
from servers import (
    CliFunction,
    Home,
    Registry,
    RegistryFactory,
    skopeo_digest,
    write_docker_config,
)

REFS = ("team/app:1.0", "team/multi:latest")


@dataclass
class Source:
    registry: Registry
    digests: dict[str, str]  # repo:tag -> digest
    image_list: Path

    @property
    def ca(self) -> str:
        assert self.registry.ca_path is not None
        return str(self.registry.ca_path)


@pytest.fixture
def source(secure_registry: Registry, tmp_path: Path) -> Source:
    base = ib.layer(ib.random_files(30, 2, 16 * 1024))
    app = ib.image([base, ib.layer({"app": b"app\n"})])
    amd = ib.image([base, ib.layer({"arch": b"amd64\n"})], oci=True)
    arm = ib.image(
        [base, ib.layer({"arch": b"arm64\n"})], oci=True, architecture="arm64"
    )
    digests = {
        "team/app:1.0": ib.push_image(secure_registry, "team/app", "1.0", app),
        "team/multi:latest": ib.push_index(
            secure_registry, "team/multi", "latest", ib.index([amd, arm])
        ),
    }
    image_list = tmp_path / "images.yaml"
    image_list.write_text(
        "registry-image: false\nimages:\n"
        + "".join(f"  - {secure_registry.host}/{ref}\n" for ref in REFS)
    )
    return Source(secure_registry, digests, image_list)


def error_lines(stderr: str) -> tuple[str, str]:
    """The `airgap: error:` line and the `hint:` line after it."""
    lines = stderr.splitlines()
    at = max(i for i, line in enumerate(lines) if line.startswith("airgap: error:"))
    hint = lines[at + 1] if at + 1 < len(lines) else ""
    assert hint.startswith("hint: "), stderr
    return lines[at], hint


def assert_same_digests(source: Source, target: Registry) -> None:
    for ref, digest in source.digests.items():
        assert skopeo_digest(ref, source.registry) == digest, ref
        assert skopeo_digest(ref, target) == digest, ref


def unpack_into(cli: CliFunction, bundle: Path, target: Registry) -> None:
    result = cli("unpack", str(bundle), "--registry", target.host)
    assert result.exit_code == 0, result


# -- pack from the secure registry ----------------------------------------------


def test_pack_with_docker_config_credentials_and_ca_cert_keeps_digests(
    source: Source,
    isolated_home: Home,
    tmp_path: Path,
    registry: Registry,
    cli: CliFunction,
) -> None:
    write_docker_config(isolated_home.docker_config, source.registry)
    bundle = tmp_path / "b.tar.zst"

    packed = cli(
        "pack", str(source.image_list), "-o", str(bundle), "--ca-cert", source.ca
    )

    assert packed.exit_code == 0, packed
    unpack_into(cli, bundle, registry)
    assert_same_digests(source, registry)


def test_pack_with_username_and_password_stdin_keeps_digests(
    source: Source, tmp_path: Path, registry: Registry, cli: CliFunction
) -> None:
    bundle = tmp_path / "b.tar.zst"

    packed = cli(
        "pack",
        str(source.image_list),
        "-o",
        str(bundle),
        "--ca-cert",
        source.ca,
        "--username",
        "alice",
        "--password-stdin",
        input=f"{source.registry.password}\n",
    )

    assert packed.exit_code == 0, packed
    unpack_into(cli, bundle, registry)
    assert_same_digests(source, registry)


def test_password_never_reaches_the_output(
    source: Source, isolated_home: Home, tmp_path: Path, cli: CliFunction
) -> None:
    write_docker_config(isolated_home.docker_config, source.registry)
    bundle = tmp_path / "b.tar.zst"

    packed = cli(
        "pack",
        str(source.image_list),
        "-o",
        str(bundle),
        "--ca-cert",
        source.ca,
        "-vv",
        "--json",
    )

    assert packed.exit_code == 0, packed
    password = source.registry.password
    assert password and password not in packed.stdout + packed.stderr
    side = bundle.with_name("b.index.json").read_text()
    assert password not in side


def test_wrong_password_on_stdin_exits_4_with_a_hint(
    source: Source, tmp_path: Path, cli: CliFunction
) -> None:
    result = cli(
        "pack",
        str(source.image_list),
        "-o",
        str(tmp_path / "b.tar.zst"),
        "--ca-cert",
        source.ca,
        "--username",
        "alice",
        "--password-stdin",
        input="not-the-password\n",
    )

    assert result.exit_code == 4, result
    error, hint = error_lines(result.stderr)
    assert source.registry.host in error
    assert "credentials" in hint
    assert "not-the-password" not in result.stderr
    assert not (tmp_path / "b.tar.zst").exists()


def test_wrong_password_in_docker_config_exits_4_with_a_hint(
    source: Source, isolated_home: Home, tmp_path: Path, cli: CliFunction
) -> None:
    path = write_docker_config(isolated_home.docker_config, source.registry)
    config = json.loads(path.read_text())
    config["auths"][source.registry.host]["auth"] = base64.b64encode(b"alice:nope")
    path.write_text(json.dumps(config, default=bytes.decode))

    result = cli(
        "pack",
        str(source.image_list),
        "-o",
        str(tmp_path / "b.tar.zst"),
        "--ca-cert",
        source.ca,
    )

    assert result.exit_code == 4, result
    error, hint = error_lines(result.stderr)
    assert source.registry.host in error
    assert "credentials" in hint


def test_no_credentials_exits_4_with_a_login_hint(
    source: Source, tmp_path: Path, cli: CliFunction
) -> None:
    result = cli(
        "pack",
        str(source.image_list),
        "-o",
        str(tmp_path / "b.tar.zst"),
        "--ca-cert",
        source.ca,
    )

    assert result.exit_code == 4, result
    error, hint = error_lines(result.stderr)
    assert source.registry.host in error
    assert "--username" in hint or "docker login" in hint


def test_tls_without_the_ca_exits_3_with_a_hint_naming_ca_cert(
    source: Source, isolated_home: Home, tmp_path: Path, cli: CliFunction
) -> None:
    write_docker_config(isolated_home.docker_config, source.registry)

    result = cli("pack", str(source.image_list), "-o", str(tmp_path / "b.tar.zst"))

    assert result.exit_code == 3, result
    error, hint = error_lines(result.stderr)
    assert source.registry.host in error
    assert "--ca-cert" in hint


def test_password_stdin_without_username_is_a_usage_error(
    source: Source, tmp_path: Path, cli: CliFunction
) -> None:
    result = cli(
        "pack",
        str(source.image_list),
        "-o",
        str(tmp_path / "b.tar.zst"),
        "--password-stdin",
        input="x\n",
    )

    assert result.exit_code == 2, result
    assert "--username" in result.stderr


# -- unpack into the secure registry ---------------------------------------------


@pytest.fixture
def open_bundle(
    source: Source, isolated_home: Home, tmp_path: Path, cli: CliFunction
) -> Path:
    """A bundle of the source images, packed with credentials from config.json."""
    write_docker_config(isolated_home.docker_config, source.registry)
    bundle = tmp_path / "b.tar.zst"
    packed = cli(
        "pack", str(source.image_list), "-o", str(bundle), "--ca-cert", source.ca
    )
    assert packed.exit_code == 0, packed
    (isolated_home.docker_config / "config.json").unlink()
    return bundle


def test_unpack_into_the_secure_registry_with_docker_config_keeps_digests(
    source: Source,
    open_bundle: Path,
    isolated_home: Home,
    registry_factory: RegistryFactory,
    cli: CliFunction,
) -> None:
    target = registry_factory(tls=True, htpasswd=True)
    write_docker_config(isolated_home.docker_config, target)
    assert target.ca_path is not None

    result = cli(
        "unpack",
        str(open_bundle),
        "--registry",
        target.host,
        "--ca-cert",
        str(target.ca_path),
    )

    assert result.exit_code == 0, result
    assert_same_digests(source, target)
    assert target.tags("team/app") == ["1.0"]


def test_unpack_into_the_secure_registry_with_password_stdin_keeps_digests(
    source: Source,
    open_bundle: Path,
    registry_factory: RegistryFactory,
    cli: CliFunction,
) -> None:
    target = registry_factory(tls=True, htpasswd=True)
    assert target.ca_path is not None

    result = cli(
        "unpack",
        str(open_bundle),
        "--registry",
        target.host,
        "--ca-cert",
        str(target.ca_path),
        "--username",
        "alice",
        "--password-stdin",
        input=f"{target.password}\n",
    )

    assert result.exit_code == 0, result
    assert_same_digests(source, target)


def test_unpack_into_the_secure_registry_without_credentials_exits_4(
    open_bundle: Path, registry_factory: RegistryFactory, cli: CliFunction
) -> None:
    target = registry_factory(tls=True, htpasswd=True)
    assert target.ca_path is not None

    result = cli(
        "unpack",
        str(open_bundle),
        "--registry",
        target.host,
        "--ca-cert",
        str(target.ca_path),
    )

    assert result.exit_code == 4, result
    error_lines(result.stderr)
    assert target.catalog() == []
