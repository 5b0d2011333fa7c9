"""sync: registry to registry with the walker pack uses, no bundle; every
digest arrives unchanged, attachments follow their subjects, and nothing is
pushed when the list cannot be resolved whole."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import carry
import imagebuild as ib
import pytest
from servers import CliFunction, Registry, RegistryFactory

SIGNATURE_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"


@dataclass
class Upstream:
    registry: Registry
    app: ib.Image
    amd: ib.Image
    arm: ib.Image
    multi: ib.Index
    signature: str  # cosign .sig of app
    sbom: str  # OCI referrer of app, listed under the fallback tag

    @property
    def sig_tag(self) -> str:
        return self.app.digest.replace(":", "-") + ".sig"

    @property
    def digests(self) -> dict[str, str]:
        return {
            "team/app:1.0": self.app.digest,
            "team/multi:3": self.multi.digest,
            f"team/multi@{self.amd.digest}": self.amd.digest,
            f"team/multi@{self.arm.digest}": self.arm.digest,
            f"team/app:{self.sig_tag}": self.signature,
            f"team/app@{self.sbom}": self.sbom,
        }


def attach(registry: Registry, app: ib.Image) -> tuple[str, str]:
    """A cosign-style signature tag and an SBOM referrer of `app`."""
    payload = b'{"critical":{"image":{}}}'
    signature, _ = carry.push_artifact(
        registry,
        "team/app",
        app.digest.replace(":", "-") + ".sig",
        {
            "schemaVersion": 2,
            "mediaType": ib.OCI_MANIFEST,
            "config": carry.descriptor("application/vnd.oci.empty.v1+json", b"{}"),
            "layers": [carry.descriptor(SIGNATURE_TYPE, payload)],
        },
        [b"{}", payload],
    )
    sbom_doc = b'{"spdxVersion":"SPDX-2.3"}'
    subject = {"mediaType": app.media_type, "digest": app.digest, "size": app.size}
    sbom, raw = carry.push_artifact(
        registry,
        "team/app",
        None,
        {
            "schemaVersion": 2,
            "mediaType": ib.OCI_MANIFEST,
            "artifactType": "application/spdx+json",
            "config": carry.descriptor("application/vnd.oci.empty.v1+json", b"{}"),
            "layers": [carry.descriptor("application/spdx+json", sbom_doc)],
            "subject": subject,
        },
        [b"{}", sbom_doc],
    )
    listing = {
        "schemaVersion": 2,
        "mediaType": ib.OCI_INDEX,
        "manifests": [carry.descriptor(ib.OCI_MANIFEST, raw)],
    }
    carry.push_artifact(
        registry,
        "team/app",
        app.digest.replace(":", "-"),
        listing,
        [],
        media_type=ib.OCI_INDEX,
    )
    return signature, sbom


@pytest.fixture
def upstream(registry_factory: RegistryFactory) -> Upstream:
    registry = registry_factory()
    base = ib.layer(ib.random_files(60, 3, 32 * 1024))
    app = ib.image([base, ib.layer(ib.random_files(61, 1, 16 * 1024))])
    amd = ib.image([base, ib.layer({"arch": b"amd64"})], oci=True)
    arm = ib.image([base, ib.layer({"arch": b"arm64"})], oci=True, architecture="arm64")
    multi = ib.index([amd, arm])
    ib.push_image(registry, "team/app", "1.0", app)
    ib.push_index(registry, "team/multi", "3", multi)
    ib.push_image(registry, "library/registry", "2", ib.image([base]))
    signature, sbom = attach(registry, app)
    return Upstream(registry, app, amd, arm, multi, signature, sbom)


def sync_list(tmp_path: Path, upstream: Upstream, *extra: str) -> Path:
    lines = "".join(
        f"  - UP/{ref}\n" for ref in ("team/app:1.0", "team/multi:3", *extra)
    )
    return carry.write_list(
        tmp_path,
        f"registry-image: UP/library/registry:2\nimages:\n{lines}",
        UP=upstream.registry,
    )


def run_sync(cli: CliFunction, image_list: Path, target: Registry, *options: str):
    result = cli("sync", str(image_list), "--registry", target.host, "--json", *options)
    assert result.exit_code == 0, result
    return json.loads(result.stdout)


def layer_downloads(upstream: Upstream) -> int:
    """Layer GETs airgap made, from the registry's access log. (Configs are
    read at every run: they say which platform a manifest is for.)"""
    layers = {
        blob.digest
        for img in (upstream.app, upstream.amd, upstream.arm)
        for blob in img.layers
    }
    return sum(
        1
        for line in upstream.registry.log().splitlines()
        if '"GET /v2/' in line
        and '"airgap"' in line
        and any(f"/blobs/{digest} " in line for digest in layers)
    )


def test_sync_lands_every_image_and_attachment_digest_for_digest(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    run_sync(cli, sync_list(tmp_path, upstream), registry)

    carry.assert_digests(registry, upstream.digests)
    listing = carry.raw_json(
        f"team/app:{upstream.app.digest.replace(':', '-')}", registry
    )
    assert [m["digest"] for m in listing["manifests"]] == [upstream.sbom]
    # The registry image is bundled for unpack to start; sync has a registry.
    assert "library/registry" not in registry.catalog()


def test_sync_takes_a_platform_subset_a_prefix_and_no_attachments(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    run_sync(
        cli,
        sync_list(tmp_path, upstream),
        registry,
        "--platform",
        "linux/arm64",
        "--prefix",
        "dmz",
        "--no-attachments",
    )

    index = carry.raw_json("dmz/team/multi:3", registry)
    assert [m["digest"] for m in index["manifests"]] == [upstream.arm.digest]
    carry.assert_digests(registry, {"dmz/team/app:1.0": upstream.app.digest})
    assert registry.tags("dmz/team/app") == ["1.0"]
    assert carry.absent(f"dmz/team/multi@{upstream.amd.digest}", registry)


def test_a_second_sync_neither_downloads_nor_uploads_a_layer(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    image_list = sync_list(tmp_path, upstream)
    first = run_sync(cli, image_list, registry)
    downloads = layer_downloads(upstream)

    second = run_sync(cli, image_list, registry)

    assert first["uploadedBytes"] > 0
    # app's two layers, then amd's and arm's own: their base is mounted from
    # team/app at the target, never downloaded twice.
    assert downloads == 4
    assert second["uploadedBytes"] == 0
    assert layer_downloads(upstream) == downloads
    carry.assert_digests(registry, upstream.digests)


def test_a_sync_whose_list_cannot_be_resolved_pushes_nothing(
    tmp_path: Path, upstream: Upstream, registry: Registry, cli: CliFunction
) -> None:
    image_list = sync_list(tmp_path, upstream, "team/missing:1")

    result = cli("sync", str(image_list), "--registry", registry.host)

    assert result.exit_code == 3, result
    assert "team/missing:1 not found" in result.stderr
    assert registry.catalog() == []
