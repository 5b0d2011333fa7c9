"""Content that is not a plain image travels as opaque, digest-checked bytes:
OCI artifacts (a Helm chart, an artifact with the empty config), manifests and
indexes without `mediaType`, zstd and uncompressed layers, and foreign layers
whose bytes live at a URL."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import carry
import imagebuild as ib
import pytest
from servers import CliFunction, Registry, RegistryFactory, free_port

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
ALLOW_URLS = {"validation": {"manifests": {"urls": {"allow": ["^https?://"]}}}}


def helm_chart(registry: Registry) -> str:
    chart = ib.compress(
        ib.tar_bytes({"mychart/Chart.yaml": b"apiVersion: v2\nname: mychart\n"}),
        "gzip",
    )
    config = ib.canonical_json(
        {"apiVersion": "v2", "name": "mychart", "version": "0.1.0"}
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": ib.OCI_MANIFEST,
        "config": carry.descriptor(HELM_CONFIG, config),
        "layers": [carry.descriptor(HELM_CHART, chart)],
    }
    digest, _ = carry.push_artifact(
        registry, "charts/mychart", "0.1.0", manifest, [config, chart]
    )
    return digest


def wasm_artifact(registry: Registry) -> str:
    """An artifactType with the empty config descriptor, the OCI 1.1 way."""
    module = b"\x00asm\x01\x00\x00\x00"
    manifest = {
        "schemaVersion": 2,
        "mediaType": ib.OCI_MANIFEST,
        "artifactType": "application/vnd.wasm.content.layer.v1+wasm",
        "config": carry.descriptor(EMPTY_TYPE, b"{}"),
        "layers": [carry.descriptor("application/wasm", module)],
    }
    digest, _ = carry.push_artifact(
        registry, "wasm/hello", "1", manifest, [b"{}", module]
    )
    return digest


def without_media_type(registry: Registry) -> tuple[str, str]:
    """An image manifest and an index over it, neither with `mediaType`."""
    tar = ib.tar_bytes({"plain": b"uncompressed layer"})
    zstd = ib.layer({"z": b"zstd layer"}, compression="zstd", media_type_style="oci")
    img = ib.image([zstd], oci=True)
    manifest = {
        "schemaVersion": 2,
        "config": carry.descriptor(ib.OCI_CONFIG, img.config.data),
        "layers": [zstd.descriptor(), carry.descriptor(ib.OCI_LAYER, tar)],
    }
    child, raw = carry.push_artifact(
        registry, "odd/bare", None, manifest, [img.config.data, zstd.data, tar]
    )
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": ib.OCI_MANIFEST,
                "digest": child,
                "size": len(raw),
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }
    digest, _ = carry.push_artifact(
        registry, "odd/bare", "1", index, [], media_type=ib.OCI_INDEX
    )
    return digest, child


def test_artifacts_and_manifests_without_media_type_keep_every_digest(
    tmp_path: Path, registry_factory: RegistryFactory, cli: CliFunction
) -> None:
    upstream, target = registry_factory(), registry_factory()
    chart, wasm = helm_chart(upstream), wasm_artifact(upstream)
    bare_index, bare_child = without_media_type(upstream)
    image_list = carry.write_list(
        tmp_path,
        "registry-image: false\nimages:\n  - UP/charts/mychart:0.1.0\n"
        "  - UP/wasm/hello:1\n  - UP/odd/bare:1\n",
        UP=upstream,
    )
    bundle = carry.pack(cli, image_list)
    carry.unpack(cli, bundle, target)

    carry.assert_digests(
        target,
        {
            "charts/mychart:0.1.0": chart,
            "wasm/hello:1": wasm,
            "odd/bare:1": bare_index,
            f"odd/bare@{bare_child}": bare_child,
        },
    )
    # Classified by structure, pushed with the type the source served.
    served = target.get_manifest("odd/bare", "1").headers["Content-Type"]
    assert served == ib.OCI_INDEX
    served = target.get_manifest("odd/bare", bare_child).headers["Content-Type"]
    assert served == ib.OCI_MANIFEST


# -- foreign layers -----------------------------------------------------------


@dataclass
class Foreign:
    registry: Registry
    image: ib.Image
    layer: ib.Blob


@pytest.fixture
def layer_host(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain web server on loopback, where foreign layers are downloaded."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(root)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serve = functools.partial(server.serve_forever, poll_interval=0.05)
    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def foreign_image(registry: Registry, url: str, push_layer: bool) -> Foreign:
    base = ib.layer({"base": b"distributable"})
    layer = ib.foreign_layer(ib.layer(ib.random_files(50, 1, 4096)), [url])
    img = ib.image([base, layer])
    ib.push_image(registry, "win/app", "1", img)  # the foreign layer stays out
    if push_layer:
        ib.push_blob(registry, "win/app", layer.data)
    return Foreign(registry, img, layer)


def foreign_list(tmp_path: Path, foreign: Foreign) -> Path:
    return carry.write_list(
        tmp_path, "registry-image: false\nimages: [UP/win/app:1]\n", UP=foreign.registry
    )


def test_a_foreign_layer_is_fetched_from_its_url_and_pushed_where_urls_are_allowed(
    tmp_path: Path,
    registry_factory: RegistryFactory,
    layer_host: tuple[str, Path],
    cli: CliFunction,
) -> None:
    url, root = layer_host
    upstream = registry_factory(config_extra=ALLOW_URLS)
    target = registry_factory(config_extra=ALLOW_URLS)
    foreign = foreign_image(upstream, f"{url}/layer.tar.gz", push_layer=False)
    (root / "layer.tar.gz").write_bytes(foreign.layer.data)

    bundle = carry.pack(cli, foreign_list(tmp_path, foreign))
    carry.unpack(cli, bundle, target)

    carry.assert_digests(target, {"win/app:1": foreign.image.digest})
    assert target.get_blob("win/app", foreign.layer.digest) == foreign.layer.data


def test_a_foreign_layer_the_registry_holds_is_fetched_from_the_registry(
    tmp_path: Path, registry_factory: RegistryFactory, cli: CliFunction
) -> None:
    upstream = registry_factory(config_extra=ALLOW_URLS)
    target = registry_factory(config_extra=ALLOW_URLS)
    # Nothing listens at the URL: the registry's copy must be the one used.
    dead = f"http://127.0.0.1:{free_port()}/layer.tar.gz"
    foreign = foreign_image(upstream, dead, push_layer=True)

    bundle = carry.pack(cli, foreign_list(tmp_path, foreign))
    carry.unpack(cli, bundle, target)

    carry.assert_digests(target, {"win/app:1": foreign.image.digest})


def test_a_foreign_layer_found_nowhere_fails_the_pack_naming_it(
    tmp_path: Path, registry_factory: RegistryFactory, cli: CliFunction
) -> None:
    upstream = registry_factory(config_extra=ALLOW_URLS)
    dead = f"http://127.0.0.1:{free_port()}/layer.tar.gz"
    foreign = foreign_image(upstream, dead, push_layer=False)

    packed = cli(
        "pack", str(foreign_list(tmp_path, foreign)), "-o", str(tmp_path / "b")
    )

    assert packed.exit_code == 3, packed
    assert f"foreign layer {foreign.layer.digest}" in packed.stderr
    assert dead in packed.stderr


def test_a_target_that_refuses_urls_fails_the_unpack_naming_the_setting(
    tmp_path: Path, registry_factory: RegistryFactory, cli: CliFunction
) -> None:
    upstream = registry_factory(config_extra=ALLOW_URLS)
    target = registry_factory()  # distribution's default: URLs refused
    foreign = foreign_image(upstream, "http://127.0.0.1:1/x", push_layer=True)
    bundle = carry.pack(cli, foreign_list(tmp_path, foreign))

    unpacked = cli("unpack", str(bundle), "--registry", target.host)

    assert unpacked.exit_code == 3, unpacked
    assert "refuses layers with external URLs" in unpacked.stderr
    assert "validation.manifests.urls.allow" in unpacked.stderr
    assert carry.absent("win/app:1", target)
