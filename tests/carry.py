"""What the fidelity tests share: an image list, a pack-verify-unpack round
trip through the CLI, what a bundle lists, and reading digests back with skopeo.

Every digest is read at the target with `skopeo inspect --raw`, a tool that
shares no code with airgap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import imagebuild as ib
from servers import CliFunction, Registry, skopeo_digest, skopeo_inspect_raw


def write_list(tmp_path: Path, body: str, **hosts: Registry) -> Path:
    """An image list; each NAME in `hosts` is replaced by that registry's host."""
    for name, registry in hosts.items():
        body = body.replace(name, registry.host)
    path = tmp_path / "images.yaml"
    path.write_text(body)
    return path


def pack(cli: CliFunction, image_list: Path, *options: str) -> Path:
    bundle = image_list.parent / "b.tar.zst"
    packed = cli("pack", str(image_list), "-o", str(bundle), *options)
    assert packed.exit_code == 0, packed
    verified = cli("verify", str(bundle))
    assert verified.exit_code == 0, verified
    return bundle


def unpack(cli: CliFunction, bundle: Path, target: Registry, *options: str) -> None:
    unpacked = cli("unpack", str(bundle), "--registry", target.host, *options)
    assert unpacked.exit_code == 0, unpacked


def listed(cli: CliFunction, bundle: Path) -> list[dict[str, Any]]:
    """The images of a bundle as `airgap list --json` reports them."""
    result = cli("list", str(bundle), "--json")
    assert result.exit_code == 0, result
    return list(json.loads(result.stdout)["images"])


def by_source(images: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {image["source"]: image for image in images}


def assert_digests(target: Registry, expected: Mapping[str, str]) -> None:
    """Every reference ("repo:tag" or "repo@digest") reads back as its digest."""
    for ref, digest in expected.items():
        assert skopeo_digest(ref, target) == digest, ref


def raw_json(ref: str, target: Registry) -> dict[str, Any]:
    return dict(json.loads(skopeo_inspect_raw(ref, target)))


def absent(ref: str, target: Registry) -> bool:
    """Whether skopeo finds nothing at `ref`."""
    try:
        skopeo_inspect_raw(ref, target)
    except RuntimeError:
        return True
    return False


def push_artifact(
    registry: Registry,
    repo: str,
    ref: str | None,
    manifest: Mapping[str, Any],
    blobs: Iterable[bytes],
    media_type: str = ib.OCI_MANIFEST,
) -> tuple[str, bytes]:
    """Push `blobs`, then `manifest` (canonical JSON) by `ref` or by its
    digest; returns its digest and bytes."""
    for blob in blobs:
        ib.push_blob(registry, repo, blob)
    raw = ib.canonical_json(manifest)
    digest = ib.sha256_digest(raw)
    ib.push_manifest(registry, repo, ref or digest, raw, media_type)
    return digest, raw


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": ib.sha256_digest(data),
        "size": len(data),
        **extra,
    }
