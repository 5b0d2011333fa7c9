"""Schema 1 manifests: refused at pack time naming the image, or converted to
schema 2 with --convert-schema1. distribution 2.8 cannot store schema 1, so a
stub registry serves one: read-only, just the calls a pull makes."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import carry
import imagebuild as ib
import pytest
from servers import CliFunction, Registry

SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
_PATH = re.compile(r"^/v2/(.+)/(manifests|blobs)/([^/]+)$")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def signed(payload: bytes) -> bytes:
    """`payload` with a JWS signature block, laid out as docker's libtrust does:
    the protected header says how to cut the payload back out."""
    length = len(payload) - 2  # the payload ends with "\n}"
    protected = b64url(
        json.dumps({"formatLength": length, "formatTail": b64url(b"\n}")}).encode()
    )
    block = {"header": {"alg": "ES256"}, "signature": "c2ln", "protected": protected}
    return payload[:length] + (
        b',\n   "signatures": [\n      ' + json.dumps(block).encode() + b"\n   ]\n}"
    )


@dataclass
class Legacy:
    manifest: bytes  # as served, signatures and all
    digest: str  # of the payload, as registries name it
    layers: list[ib.Blob]  # oldest first
    blobs: dict[str, bytes]


def v1(
    id_: str, parent: str | None, day: int, command: str, **extra: object
) -> dict[str, object]:
    """One step's v1Compatibility, as docker 1.x wrote it."""
    step: dict[str, object] = {
        "id": id_,
        "created": f"2016-01-0{day}T00:00:00Z",
        "container_config": {"Cmd": ["/bin/sh", "-c", f"#(nop) {command}"]},
        **extra,
    }
    if parent:
        step["parent"] = parent
    return step


def legacy_image() -> Legacy:
    """Two layers and, between them, a throwaway step (an ENV, say)."""
    first = ib.layer({"bin/app": b"v1"})
    second = ib.layer({"etc/app.conf": b"debug=1"})
    empty = ib.layer({})
    steps = [
        (v1("a1", None, 1, "ADD app"), first),
        (v1("b2", "a1", 2, "ENV X=1", throwaway=True), empty),
        (v1("c3", "b2", 3, "ADD conf", os="linux", config={"Env": ["X=1"]}), second),
    ]
    body = {
        "schemaVersion": 1,
        "name": "legacy/app",
        "tag": "1",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": blob.digest} for _, blob in reversed(steps)],
        "history": [{"v1Compatibility": json.dumps(v1)} for v1, _ in reversed(steps)],
    }
    payload = json.dumps(body, indent=3).encode()
    blobs = {blob.digest: blob.data for _, blob in steps}
    return Legacy(signed(payload), ib.sha256_digest(payload), [first, second], blobs)


class _Handler(http.server.BaseHTTPRequestHandler):
    legacy: Legacy

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        body, content_type = self._find()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)

    def _find(self) -> tuple[bytes | None, str]:
        if self.path == "/v2/":
            return b"{}", "application/json"
        match = _PATH.match(self.path)
        if not match or match[1] != "legacy/app":
            return None, "application/json"
        if match[2] == "blobs":
            return self.legacy.blobs.get(match[3]), "application/octet-stream"
        # Any digest gets the one manifest: a stub that lies, to be caught.
        if match[3] == "1" or match[3].startswith("sha256:"):
            return self.legacy.manifest, SIGNED
        return None, "application/json"

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[tuple[str, Legacy]]:
    legacy = legacy_image()
    handler = type("Handler", (_Handler,), {"legacy": legacy})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serve = functools.partial(server.serve_forever, poll_interval=0.05)
    threading.Thread(target=serve, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", legacy
    server.shutdown()
    server.server_close()


def legacy_list(tmp_path: Path, host: str, *refs: str) -> Path:
    lines = "".join(f"  - '{host}/{ref}'\n" for ref in refs)
    return carry.write_list(tmp_path, f"registry-image: false\nimages:\n{lines}")


def test_a_schema1_image_is_refused_at_pack_naming_it(
    tmp_path: Path, stub: tuple[str, Legacy], cli: CliFunction
) -> None:
    host, _ = stub
    packed = cli(
        "pack",
        str(legacy_list(tmp_path, host, "legacy/app:1")),
        "-o",
        str(tmp_path / "b"),
    )

    assert packed.exit_code == 2, packed
    assert f"{host}/legacy/app:1 is a schema 1 manifest" in packed.stderr
    assert "--convert-schema1" in packed.stderr
    assert not (tmp_path / "b").exists()


def test_convert_schema1_lands_a_schema2_image_whose_config_names_every_layer(
    tmp_path: Path, stub: tuple[str, Legacy], registry: Registry, cli: CliFunction
) -> None:
    host, legacy = stub
    image_list = legacy_list(
        tmp_path, host, "legacy/app:1", f"legacy/app:pinned@{legacy.digest}"
    )
    bundle = carry.pack(cli, image_list, "--convert-schema1")
    carry.unpack(cli, bundle, registry)

    tagged, pinned = carry.listed(cli, bundle)
    assert tagged["sourceDigest"] == pinned["sourceDigest"] == legacy.digest
    assert tagged["digest"] == pinned["digest"] != legacy.digest
    carry.assert_digests(
        registry,
        {"legacy/app:1": tagged["digest"], "legacy/app:pinned": pinned["digest"]},
    )
    manifest = carry.raw_json("legacy/app:1", registry)
    assert manifest["mediaType"] == ib.DOCKER_MANIFEST
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer.digest for layer in legacy.layers
    ]
    config = json.loads(registry.get_blob("legacy/app", manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == [
        "sha256:" + hashlib.sha256(layer.tar or b"").hexdigest()
        for layer in legacy.layers
    ]
    assert [bool(h.get("empty_layer")) for h in config["history"]] == [
        False,
        True,
        False,
    ]
    assert (config["os"], config["architecture"], config["config"]) == (
        "linux",
        "amd64",
        {"Env": ["X=1"]},
    )
    assert "id" not in config and "parent" not in config


def test_a_schema1_manifest_not_of_the_pinned_digest_fails_the_pack(
    tmp_path: Path, stub: tuple[str, Legacy], cli: CliFunction
) -> None:
    host, legacy = stub
    wrong = "sha256:" + hashlib.sha256(legacy.manifest).hexdigest()  # signatures too
    image_list = legacy_list(tmp_path, host, f"legacy/app@{wrong}")

    packed = cli(
        "pack", str(image_list), "-o", str(tmp_path / "b"), "--convert-schema1"
    )

    assert packed.exit_code == 5, packed
    assert f"schema 1 manifest of digest {legacy.digest}" in packed.stderr
