"""airgap inventory and unpack --inventory-out: what a registry holds, as a
file pack --since takes."""

from __future__ import annotations

import json
from pathlib import Path

import imagebuild as ib
import pytest
from servers import Registry, skopeo_digest

from airgap import inventory


def fill(registry: Registry) -> dict[str, ib.Image | ib.Index]:
    base = ib.layer(ib.random_files(41, 2, 16 * 1024))
    app = ib.image([base, ib.layer({"app": b"1"})])
    amd = ib.image([base, ib.layer({"arch": b"amd64"})], architecture="amd64")
    arm = ib.image([base, ib.layer({"arch": b"arm64"})], architecture="arm64")
    multi = ib.index([(amd, "linux/amd64"), (arm, "linux/arm64")])
    ib.push_image(registry, "team/app", "1.0", app)
    ib.push_image(registry, "team/app", "latest", app)
    ib.push_index(registry, "team/multi", "3", multi)
    return {"team/app": app, "team/multi": multi}


def blobs_of(*images: ib.Image) -> list[str]:
    return sorted({b.digest for img in images for b in img.blobs})


def load(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("created")
    return data


def test_inventory_lists_repositories_tags_manifests_and_blobs(
    tmp_path: Path, registry, cli
) -> None:
    held = fill(registry)
    out = tmp_path / "inv.json"

    result = cli("inventory", "--registry", registry.host, "-o", str(out))

    assert result.exit_code == 0, result
    repos = load(out)["repositories"]
    assert sorted(repos) == ["team/app", "team/multi"]
    app, multi = held["team/app"], held["team/multi"]
    assert repos["team/app"]["tags"] == {"1.0": app.digest, "latest": app.digest}
    assert repos["team/app"]["manifests"] == [app.digest]
    assert sorted(repos["team/app"]["blobs"]) == blobs_of(app)
    assert repos["team/multi"]["tags"] == {"3": multi.digest}
    children = [img.digest for img in multi.images]
    assert sorted(repos["team/multi"]["manifests"]) == sorted([multi.digest, *children])
    assert sorted(repos["team/multi"]["blobs"]) == blobs_of(*multi.images)


def test_catalog_pages_are_followed(registry, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(registry)
    monkeypatch.setattr(inventory, "_PAGE", 1)
    from airgap.registry import RegistryPool

    names = inventory.catalog(RegistryPool().get(registry.host))

    assert names == ["team/app", "team/multi"]


def test_unpack_inventory_out_matches_airgap_inventory_and_feeds_since(
    tmp_path: Path, registry_factory, cli
) -> None:
    upstream, isolated = registry_factory(), registry_factory()
    held = fill(upstream)
    image_list = tmp_path / "images.yaml"
    image_list.write_text(
        "registry-image: false\nimages:\n"
        f"  - {upstream.host}/team/app:1.0\n  - {upstream.host}/team/multi:3\n"
    )
    b1, written, taken = (tmp_path / n for n in ("b1.tar.zst", "w.json", "t.json"))
    assert cli("pack", str(image_list), "-o", str(b1)).exit_code == 0

    unpacked = cli(
        "unpack", str(b1), "--registry", isolated.host, "--inventory-out", str(written)
    )
    assert unpacked.exit_code == 0, unpacked
    assert (
        cli("inventory", "--registry", isolated.host, "-o", str(taken)).exit_code == 0
    )
    assert load(written) == load(taken)

    b2 = tmp_path / "b2.tar.zst"
    packed = cli("pack", str(image_list), "-o", str(b2), "--since", str(written))
    assert packed.exit_code == 0, packed
    side = json.loads((tmp_path / "b2.index.json").read_text())
    assert [b for b in side["blobs"] if b["kind"] != "manifest"] == []
    assert {b["carriedBy"] for b in side["omitted"]} == {f"registry {isolated.host}"}
    again = cli("unpack", str(b2), "--registry", isolated.host)
    assert again.exit_code == 0, again
    assert skopeo_digest("team/multi:3", isolated) == held["team/multi"].digest
