"""Signatures, attestations and SBOMs travel with their image: cosign's
`sha256-<hex>.sig/.att` tags, and OCI referrers, which distribution 2.8 (no
referrers API) keeps under the fallback tag `sha256-<hex>`."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import carry
import imagebuild as ib
import pytest
from servers import CliFunction, Registry, RegistryFactory

EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
SPDX = "application/spdx+json"
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE = "application/vnd.dsse.envelope.v1+json"


def tag_of(digest: str, suffix: str = "") -> str:
    return digest.replace(":", "-") + suffix


def cosign_style(
    registry: Registry, subject: str, layer_type: str, payload: bytes
) -> str:
    """What `cosign sign`/`attest` store: an image manifest of one payload
    layer, tagged beside its subject as sha256-<hex>.sig or .att."""
    rootfs = {"type": "layers", "diff_ids": [ib.sha256_digest(payload)]}
    config = ib.canonical_json({"architecture": "", "os": "", "rootfs": rootfs})
    manifest = {
        "schemaVersion": 2,
        "mediaType": ib.OCI_MANIFEST,
        "config": carry.descriptor(ib.OCI_CONFIG, config),
        "layers": [
            carry.descriptor(
                layer_type,
                payload,
                annotations={"dev.cosignproject.cosign/signature": "MEUCIQ=="},
            )
        ],
    }
    suffix = ".sig" if layer_type == SIMPLESIGNING else ".att"
    digest, _ = carry.push_artifact(
        registry, "team/app", tag_of(subject, suffix), manifest, [config, payload]
    )
    return digest


def referrer(registry: Registry, subject: ib.Image, sbom: bytes) -> tuple[str, bytes]:
    """An OCI 1.1 SBOM referrer of `subject`, pushed by digest."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": ib.OCI_MANIFEST,
        "artifactType": SPDX,
        "config": carry.descriptor(EMPTY_TYPE, EMPTY),
        "layers": [carry.descriptor(SPDX, sbom)],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        },
        "annotations": {"org.example.kind": "sbom"},
    }
    return carry.push_artifact(registry, "team/app", None, manifest, [EMPTY, sbom])


def fallback_index(entries: list[tuple[str, bytes]]) -> bytes:
    return ib.canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": ib.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": ib.OCI_MANIFEST,
                    "digest": digest,
                    "size": len(raw),
                    "artifactType": SPDX,
                }
                for digest, raw in entries
            ],
        }
    )


def push_fallback(registry: Registry, subject: str, entries: list[tuple[str, bytes]]):
    """The fallback tag, as oras writes it where there is no referrers API."""
    ib.push_manifest(
        registry, "team/app", tag_of(subject), fallback_index(entries), ib.OCI_INDEX
    )


@dataclass
class Upstream:
    registry: Registry
    amd: ib.Image
    arm: ib.Image
    index: ib.Index
    signature: str  # cosign .sig of the index
    attestation: str  # cosign .att of the amd64 child
    sbom: str  # OCI referrer of the arm64 child
    sbom_signature: str  # cosign .sig of the SBOM: an attachment's attachment

    @property
    def digests(self) -> dict[str, str]:
        """Every reference the target must hold, with its digest."""
        return {
            "team/app:1": self.index.digest,
            f"team/app@{self.amd.digest}": self.amd.digest,
            f"team/app@{self.arm.digest}": self.arm.digest,
            f"team/app:{tag_of(self.index.digest, '.sig')}": self.signature,
            f"team/app:{tag_of(self.amd.digest, '.att')}": self.attestation,
            f"team/app@{self.sbom}": self.sbom,
            f"team/app:{tag_of(self.sbom, '.sig')}": self.sbom_signature,
        }


@pytest.fixture
def upstream(registry_factory: RegistryFactory) -> Upstream:
    registry = registry_factory()
    base = ib.layer(ib.random_files(40, 2, 8 * 1024))
    amd = ib.image([base, ib.layer({"a": b"amd64"})], oci=True)
    arm = ib.image([base, ib.layer({"a": b"arm64"})], oci=True, architecture="arm64")
    index = ib.index([amd, arm])
    ib.push_index(registry, "team/app", "1", index)
    signature = cosign_style(registry, index.digest, SIMPLESIGNING, b'{"critical":{}}')
    attestation = cosign_style(registry, amd.digest, DSSE, b'{"payloadType":"x"}')
    sbom, sbom_raw = referrer(registry, arm, b'{"spdxVersion":"SPDX-2.3"}')
    push_fallback(registry, arm.digest, [(sbom, sbom_raw)])
    sbom_signature = cosign_style(registry, sbom, SIMPLESIGNING, b'{"sbom":true}')
    return Upstream(
        registry, amd, arm, index, signature, attestation, sbom, sbom_signature
    )


def image_list(tmp_path: Path, upstream: Upstream) -> Path:
    return carry.write_list(
        tmp_path,
        "registry-image: false\nimages: [UP/team/app:1]\n",
        UP=upstream.registry,
    )


def fallback_listing(target: Registry, subject: str) -> list[str]:
    index = carry.raw_json(f"team/app:{tag_of(subject)}", target)
    return [entry["digest"] for entry in index["manifests"]]


def test_signatures_attestations_and_referrers_land_beside_their_image(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    bundle = carry.pack(cli, image_list(tmp_path, upstream))
    carry.unpack(cli, bundle, registry)

    carry.assert_digests(registry, upstream.digests)
    # The target has no referrers API either: airgap wrote the fallback tag.
    assert fallback_listing(registry, upstream.arm.digest) == [upstream.sbom]
    entry = carry.raw_json(f"team/app:{tag_of(upstream.arm.digest)}", registry)
    assert entry["manifests"][0]["artifactType"] == SPDX
    assert entry["manifests"][0]["annotations"] == {"org.example.kind": "sbom"}


def test_the_bundle_lists_each_attachment_with_its_subject(
    tmp_path: Path, upstream: Upstream, cli: CliFunction
) -> None:
    bundle = carry.pack(cli, image_list(tmp_path, upstream))

    images = carry.listed(cli, bundle)
    attached = {i["digest"]: i.get("attachmentOf") for i in images}
    assert attached == {
        upstream.index.digest: None,
        upstream.signature: upstream.index.digest,
        upstream.attestation: upstream.amd.digest,
        upstream.sbom: upstream.arm.digest,
        upstream.sbom_signature: upstream.sbom,
    }
    # Each after its subject, so unpack pushes the subject first.
    order = [i["digest"] for i in images]
    assert order.index(upstream.sbom) < order.index(upstream.sbom_signature)
    assert (
        f"[attached to {upstream.arm.digest[:19]}]" in cli("list", str(bundle)).stdout
    )


def test_the_fallback_tag_at_the_target_keeps_the_referrers_it_listed(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    ib.push_index(registry, "team/app", "1", upstream.index)
    earlier = referrer(registry, upstream.arm, b'{"spdxVersion":"SPDX-2.2"}')
    push_fallback(registry, upstream.arm.digest, [earlier])

    bundle = carry.pack(cli, image_list(tmp_path, upstream))
    carry.unpack(cli, bundle, registry)
    carry.unpack(cli, bundle, registry)  # a second run adds nothing twice

    assert fallback_listing(registry, upstream.arm.digest) == [
        earlier[0],
        upstream.sbom,
    ]


def test_no_attachments_leaves_every_attachment_behind(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    bundle = carry.pack(cli, image_list(tmp_path, upstream), "--no-attachments")
    carry.unpack(cli, bundle, registry)

    assert [i["digest"] for i in carry.listed(cli, bundle)] == [upstream.index.digest]
    assert registry.tags("team/app") == ["1"]
    assert carry.absent(f"team/app@{upstream.sbom}", registry)


def test_unpack_with_no_attachments_pushes_the_images_only(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    bundle = carry.pack(cli, image_list(tmp_path, upstream))
    carry.unpack(cli, bundle, registry, "--no-attachments")

    carry.assert_digests(registry, {"team/app:1": upstream.index.digest})
    assert registry.tags("team/app") == ["1"]
    assert carry.absent(f"team/app@{upstream.sbom}", registry)


def test_an_attachment_that_cannot_be_fetched_fails_the_pack(
    tmp_path: Path, upstream: Upstream, cli: CliFunction
) -> None:
    # The signature's config blob goes missing upstream.
    signature = json.loads(
        upstream.registry.get_manifest("team/app", upstream.signature).content
    )
    config = signature["config"]["digest"]
    deleted = upstream.registry.request("DELETE", f"/v2/team/app/blobs/{config}")
    assert deleted.status_code == 202, deleted.text
    images = image_list(tmp_path, upstream)

    failed = cli("pack", str(images), "-o", str(tmp_path / "b.tar.zst"))
    assert failed.exit_code == 3, failed
    assert tag_of(upstream.index.digest, ".sig") in failed.stderr
    assert "--no-attachments" in failed.stderr
    assert not (tmp_path / "b.tar.zst").exists()
    carry.pack(cli, images, "--no-attachments")


def test_an_attachment_whose_layer_is_missing_fails_the_pack_naming_it(
    tmp_path: Path, upstream: Upstream, cli: CliFunction
) -> None:
    signature = json.loads(
        upstream.registry.get_manifest("team/app", upstream.sbom).content
    )
    layer = signature["layers"][0]["digest"]
    deleted = upstream.registry.request("DELETE", f"/v2/team/app/blobs/{layer}")
    assert deleted.status_code == 202, deleted.text

    failed = cli("pack", str(image_list(tmp_path, upstream)), "-o", str(tmp_path / "b"))
    assert failed.exit_code == 3, failed
    assert (
        f"attachment {upstream.registry.host}/team/app@{upstream.sbom}" in failed.stderr
    )
    assert layer in failed.stderr


def test_a_platform_subset_carries_the_attachments_of_the_children_it_keeps(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    bundle = carry.pack(
        cli, image_list(tmp_path, upstream), "--platform", "linux/amd64"
    )
    carry.unpack(cli, bundle, registry)

    attached = [i["digest"] for i in carry.listed(cli, bundle)[1:]]
    # The source index's signature stays behind with the index it signs.
    assert attached == [upstream.attestation]
    carry.assert_digests(
        registry,
        {f"team/app:{tag_of(upstream.amd.digest, '.att')}": upstream.attestation},
    )


def test_attachments_of_an_image_that_arrived_damaged_are_not_pushed(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    bundle = tmp_path / "b.tar"
    packed = cli(
        "pack", str(image_list(tmp_path, upstream)), "-o", str(bundle),
        "--compression", "none",
    )  # fmt: skip
    assert packed.exit_code == 0, packed
    layer = upstream.amd.layers[1].digest
    with tarfile.open(bundle) as tar:
        offset = tar.getmember(f"blobs/sha256/{layer[7:]}").offset_data
    data = bytearray(bundle.read_bytes())
    data[offset] ^= 0xFF
    bundle.write_bytes(bytes(data))

    unpacked = cli("unpack", str(bundle), "--registry", registry.host, "--json")

    assert unpacked.exit_code == 5, unpacked
    assert registry.tags("team/app") == []
    assert carry.absent(f"team/app@{upstream.sbom}", registry)
    # stdout holds the result, then the error: read the first document.
    result, _ = json.JSONDecoder().raw_decode(unpacked.stdout)
    broken = result["broken"]
    assert any("was not pushed" in problem for problem in broken.values()), broken
