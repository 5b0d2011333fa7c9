"""The command line itself: options in either place, help, results on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import imagebuild as ib
import pytest
from servers import Registry

COMMANDS = ["pack", "unpack", "verify", "list", "sync", "inventory", "cache"]


@pytest.fixture
def bundle(tmp_path: Path, registry: Registry, cli) -> Path:
    img = ib.image([ib.layer(ib.random_files(7, 2, 2048))], cmd=["/x"])
    ib.push_image(registry, "team/app", "1", img)
    listing = tmp_path / "images.yaml"
    listing.write_text(
        f"registry-image: false\nimages:\n  - {registry.host}/team/app:1\n"
    )
    out = tmp_path / "b.tar.zst"
    assert cli("pack", str(listing), "-o", str(out)).exit_code == 0
    return out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(cli, command: str) -> None:
    result = cli(command, "--help")

    assert result.exit_code == 0, result
    assert "Usage:" in result.stdout


def test_output_options_work_before_and_after_the_command(cli, bundle: Path) -> None:
    before = cli("--json", "list", str(bundle))
    after = cli("list", str(bundle), "--json")

    assert before.exit_code == after.exit_code == 0
    assert json.loads(before.stdout) == json.loads(after.stdout)


def test_settings_do_not_leak_from_one_run_to_the_next(cli, bundle: Path) -> None:
    assert cli("--json", "list", str(bundle)).exit_code == 0

    plain = cli("list", str(bundle))

    assert plain.exit_code == 0
    assert plain.stdout.startswith("SOURCE")


def test_pack_to_stdout_writes_only_the_bundle_there(
    tmp_path: Path, registry: Registry, cli, bundle: Path
) -> None:
    listing = tmp_path / "images.yaml"

    result = cli("pack", str(listing), "-o", "-", "--json")
    streamed = tmp_path / "streamed.tar.zst"
    streamed.write_bytes(result.stdout_bytes)

    assert result.exit_code == 0, result
    assert json.loads(result.stderr[result.stderr.index("{") :])["ok"] is True
    assert cli("verify", str(streamed)).exit_code == 0


def test_version_names_the_tool(cli) -> None:
    result = cli("--version")

    assert result.exit_code == 0
    assert result.stdout.startswith("airgap")
