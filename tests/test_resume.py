"""Resume: pack and unpack killed mid-way, then run again.

A forwarding proxy in front of a real registry holds one chosen request open,
so the kill always lands at the same step: after two blobs, during the third.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import imagebuild as ib
import pytest
import requests
from servers import Registry, skopeo_digest

AIRGAP = str(Path(sys.executable).with_name("airgap"))
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host"}


class GateProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to ``upstream``. Requests that ``gated`` picks
    pass ``allow`` times; the next one is held open (``holding`` is set) until
    ``open()``, then dropped. ``log`` records (method, path, status)."""

    daemon_threads = True

    def __init__(
        self, upstream: Registry, gated: Callable[[str, str], bool], allow: int
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.gated = gated
        self.allow = allow
        self.holding = threading.Event()
        self.opened = threading.Event()
        self.log: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        self.host = f"127.0.0.1:{self.server_address[1]}"

    def passes(self, method: str, path: str) -> bool:
        if self.opened.is_set() or not self.gated(method, path):
            return True
        with self.lock:
            self.allow -= 1
            if self.allow >= 0:
                return True
        self.holding.set()
        self.opened.wait(60)
        return False

    def open(self) -> None:
        self.opened.set()


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: GateProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _forward(self) -> None:
        if not self.server.passes(self.command, self.path):
            self.close_connection = True  # held, then dropped: never answered
            return
        response = self._ask_upstream()
        content = response.raw.read(decode_content=False)
        self.server.log.append((self.command, self.path, response.status_code))
        self.send_response(response.status_code)
        for key, value in response.headers.items():
            if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                self.send_header(key, value)
        length = response.headers.get("Content-Length", "0")
        self.send_header("Content-Length", length if not content else str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def _ask_upstream(self) -> requests.Response:
        length = int(self.headers.get("Content-Length") or 0)
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
        }
        headers["Host"] = self.server.host  # so Location headers name the proxy
        upstream = self.server.upstream
        return requests.request(
            self.command,
            upstream.url + self.path,
            headers=headers,
            data=self.rfile.read(length) if length else None,
            allow_redirects=False,
            stream=True,
            verify=str(upstream.ca_path) if upstream.ca_path else True,
            timeout=30,
        )

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., GateProxy]]:
    started: list[GateProxy] = []

    def start(upstream: Registry, gated: Callable[[str, str], bool], allow: int):
        proxy = GateProxy(upstream, gated, allow)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.open()
        proxy.shutdown()
        proxy.server_close()


def push_app(registry: Registry) -> tuple[str, ib.Image]:
    """An image of four incompressible 128 KiB layers."""
    layers = [ib.layer(ib.random_files(50 + i, 2, 64 * 1024)) for i in range(4)]
    img = ib.image(layers, cmd=["/app"])
    return ib.push_image(registry, "team/app", "1.0", img), img


def write_list(tmp_path: Path, host: str) -> Path:
    path = tmp_path / "images.yaml"
    path.write_text(f"registry-image: false\nimages:\n  - {host}/team/app:1.0\n")
    return path


def run_until_held(proxy: GateProxy, args: list[str], log: Path) -> None:
    """Runs airgap as its own process and SIGKILLs it while the proxy holds."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [AIRGAP, *args], stdout=out, stderr=subprocess.STDOUT, env=os.environ
        )
    try:
        held = proxy.holding.wait(60)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert held, log.read_text()


def cached(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "sha256").iterdir() if len(p.name) == 64)


def test_pack_killed_mid_way_fetches_only_what_it_lacks_when_run_again(
    tmp_path: Path, registry, proxy_factory, cli
) -> None:
    digest, img = push_app(registry)
    layer_paths = {f"/blobs/{b.digest}" for b in img.layers}

    def layer_get(method: str, path: str) -> bool:
        return method == "GET" and any(path.endswith(p) for p in layer_paths)

    proxy = proxy_factory(registry, layer_get, allow=2)
    image_list = write_list(tmp_path, proxy.host)
    cache, bundle = tmp_path / "cache", tmp_path / "b.tar.zst"
    args = ["pack", str(image_list), "-o", str(bundle), "--cache-dir", str(cache)]

    run_until_held(proxy, args, tmp_path / "first.log")

    assert cached(cache) == sorted(b.digest[7:] for b in img.layers[:2])
    assert not bundle.exists()
    assert list(tmp_path.glob(".b.tar.zst.partial-*"))
    proxy.open()
    fetched_before = sum(1 for m, p, _ in proxy.log if layer_get(m, p))
    again = cli(*args, "--json")
    assert again.exit_code == 0, again
    assert json.loads(again.stdout)["cacheHits"] == 2
    fetched = sum(1 for m, p, _ in proxy.log if layer_get(m, p)) - fetched_before
    assert fetched == 2
    assert len(cached(cache)) == 4
    assert list(tmp_path.glob(".b.tar.zst.partial-*")) == []
    assert list((cache / "sha256").glob(".*")) == []
    verified = cli("verify", str(bundle))
    assert verified.exit_code == 0, verified


def test_cache_prune_empties_the_cache(tmp_path: Path, registry, cli) -> None:
    push_app(registry)
    image_list = write_list(tmp_path, registry.host)
    cache = tmp_path / "cache"
    bundle = str(tmp_path / "b.tar.zst")
    packed = cli("pack", str(image_list), "-o", bundle, "--cache-dir", str(cache))
    assert packed.exit_code == 0, packed
    (cache / "sha256" / "unrelated.txt").write_text("not ours")

    pruned = cli("cache", "prune", "--cache-dir", str(cache), "--json")

    assert pruned.exit_code == 0, pruned
    assert json.loads(pruned.stdout)["removed"] == 4
    assert cached(cache) == []
    assert (cache / "sha256" / "unrelated.txt").exists()
    again = cli(
        "pack", str(image_list), "-o", bundle, "--cache-dir", str(cache), "--json"
    )
    assert json.loads(again.stdout)["cacheHits"] == 0


def test_a_corrupt_cached_blob_is_removed_not_packed(
    tmp_path: Path, registry, cli, isolated_home
) -> None:
    _, img = push_app(registry)
    image_list = write_list(tmp_path, registry.host)
    bundle = str(tmp_path / "b.tar.zst")
    assert cli("pack", str(image_list), "-o", bundle).exit_code == 0
    blob = isolated_home.cache / "airgap/blobs/sha256" / img.layers[0].digest[7:]
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))

    broken = cli("pack", str(image_list), "-o", bundle)

    assert broken.exit_code == 5, broken
    assert not blob.exists()
    assert cli("pack", str(image_list), "-o", bundle).exit_code == 0
    assert cli("verify", bundle).exit_code == 0


def test_unpack_killed_mid_way_uploads_nothing_twice_when_run_again(
    tmp_path: Path, registry_factory, proxy_factory, cli
) -> None:
    upstream, target = registry_factory(), registry_factory()
    digest, img = push_app(upstream)
    bundle = str(tmp_path / "b.tar.zst")
    packed = cli("pack", str(write_list(tmp_path, upstream.host)), "-o", bundle)
    assert packed.exit_code == 0, packed

    def upload_end(method: str, path: str) -> bool:
        return method == "PUT" and "digest=" in path

    proxy = proxy_factory(target, upload_end, allow=2)

    run_until_held(
        proxy, ["unpack", bundle, "--registry", proxy.host], tmp_path / "u.log"
    )

    proxy.open()
    again = cli("unpack", bundle, "--registry", proxy.host, "--json")
    assert again.exit_code == 0, again
    done = [
        p.split("digest=")[1] for m, p, s in proxy.log if upload_end(m, p) and s == 201
    ]
    assert sorted(done) == sorted(b.digest.replace(":", "%3A") for b in img.blobs)
    first_two = img.config.size + img.layers[0].size
    total = sum(b.size for b in img.blobs)
    assert json.loads(again.stdout)["uploadedBytes"] == total - first_two
    assert skopeo_digest("team/app:1.0", target) == digest
