"""pack --since: a differential bundle carries only the blobs OLD lacks, and
unpack pushes it only where the blobs it left out are already held."""

from __future__ import annotations

import json
from pathlib import Path

import imagebuild as ib
import pytest
from servers import Registry, skopeo_digest


class Upstream:
    """team/app:1.0 (a base layer and an app layer) and team/tool:2."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.base = ib.layer(ib.random_files(31, 2, 64 * 1024))
        self.tool = ib.image([ib.layer(ib.random_files(32, 2, 32 * 1024))])
        self.app = self.app_image(b"v1")
        self.digests = {
            "team/app:1.0": ib.push_image(registry, "team/app", "1.0", self.app),
            "team/tool:2": ib.push_image(registry, "team/tool", "2", self.tool),
        }

    def app_image(self, version: bytes) -> ib.Image:
        top = ib.layer({"app/version": version, **ib.random_files(33, 1, 16 * 1024)})
        return ib.image([self.base, top], cmd=["/app"])

    def change_app(self) -> ib.Image:
        """A new app layer (and so config and manifest) on the same base."""
        self.app = self.app_image(b"v2")
        self.digests["team/app:1.0"] = ib.push_image(
            self.registry, "team/app", "1.0", self.app
        )
        return self.app


def write_list(tmp_path: Path, registry: Registry) -> Path:
    path = tmp_path / "images.yaml"
    path.write_text(
        "registry-image: false\nimages:\n"
        f"  - {registry.host}/team/app:1.0\n  - {registry.host}/team/tool:2\n"
    )
    return path


def side_index(bundle: Path) -> dict:
    name = bundle.name.removesuffix(".tar.zst")
    return json.loads((bundle.parent / f"{name}.index.json").read_text())


def carried(side: dict) -> set[str]:
    return {b["digest"] for b in side["blobs"] if b["kind"] != "manifest"}


@pytest.fixture
def setup(tmp_path: Path, registry_factory, cli):
    """b1 packed and unpacked into `first`; then the app changed upstream."""
    upstream = Upstream(registry_factory())
    first = registry_factory()
    image_list = write_list(tmp_path, upstream.registry)
    b1 = tmp_path / "b1.tar.zst"
    packed = cli("pack", str(image_list), "-o", str(b1))
    assert packed.exit_code == 0, packed
    unpacked = cli("unpack", str(b1), "--registry", first.host)
    assert unpacked.exit_code == 0, unpacked
    upstream.change_app()
    return upstream, first, image_list, b1


def pack_since(cli, image_list: Path, out: Path, old: Path):
    packed = cli("pack", str(image_list), "-o", str(out), "--since", str(old), "--json")
    assert packed.exit_code == 0, packed
    return json.loads(packed.stdout)


def test_a_differential_bundle_carries_only_the_new_blobs(setup, cli) -> None:
    upstream, first, image_list, b1 = setup
    b2 = b1.with_name("b2.tar.zst")

    result = pack_since(cli, image_list, b2, b1)

    new = upstream.app
    side = side_index(b2)
    assert carried(side) == {new.config.digest, new.layers[1].digest}
    manifests = {b["digest"] for b in side["blobs"] if b["kind"] == "manifest"}
    assert manifests == set(upstream.digests.values())
    old_blobs = {upstream.base.digest, *(b.digest for b in upstream.tool.blobs)}
    assert {b["digest"] for b in side["omitted"]} == old_blobs
    assert {b["carriedBy"] for b in side["omitted"]} == {"b1.tar.zst"}
    assert side["since"]["bundle"] == "b1.tar.zst"
    assert result["omittedBlobs"] == len(old_blobs)
    verified = cli("verify", str(b2))
    assert verified.exit_code == 0, verified


def test_unpack_onto_the_first_target_pushes_only_what_changed(setup, cli) -> None:
    upstream, first, image_list, b1 = setup
    b2 = b1.with_name("b2.tar.zst")
    pack_since(cli, image_list, b2, b1)

    unpacked = cli("unpack", str(b2), "--registry", first.host, "--json")

    assert unpacked.exit_code == 0, unpacked
    new = upstream.app
    sent = json.loads(unpacked.stdout)["uploadedBytes"]
    assert sent == new.config.size + new.layers[1].size
    for ref, digest in upstream.digests.items():
        assert skopeo_digest(ref, first) == digest, ref


def test_unpack_onto_an_empty_target_stops_before_pushing_anything(
    setup, registry_factory, cli
) -> None:
    upstream, _, image_list, b1 = setup
    empty = registry_factory()
    b2 = b1.with_name("b2.tar.zst")
    pack_since(cli, image_list, b2, b1)

    unpacked = cli("unpack", str(b2), "--registry", empty.host)

    assert unpacked.exit_code == 5, unpacked
    assert "nothing was pushed" in unpacked.stderr
    assert "carried by b1.tar.zst" in unpacked.stderr
    for blob in (upstream.base, *upstream.tool.blobs):
        assert blob.digest in unpacked.stderr
    assert empty.catalog() == []


def test_blobs_held_under_other_repositories_are_mounted(setup, cli) -> None:
    upstream, first, image_list, b1 = setup
    b2 = b1.with_name("b2.tar.zst")
    pack_since(cli, image_list, b2, b1)
    assert "mount=" not in first.log()

    unpacked = cli("unpack", str(b2), "--registry", first.host, "--prefix", "next")

    assert unpacked.exit_code == 0, unpacked
    for ref, digest in upstream.digests.items():
        assert skopeo_digest(f"next/{ref}", first) == digest, ref
    assert "mount=" in first.log()


def test_an_index_file_or_a_chain_of_bundles_serves_as_old(setup, cli) -> None:
    upstream, _, image_list, b1 = setup
    from_bundle, from_index = b1.with_name("b2.tar.zst"), b1.with_name("c2.tar.zst")
    pack_since(cli, image_list, from_bundle, b1)
    pack_since(cli, image_list, from_index, b1.with_name("b1.index.json"))
    b3 = b1.with_name("b3.tar.zst")

    pack_since(cli, image_list, b3, b1.with_name("b2.index.json"))

    assert side_index(from_index)["omitted"] == side_index(from_bundle)["omitted"]
    chained = {b["digest"]: b["carriedBy"] for b in side_index(b3)["omitted"]}
    assert chained[upstream.base.digest] == "b1.tar.zst"
    assert chained[upstream.app.layers[1].digest] == "b2.tar.zst"
    assert carried(side_index(b3)) == set()


@pytest.mark.parametrize("old", ["b1.tar.zst", "b1.index.json", "b1.sha256"])
def test_since_naming_the_output_bundle_is_refused_and_the_old_one_kept(
    setup, cli, old: str
) -> None:
    _, _, image_list, b1 = setup
    before = b1.read_bytes()

    result = cli(
        "pack", str(image_list), "-o", str(b1), "--since", str(b1.parent / old)
    )

    assert result.exit_code == 2, result
    assert "names the bundle this pack writes" in result.stderr
    assert b1.read_bytes() == before


def test_list_says_a_bundle_is_differential_and_what_it_needs(
    setup, tmp_path: Path, cli
) -> None:
    _, _, image_list, b1 = setup
    b2 = tmp_path / "b2.tar.zst"
    side = pack_since(cli, image_list, b2, b1)

    text = cli("list", str(b2))
    listed = json.loads(cli("list", str(b2), "--json").stdout)

    assert f"differential: {side['omittedBlobs']} blobs left out" in text.stdout
    assert listed["omittedBlobs"] == side["omittedBlobs"] > 0
    assert listed["since"]["bundle"] == "b1.tar.zst"


@pytest.mark.docker
def test_load_of_a_differential_bundle_fails_naming_what_it_left_out(
    setup, tmp_path: Path, cli, docker_daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_daemon.host)
    _, _, image_list, b1 = setup
    b2 = tmp_path / "b2.tar.zst"
    pack_since(cli, image_list, b2, b1)

    result = cli("unpack", str(b2), "--load")

    assert result.exit_code == 5, result
    assert "team/tool:2" in result.stderr and "differential" in result.stderr
    assert "has no linux/amd64 image" not in result.stderr
