"""Multi-platform images: an index is carried whole unless a platform subset is
asked for; then a new index is written and both digests are recorded. Also
the names a reference gives: `name:tag@digest` lands under the tag."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import carry
import imagebuild as ib
import pytest
from servers import CliFunction, Registry, RegistryFactory


@dataclass
class Upstream:
    registry: Registry
    amd: ib.Image
    arm: ib.Image
    ppc: ib.Image
    multi: ib.Index


@pytest.fixture
def upstream(registry_factory: RegistryFactory) -> Upstream:
    registry = registry_factory()
    base = ib.layer(ib.random_files(30, 2, 16 * 1024))
    amd = ib.image([base, ib.layer({"arch": b"amd64"})], architecture="amd64")
    arm = ib.image(
        [base, ib.layer({"arch": b"arm64"})], architecture="arm64", variant="v8"
    )
    ppc = ib.image([base, ib.layer({"arch": b"ppc64le"})], architecture="ppc64le")
    multi = ib.index([amd, arm, ppc])
    ib.push_index(registry, "team/multi", "3", multi)
    return Upstream(registry, amd, arm, ppc, multi)


def children(ref: str, target: Registry) -> list[str]:
    return [c["digest"] for c in carry.raw_json(ref, target)["manifests"]]


def test_an_index_is_carried_whole_with_every_child_by_default(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    image_list = carry.write_list(
        tmp_path,
        "registry-image: false\nimages: [UP/team/multi:3]\n",
        UP=upstream.registry,
    )
    bundle = carry.pack(cli, image_list)
    carry.unpack(cli, bundle, registry)

    expected = {"team/multi:3": upstream.multi.digest}
    for child in (upstream.amd, upstream.arm, upstream.ppc):
        expected[f"team/multi@{child.digest}"] = child.digest
    carry.assert_digests(registry, expected)
    (image,) = carry.listed(cli, bundle)
    assert "sourceDigest" not in image
    assert image["platforms"] == ["linux/amd64", "linux/arm64/v8", "linux/ppc64le"]


def test_a_platform_subset_lands_as_a_new_index_of_those_children_only(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    image_list = carry.write_list(
        tmp_path,
        "registry-image: false\nimages: [UP/team/multi:3]\n",
        UP=upstream.registry,
    )
    bundle = carry.pack(cli, image_list, "--platform", "linux/amd64,linux/arm64")
    carry.unpack(cli, bundle, registry)

    (image,) = carry.listed(cli, bundle)
    assert image["sourceDigest"] == upstream.multi.digest
    assert image["digest"] != upstream.multi.digest
    assert image["platforms"] == ["linux/amd64", "linux/arm64/v8"]
    carry.assert_digests(
        registry,
        {
            "team/multi:3": image["digest"],
            f"team/multi@{upstream.amd.digest}": upstream.amd.digest,
            f"team/multi@{upstream.arm.digest}": upstream.arm.digest,
        },
    )
    assert children("team/multi:3", registry) == [
        upstream.amd.digest,
        upstream.arm.digest,
    ]
    assert carry.absent(f"team/multi@{upstream.ppc.digest}", registry)
    text = cli("list", str(bundle)).stdout
    assert f"{image['digest']} (source {upstream.multi.digest})" in text


def test_a_per_image_platform_in_the_list_selects_for_that_image(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    image_list = carry.write_list(
        tmp_path,
        "registry-image: false\n"
        "images:\n  - name: UP/team/multi:3\n    platforms: [linux/ppc64le]\n",
        UP=upstream.registry,
    )
    bundle = carry.pack(cli, image_list)
    carry.unpack(cli, bundle, registry)

    assert children("team/multi:3", registry) == [upstream.ppc.digest]
    assert carry.absent(f"team/multi@{upstream.amd.digest}", registry)


def test_platforms_are_chosen_per_image_then_by_pack_platform_then_list_wide(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    ib.push_index(upstream.registry, "team/other", "3", upstream.multi)
    image_list = carry.write_list(
        tmp_path,
        "registry-image: false\nplatforms: [linux/ppc64le]\nimages:\n"
        "  - UP/team/multi:3\n"
        "  - name: UP/team/other:3\n    platforms: [linux/arm64]\n",
        UP=upstream.registry,
    )

    bundle = carry.pack(cli, image_list, "--platform", "linux/amd64")
    carry.unpack(cli, bundle, registry)

    assert children("team/multi:3", registry) == [upstream.amd.digest]
    assert children("team/other:3", registry) == [upstream.arm.digest]


def test_an_unoffered_pack_platform_fails_even_when_the_list_names_platforms(
    tmp_path: Path, upstream: Upstream, cli: CliFunction
) -> None:
    image_list = carry.write_list(
        tmp_path,
        "registry-image: false\nplatforms: [linux/amd64]\nimages: [UP/team/multi:3]\n",
        UP=upstream.registry,
    )

    result = cli(
        "pack",
        str(image_list),
        "-o",
        str(tmp_path / "b.tar.zst"),
        "--platform",
        "windows/amd64",
    )

    assert result.exit_code == 2, result
    assert "windows/amd64" in result.stderr


def test_a_digest_pinned_index_with_a_subset_lands_under_the_new_digest_only(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    image_list = carry.write_list(
        tmp_path,
        "registry-image: false\nplatforms: [linux/amd64]\n"
        f"images: ['UP/team/multi@{upstream.multi.digest}']\n",
        UP=upstream.registry,
    )
    bundle = carry.pack(cli, image_list)
    carry.unpack(cli, bundle, registry)

    (image,) = carry.listed(cli, bundle)
    assert image["sourceDigest"] == upstream.multi.digest
    assert image["target"] == "team/multi"
    carry.assert_digests(registry, {f"team/multi@{image['digest']}": image["digest"]})
    assert children(f"team/multi@{image['digest']}", registry) == [upstream.amd.digest]
    # Nothing, not a child either, stands under the digest the user pinned.
    assert carry.absent(f"team/multi@{upstream.multi.digest}", registry)
    assert registry.tags("team/multi") == []


def docker_manifest_config(bundle: Path) -> list[str]:
    """The configs manifest.json names, read from the tar's members one by one."""
    with tarfile.open(bundle) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        return [entry["Config"] for entry in json.load(member)]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (("--platform", "linux/arm64,linux/amd64"), "arm"),
        (
            (
                "--platform",
                "linux/arm64,linux/amd64",
                "--docker-platform",
                "linux/amd64",
            ),
            "amd",
        ),
        ((), "amd"),
    ],
    ids=["first-listed-platform", "docker-platform-option", "default-linux-amd64"],
)
def test_manifest_json_is_written_for_the_bundle_platform(
    tmp_path: Path,
    upstream: Upstream,
    cli: CliFunction,
    options: tuple[str, ...],
    expected: str,
) -> None:
    image_list = carry.write_list(
        tmp_path,
        "registry-image: false\nimages: [UP/team/multi:3]\n",
        UP=upstream.registry,
    )
    bundle = tmp_path / "b.tar"
    packed = cli(
        "pack", str(image_list), "-o", str(bundle), "--compression", "none", *options
    )
    assert packed.exit_code == 0, packed

    config = getattr(upstream, expected).config.digest
    assert docker_manifest_config(bundle) == [f"blobs/sha256/{config[7:]}"]


def test_name_tag_at_digest_lands_under_the_tag_with_the_pinned_digest(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    # The source tag `3` names the index; the pin names the arm64 child, and
    # the tag `pinned` exists nowhere upstream: the digest decides.
    pinned = upstream.arm.digest
    image_list = carry.write_list(
        tmp_path,
        f"registry-image: false\nimages: ['UP/team/multi:pinned@{pinned}']\n",
        UP=upstream.registry,
    )
    bundle = carry.pack(cli, image_list)
    carry.unpack(cli, bundle, registry)

    (image,) = carry.listed(cli, bundle)
    assert (image["target"], image["digest"]) == ("team/multi:pinned", pinned)
    carry.assert_digests(registry, {"team/multi:pinned": pinned})
    assert registry.tags("team/multi") == ["pinned"]


def buildx_index(registry: Registry, upstream: Upstream) -> tuple[str, str, str]:
    """An index as buildx writes it: each platform's image, and beside each an
    attestation manifest (platform unknown/unknown) naming the image it is for.
    Returns the index digest and the amd64 and arm64 attestation digests."""
    entries, attestations = [], []
    for img in (upstream.amd, upstream.arm):
        statement = ib.canonical_json({"subject": [{"digest": img.digest}]})
        manifest = {
            "schemaVersion": 2,
            "mediaType": ib.OCI_MANIFEST,
            "config": carry.descriptor(ib.OCI_CONFIG, b"{}"),
            "layers": [carry.descriptor("application/vnd.in-toto+json", statement)],
        }
        digest, raw = carry.push_artifact(
            registry, "team/multi", None, manifest, [b"{}", statement]
        )
        attestations.append(digest)
        entries.append(json.loads(ib.index([img]).data)["manifests"][0])
        entries.append(
            {
                **carry.descriptor(ib.OCI_MANIFEST, raw),
                "platform": {"architecture": "unknown", "os": "unknown"},
                "annotations": {
                    "vnd.docker.reference.digest": img.digest,
                    "vnd.docker.reference.type": "attestation-manifest",
                },
            }
        )
    index = {"schemaVersion": 2, "mediaType": ib.OCI_INDEX, "manifests": entries}
    digest, _ = carry.push_artifact(
        registry, "team/multi", "bx", index, [], media_type=ib.OCI_INDEX
    )
    return digest, attestations[0], attestations[1]


def test_a_subset_keeps_the_attestation_manifests_of_the_kept_platforms(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    _, amd_attestation, _ = buildx_index(upstream.registry, upstream)
    image_list = carry.write_list(
        tmp_path,
        "registry-image: false\nimages: [UP/team/multi:bx]\n",
        UP=upstream.registry,
    )
    bundle = carry.pack(cli, image_list, "--platform", "linux/amd64")
    carry.unpack(cli, bundle, registry)

    assert children("team/multi:bx", registry) == [upstream.amd.digest, amd_attestation]
    (image,) = carry.listed(cli, bundle)
    assert image["platforms"] == ["linux/amd64"]


def test_a_subset_the_index_does_not_offer_is_a_usage_error(
    tmp_path: Path, upstream: Upstream, cli: CliFunction
) -> None:
    image_list = carry.write_list(
        tmp_path,
        "registry-image: false\nimages: [UP/team/multi:3]\n",
        UP=upstream.registry,
    )

    packed = cli(
        "pack", str(image_list), "-o", str(tmp_path / "b"), "--platform", "linux/s390x"
    )

    assert packed.exit_code == 2, packed
    assert "has none of the platforms linux/s390x" in packed.stderr
    assert "linux/amd64, linux/arm64/v8, linux/ppc64le" in packed.stderr
