"""pack from a registry, unpack into another: every digest unchanged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imagebuild as ib
from servers import Registry, skopeo_digest


def base_layer() -> ib.Blob:
    return ib.layer(ib.random_files(100, 4, 64 * 1024))


def build_upstream(registry: Registry) -> dict[str, str]:
    """Two images sharing a base layer (Docker v2 and OCI), and a two-platform
    index; returns reference -> digest at the source."""
    base = base_layer()
    app = ib.image([base, ib.layer(ib.random_files(1, 3, 32 * 1024))], cmd=["/app"])
    oci_base = ib.layer(ib.random_files(100, 4, 64 * 1024), media_type_style="oci")
    tool = ib.image(
        [oci_base, ib.layer(ib.random_files(2, 2, 1024), media_type_style="oci")],
        oci=True,
    )
    amd = ib.image([base, ib.layer({"arch": b"amd64"})], architecture="amd64")
    arm = ib.image([base, ib.layer({"arch": b"arm64"})], architecture="arm64")
    multi = ib.index([(amd, "linux/amd64"), (arm, "linux/arm64/v8")])
    registry_image = ib.image([base, ib.layer({"bin/registry": b"#!"})])
    return {
        "team/app:1.0": ib.push_image(registry, "team/app", "1.0", app),
        "team/tool:2": ib.push_image(registry, "team/tool", "2", tool),
        "team/multi:latest": ib.push_index(registry, "team/multi", "latest", multi),
        "library/registry:2": ib.push_image(
            registry, "library/registry", "2", registry_image
        ),
    }


def write_list(tmp_path: Path, upstream: Registry, body: str) -> Path:
    path = tmp_path / "images.yaml"
    path.write_text(body.replace("UP", upstream.host))
    return path


def test_pack_then_unpack_keeps_every_digest(
    tmp_path: Path, registry_factory, cli
) -> None:
    upstream, isolated = registry_factory(), registry_factory()
    digests = build_upstream(upstream)
    image_list = write_list(
        tmp_path,
        upstream,
        "registry-image: UP/library/registry:2\n"
        "images:\n  - UP/team/app:1.0\n  - UP/team/tool:2\n  - UP/team/multi\n",
    )
    bundle = tmp_path / "b.tar.zst"

    packed = cli("pack", str(image_list), "-o", str(bundle))
    assert packed.exit_code == 0, packed
    verified = cli("verify", str(bundle))
    assert verified.exit_code == 0, verified
    unpacked = cli("unpack", str(bundle), "--registry", isolated.host)
    assert unpacked.exit_code == 0, unpacked

    for ref, digest in digests.items():
        assert skopeo_digest(ref, isolated) == digest, ref
    assert (tmp_path / "b.sha256").exists()
    check = subprocess.run(
        ["sha256sum", "-c", "b.sha256"], cwd=tmp_path, capture_output=True
    )
    assert check.returncode == 0, check
