"""Credentials from the Docker config, through docker-py's docker.auth: `auths`,
`credsStore` and `credHelpers` with a real helper program, as `docker login`
leaves them."""

from __future__ import annotations

import base64
import json
import os
import stat
import warnings
from pathlib import Path

import imagebuild as ib
import pytest
from servers import CliFunction, Home, Registry

from airgap.credentials import Credentials, CredentialSource
from airgap.errors import AuthFailed, ExitCode

HUB_KEY = "https://index.docker.io/v1/"

# A docker-credential-NAME program speaking the helper protocol: `get` reads
# the server URL on stdin and prints {"Username", "Secret"}, or says "not found".
HELPER = """#!/bin/sh
[ "$1" = get ] || exit 1
read -r server
printf '%s\\n' "$server" >> "{log}"
case "$server" in
{cases}
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def write_config(home: Home, config: dict[str, object]) -> None:
    home.docker_config.mkdir(parents=True, exist_ok=True)
    (home.docker_config / "config.json").write_text(json.dumps(config))


def auth_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def install_helper(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    answers: dict[str, dict[str, str]],
) -> Path:
    """Put docker-credential-`name` on PATH; returns the log of servers asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.log"
    cases = "\n".join(
        f"  '{server}') echo '{json.dumps(answer)}' ;;"
        for server, answer in answers.items()
    )
    program = bin_dir / f"docker-credential-{name}"
    program.write_text(HELPER.replace("{log}", str(log)).replace("{cases}", cases))
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def asked(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_auths_entry_with_base64_auth_gives_username_and_password(
    isolated_home: Home,
) -> None:
    write_config(
        isolated_home, {"auths": {"reg.example:5000": auth_entry("bob", "p:w")}}
    )

    creds = CredentialSource().lookup("reg.example:5000")

    assert creds == Credentials(username="bob", password="p:w")
    assert creds is not None and creds.password == "p:w"


def test_registry_without_an_entry_has_no_credentials(isolated_home: Home) -> None:
    write_config(isolated_home, {"auths": {"other.example": auth_entry("bob", "x")}})

    assert CredentialSource().lookup("reg.example") is None


def test_no_docker_config_at_all_means_anonymous(isolated_home: Home) -> None:
    assert not (isolated_home.docker_config / "config.json").exists()

    assert CredentialSource().lookup("reg.example") is None


def test_docker_hub_entry_is_found_under_its_v1_url_key(isolated_home: Home) -> None:
    write_config(isolated_home, {"auths": {HUB_KEY: auth_entry("hubuser", "hubpw")}})

    creds = CredentialSource().lookup("docker.io")

    assert creds == Credentials(username="hubuser", password="hubpw")


def test_explicit_credentials_win_over_the_config(isolated_home: Home) -> None:
    write_config(isolated_home, {"auths": {"reg.example": auth_entry("bob", "x")}})
    explicit = Credentials(username="carol", password="y")

    assert CredentialSource(explicit).lookup("reg.example") is explicit


def test_credential_helper_answer_is_normalised_to_username_and_password(
    isolated_home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = install_helper(
        tmp_path,
        monkeypatch,
        "fake",
        {"reg.example": {"ServerURL": "reg.example", "Username": "u", "Secret": "s"}},
    )
    write_config(isolated_home, {"credHelpers": {"reg.example": "fake"}})

    creds = CredentialSource().lookup("reg.example")

    assert creds == Credentials(username="u", password="s")
    assert asked(log) == ["reg.example"]


def test_creds_store_is_asked_for_docker_hub_by_its_v1_url(
    isolated_home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = install_helper(
        tmp_path, monkeypatch, "store", {HUB_KEY: {"Username": "hub", "Secret": "pw"}}
    )
    write_config(isolated_home, {"credsStore": "store"})

    creds = CredentialSource().lookup("docker.io")

    assert creds == Credentials(username="hub", password="pw")
    assert asked(log) == [HUB_KEY]


def test_helper_token_username_means_an_identity_token(
    isolated_home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_helper(
        tmp_path,
        monkeypatch,
        "fake",
        {"reg.example": {"Username": "<token>", "Secret": "refresh-me"}},
    )
    write_config(isolated_home, {"credsStore": "fake"})

    creds = CredentialSource().lookup("reg.example")

    assert creds == Credentials(identity_token="refresh-me")
    assert creds  # an identity token alone counts as credentials


def test_helper_without_the_entry_falls_back_to_auths(
    isolated_home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = install_helper(tmp_path, monkeypatch, "fake", {})
    write_config(
        isolated_home,
        {"credsStore": "fake", "auths": {"reg.example": auth_entry("bob", "x")}},
    )

    creds = CredentialSource().lookup("reg.example")

    assert creds == Credentials(username="bob", password="x")
    assert asked(log) == ["reg.example"]


def test_cred_helpers_entry_wins_over_the_creds_store(
    isolated_home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = {"reg.example": {"Username": "u", "Secret": "s"}}
    store_log = install_helper(tmp_path, monkeypatch, "store", answer)
    helper_log = install_helper(tmp_path, monkeypatch, "special", answer)
    write_config(
        isolated_home,
        {"credsStore": "store", "credHelpers": {"reg.example": "special"}},
    )

    CredentialSource().lookup("reg.example")

    assert asked(helper_log) == ["reg.example"]
    assert asked(store_log) == []


def test_missing_helper_program_is_an_auth_error_naming_it_without_a_warning(
    isolated_home: Home,
) -> None:
    write_config(isolated_home, {"credsStore": "absent-helper"})

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(AuthFailed) as failure:
            CredentialSource().lookup("reg.example")

    assert failure.value.exit_code == ExitCode.AUTH
    assert "docker-credential-absent-helper" in failure.value.message
    assert "\n" not in failure.value.message
    assert caught == []


def test_docker_config_variable_picks_the_directory(
    isolated_home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text(
        json.dumps({"auths": {"reg.example": auth_entry("env", "pw")}})
    )
    write_config(isolated_home, {"auths": {"reg.example": auth_entry("home", "x")}})
    monkeypatch.setenv("DOCKER_CONFIG", str(elsewhere))

    creds = CredentialSource().lookup("reg.example")

    assert creds == Credentials(username="env", password="pw")


def test_docker_config_without_a_file_does_not_fall_back_to_home(
    isolated_home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home_config = isolated_home.home / ".docker"
    home_config.mkdir(parents=True, exist_ok=True)
    (home_config / "config.json").write_text(
        json.dumps({"auths": {"reg.example": auth_entry("home", "x")}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty"))

    assert CredentialSource().lookup("reg.example") is None


def test_unparsable_config_is_ignored_with_a_warning(
    isolated_home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    isolated_home.docker_config.mkdir(parents=True, exist_ok=True)
    (isolated_home.docker_config / "config.json").write_text("{not json")

    with caplog.at_level("WARNING", logger="airgap"):
        creds = CredentialSource().lookup("reg.example")

    assert creds is None
    assert "config.json" in caplog.text


def test_auth_that_is_not_base64_of_user_and_password_is_an_auth_error(
    isolated_home: Home,
) -> None:
    write_config(isolated_home, {"auths": {"reg.example": {"auth": "bm9jb2xvbg=="}}})

    with pytest.raises(AuthFailed) as failure:
        CredentialSource().lookup("reg.example")

    assert "malformed auths entry" in failure.value.message
    assert "docker login" in (failure.value.hint or "")


def test_pack_uses_a_credential_helper_for_an_htpasswd_registry(
    secure_registry: Registry,
    isolated_home: Home,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: CliFunction,
) -> None:
    img = ib.image([ib.layer({"hello": b"helper"})])
    ib.push_image(secure_registry, "team/app", "1", img)
    answer = {
        "Username": secure_registry.username or "",
        "Secret": secure_registry.password or "",
    }
    log = install_helper(tmp_path, monkeypatch, "fake", {secure_registry.host: answer})
    write_config(isolated_home, {"credHelpers": {secure_registry.host: "fake"}})
    images = tmp_path / "images.yaml"
    images.write_text(
        f"registry-image: false\nimages:\n  - {secure_registry.host}/team/app:1\n"
    )

    packed = cli(
        "pack",
        str(images),
        "-o",
        str(tmp_path / "b.tar.zst"),
        "--ca-cert",
        str(secure_registry.ca_path),
    )

    assert packed.exit_code == 0, packed
    assert img.digest in packed.stdout
    assert asked(log) == [secure_registry.host]
