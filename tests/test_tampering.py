"""Bundles edited after pack: unpack must refuse what verify refuses, before it
pushes anything that the edit touched."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import imagebuild as ib
import pytest
import requests
from servers import Registry, skopeo_digest

Edit = Callable[[dict[str, bytes]], None]


@pytest.fixture
def plain_bundle(tmp_path: Path, registry_factory, cli) -> tuple[Path, Registry]:
    """Two unrelated images in an uncompressed bundle, easy to rewrite."""
    upstream = registry_factory()
    for n, repo in enumerate(("team/one", "team/two")):
        img = ib.image([ib.layer(ib.random_files(40 + n, 2, 4096))], cmd=["/x"])
        ib.push_image(upstream, repo, "1", img)
    listing = tmp_path / "images.yaml"
    up = upstream.host
    listing.write_text(
        f"registry-image: false\nimages:\n  - {up}/team/one:1\n  - {up}/team/two:1\n"
    )
    out = tmp_path / "b.tar"
    packed = cli("pack", str(listing), "-o", str(out), "--compression", "none")
    assert packed.exit_code == 0, packed
    return out, upstream


def rewrite(bundle: Path, edit: Edit) -> Path:
    """The bundle's members, edited, written back in their order."""
    with tarfile.open(bundle) as tar:
        members = {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }
    edit(members)
    out = bundle.with_name("edited.tar")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def edit_index(change: Callable[[dict], None]) -> Edit:
    def edit(members: dict[str, bytes]) -> None:
        index = json.loads(members["airgap.json"])
        change(index)
        members["airgap.json"] = json.dumps(index).encode()

    return edit


def tags(registry: Registry, repo: str) -> list[str]:
    response = requests.get(f"{registry.url}/v2/{repo}/tags/list", verify=False)
    return (response.json().get("tags") or []) if response.ok else []


def catalog(registry: Registry) -> list[str]:
    response = requests.get(f"{registry.url}/v2/_catalog", verify=False)
    return response.json().get("repositories") or []


def test_an_edited_image_digest_is_refused_by_unpack_as_by_verify(
    plain_bundle, registry: Registry, cli
) -> None:
    bundle, upstream = plain_bundle

    def change(index: dict) -> None:
        index["images"][0]["digest"] = "sha256:" + "0" * 64

    edited = rewrite(bundle, edit_index(change))

    assert cli("verify", str(edited)).exit_code == 5
    result = cli("unpack", str(edited), "--registry", registry.host)
    assert result.exit_code == 5, result
    assert "team/one" in result.stderr
    assert tags(registry, "team/one") == []
    assert skopeo_digest("team/two:1", registry) == skopeo_digest(
        "team/two:1", upstream
    )


@pytest.mark.parametrize("target", ["../../etc", "UPPER/x:1", "x@sha256:" + "a" * 64])
def test_an_invalid_target_in_the_bundle_is_integrity_damage(
    plain_bundle, registry: Registry, cli, target: str
) -> None:
    bundle, _ = plain_bundle

    def change(index: dict) -> None:
        index["images"][0]["target"] = target

    edited = rewrite(bundle, edit_index(change))

    for command in (["verify"], ["list"], ["unpack", "--registry", registry.host]):
        result = cli(command[0], str(edited), *command[1:])
        assert result.exit_code == 5, result
        assert "invalid target" in result.stderr
    assert catalog(registry) == []


@pytest.mark.parametrize("prefix", ["UPPER", "..", "/", "a//b", "team/../x"])
def test_an_invalid_prefix_is_a_usage_error_before_anything_is_pushed(
    plain_bundle, registry: Registry, cli, prefix: str
) -> None:
    bundle, _ = plain_bundle

    unpacked = cli(
        "unpack", str(bundle), "--registry", registry.host, "--prefix", prefix
    )
    listed = cli("list", str(bundle), "--prefix", prefix)

    assert unpacked.exit_code == 2, unpacked
    assert listed.exit_code == 2, listed
    assert "--prefix" in unpacked.stderr
    assert catalog(registry) == []


def test_a_removed_blob_record_breaks_only_the_image_that_needs_it(
    plain_bundle, registry: Registry, cli
) -> None:
    bundle, upstream = plain_bundle
    with tarfile.open(bundle) as tar:
        member = tar.extractfile("airgap.json")
        assert member is not None
        index = json.loads(member.read())
    layer = index["images"][0]["blobs"][-1]

    def change(data: dict) -> None:
        data["blobs"] = [b for b in data["blobs"] if b["digest"] != layer]

    edited = rewrite(bundle, edit_index(change))
    verified = cli("verify", str(edited))
    unpacked = cli("unpack", str(edited), "--registry", registry.host)

    assert verified.exit_code == 5
    assert "not among the bundle's blobs" in verified.stderr
    assert "not in airgap.json" in verified.stderr
    assert unpacked.exit_code == 5, unpacked
    assert tags(registry, "team/one") == []
    assert skopeo_digest("team/two:1", registry) == skopeo_digest(
        "team/two:1", upstream
    )


def test_a_bundle_cut_inside_its_index_is_reported_not_a_traceback(
    plain_bundle, cli
) -> None:
    bundle, _ = plain_bundle
    cut = bundle.with_name("cut.tar")
    cut.write_bytes(bundle.read_bytes()[:1500])

    for command in ("verify", "list"):
        result = cli(command, str(cut))
        assert result.exit_code == 5, result
        assert result.stderr.startswith("airgap: error:")
        assert "Traceback" not in result.stderr


def test_a_bundle_without_manifest_json_fails_verify(plain_bundle, cli) -> None:
    bundle, _ = plain_bundle

    edited = rewrite(bundle, lambda members: members.pop("manifest.json"))

    result = cli("verify", str(edited))
    assert result.exit_code == 5, result
    assert "manifest.json" in result.stderr


def test_a_binary_image_list_is_a_usage_error(tmp_path: Path, cli) -> None:
    listing = tmp_path / "images.txt"
    listing.write_bytes(os.urandom(256) + b"\xff\xfe")

    result = cli("pack", str(listing), "-o", str(tmp_path / "b.tar.zst"))

    assert result.exit_code == 2, result
    assert "not UTF-8" in result.stderr
