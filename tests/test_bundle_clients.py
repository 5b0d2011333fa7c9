"""The bundle read by tools that share no code with airgap: the `zstd` and
`tar` commands unpack it into an OCI layout that `skopeo` and `umoci` read, and
`docker load` takes the decompressed stream as it is."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import imagebuild as ib
import pytest
from servers import (
    CliFunction,
    DockerDaemon,
    Registry,
    RegistryFactory,
    require_binary,
    skopeo_digest,
)


@dataclass
class Upstream:
    registry: Registry
    base: ib.Blob  # the layer app and both platforms of multi share
    app: ib.Image  # Docker v2
    tool: ib.Image  # OCI
    amd: ib.Image
    arm: ib.Image
    multi: ib.Index  # OCI index over amd and arm

    @property
    def digests(self) -> dict[str, str]:
        """OCI ref name -> digest of what it names."""
        return {
            "team/app:1.0": self.app.digest,
            "team/tool:2": self.tool.digest,
            "team/multi:latest": self.multi.digest,
        }


@pytest.fixture
def upstream(registry_factory: RegistryFactory) -> Upstream:
    registry = registry_factory()
    base = ib.layer(ib.random_files(20, 3, 32 * 1024))
    app = ib.image(
        [base, ib.layer({"app/run": ib.executable(b"#!/bin/sh\necho app\n")})],
        cmd=["/app/run"],
    )
    tool = ib.image(
        [
            ib.layer(ib.random_files(21, 2, 8 * 1024), media_type_style="oci"),
            ib.layer({"etc/tool.conf": b"mode=air\n"}, media_type_style="oci"),
        ],
        oci=True,
    )
    amd = ib.image([base, ib.layer({"arch": b"amd64\n"})], architecture="amd64")
    arm = ib.image(
        [base, ib.layer({"arch": b"arm64\n"})], architecture="arm64", variant="v8"
    )
    multi = ib.index([amd, arm])
    ib.push_image(registry, "team/app", "1.0", app)
    ib.push_image(registry, "team/tool", "2", tool)
    ib.push_index(registry, "team/multi", "latest", multi)
    return Upstream(registry, base, app, tool, amd, arm, multi)


@pytest.fixture
def bundle(upstream: Upstream, tmp_path: Path, cli: CliFunction) -> Path:
    host = upstream.registry.host
    image_list = tmp_path / "images.yaml"
    image_list.write_text(
        "registry-image: false\nimages:\n"
        + "".join(f"  - {host}/{ref}\n" for ref in upstream.digests)
    )
    path = tmp_path / "b.tar.zst"
    result = cli("pack", str(image_list), "-o", str(path))
    assert result.exit_code == 0, result
    return path


def run(*args: str, stdout: IO[bytes] | int = subprocess.PIPE) -> Completed:
    """A tool's run, which must succeed; its stdout goes to `stdout`."""
    # An empty registries.conf: no mirror or alias on the host can redirect skopeo.
    env = dict(os.environ, CONTAINERS_REGISTRIES_CONF=os.devnull)
    result = subprocess.run(
        [require_binary(args[0]), *args[1:]],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, (args, result.stderr.decode(errors="replace"))
    return result


Completed = subprocess.CompletedProcess[bytes]


def decompress(bundle: Path) -> Path:
    """`zstd -dc B > b.tar`, the way a user without airgap would."""
    tar_path = bundle.with_name("b.tar")
    with tar_path.open("wb") as out:
        run("zstd", "-dc", str(bundle), stdout=out)
    return tar_path


@pytest.fixture
def layout(bundle: Path, tmp_path: Path) -> Path:
    """The bundle decompressed with `zstd` and extracted with `tar`."""
    tar_path = decompress(bundle)
    directory = tmp_path / "layout"
    directory.mkdir()
    run("tar", "-xf", str(tar_path), "-C", str(directory))
    return directory


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- skopeo -------------------------------------------------------------------

# containers/image's oci: transport looks a ref name up only among index.json
# descriptors of OCI media types; a Docker v2 manifest there is not found by
# name, though a Docker v2 child of an OCI index is read by its digest.
OCI_TYPED = ("team/tool:2", "team/multi:latest")


@pytest.mark.parametrize("ref", OCI_TYPED)
def test_skopeo_reads_an_oci_typed_image_of_the_layout_with_its_digest(
    ref: str, upstream: Upstream, layout: Path
) -> None:
    raw = run("skopeo", "inspect", "--raw", f"oci:{layout}:{ref}").stdout

    assert sha256(raw) == upstream.digests[ref]


@pytest.mark.xfail(
    reason="skopeo's oci: transport skips index.json entries with Docker media "
    "types (containers/image oci/layout getManifestDescriptor), so a Docker v2 "
    "image is not found by its ref name; airgap cannot change the manifest's type "
    "without changing its digest",
    strict=True,
)
def test_skopeo_reads_a_docker_typed_image_of_the_layout_by_ref_name(
    upstream: Upstream, layout: Path
) -> None:
    raw = run("skopeo", "inspect", "--raw", f"oci:{layout}:team/app:1.0").stdout

    assert sha256(raw) == upstream.app.digest


@pytest.mark.parametrize("ref", OCI_TYPED)
def test_skopeo_copies_an_image_from_the_layout_into_a_registry_unchanged(
    ref: str, upstream: Upstream, layout: Path, registry_factory: RegistryFactory
) -> None:
    isolated = registry_factory()

    run(
        "skopeo",
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        f"oci:{layout}:{ref}",
        f"docker://{isolated.host}/copied/{ref}",
    )

    assert skopeo_digest(f"copied/{ref}", isolated) == upstream.digests[ref]
    assert skopeo_digest(ref, upstream.registry) == upstream.digests[ref]


def test_skopeo_copy_of_the_index_brings_every_platform_child(
    upstream: Upstream, layout: Path, registry_factory: RegistryFactory
) -> None:
    isolated = registry_factory()

    run(
        "skopeo",
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        f"oci:{layout}:team/multi:latest",
        f"docker://{isolated.host}/copied/multi:latest",
    )

    for child in (upstream.amd, upstream.arm):
        ref = f"copied/multi@{child.digest}"
        assert skopeo_digest(ref, isolated) == child.digest
        manifest = json.loads(
            isolated.get_manifest("copied/multi", child.digest).content
        )
        assert [layer["digest"] for layer in manifest["layers"]] == [
            blob.digest for blob in child.layers
        ]


# -- umoci --------------------------------------------------------------------


def test_umoci_lists_the_ref_names_of_the_layout(
    upstream: Upstream, layout: Path
) -> None:
    listed = run("umoci", "ls", "--layout", str(layout)).stdout.decode().split()

    assert sorted(listed) == sorted(upstream.digests)


@pytest.mark.skipif(os.geteuid() != 0, reason="umoci unpack without --rootless")
def test_umoci_unpacks_an_oci_image_with_its_files(
    upstream: Upstream, layout: Path, tmp_path: Path
) -> None:
    target = tmp_path / "unpacked"

    run("umoci", "unpack", "--image", f"{layout}:team/tool:2", str(target))

    rootfs = target / "rootfs"
    assert (rootfs / "etc/tool.conf").read_bytes() == b"mode=air\n"
    for name, data in ib.random_files(21, 2, 8 * 1024).items():
        assert (rootfs / name).read_bytes() == data, name


# -- the tar itself -----------------------------------------------------------


def test_tar_stores_a_layer_shared_by_two_images_once(
    upstream: Upstream, bundle: Path
) -> None:
    with tarfile.open(decompress(bundle)) as tar:
        names = tar.getnames()

    base = f"blobs/sha256/{upstream.base.digest.removeprefix('sha256:')}"
    assert names.count(base) == 1
    assert len(names) == len(set(names))


def test_tar_holds_the_layout_files_first_and_layers_last(
    upstream: Upstream, bundle: Path
) -> None:
    with tarfile.open(decompress(bundle)) as tar:
        names = tar.getnames()

    assert names[:4] == ["oci-layout", "airgap.json", "index.json", "manifest.json"]
    layers = {
        f"blobs/sha256/{blob.digest.removeprefix('sha256:')}"
        for img in (upstream.app, upstream.tool, upstream.amd, upstream.arm)
        for blob in img.layers
    }
    first_layer = min(names.index(name) for name in layers)
    assert set(names[first_layer:]) == layers


def test_index_json_names_every_image_by_ref_name(
    upstream: Upstream, layout: Path
) -> None:
    index = json.loads((layout / "index.json").read_text())

    named = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
    assert named == upstream.digests
    host = upstream.registry.host
    full = {m["annotations"]["io.containerd.image.name"] for m in index["manifests"]}
    assert full == {f"{host}/{ref}" for ref in upstream.digests}


def test_manifest_json_names_the_images_of_the_bundle_platform(
    upstream: Upstream, layout: Path
) -> None:
    entries = json.loads((layout / "manifest.json").read_text())

    def blob(digest: str) -> str:
        return f"blobs/sha256/{digest.removeprefix('sha256:')}"

    by_config = {entry["Config"]: entry for entry in entries}
    amd64 = {"team/app:1.0": upstream.app, "team/tool:2": upstream.tool}
    amd64["team/multi:latest"] = upstream.amd
    assert set(by_config) == {blob(img.config.digest) for img in amd64.values()}
    for tag, img in amd64.items():
        entry = by_config[blob(img.config.digest)]
        assert entry["RepoTags"] == [tag]
        assert entry["Layers"] == [blob(layer.digest) for layer in img.layers]
        assert (layout / entry["Config"]).is_file()


# -- docker load --------------------------------------------------------------


@pytest.mark.docker
def test_docker_loads_the_decompressed_bundle_with_config_digests_as_ids(
    upstream: Upstream, bundle: Path, docker_daemon: DockerDaemon
) -> None:
    stream = run("zstd", "-dc", str(bundle)).stdout

    docker_daemon.docker("load", input=stream)

    amd64 = {
        "team/app:1.0": upstream.app,
        "team/tool:2": upstream.tool,
        "team/multi:latest": upstream.amd,
    }
    for tag, img in amd64.items():
        loaded = docker_daemon.client.images.get(tag)
        assert loaded.id == img.config.digest, tag
        docker_daemon.client.images.remove(tag, force=True)
