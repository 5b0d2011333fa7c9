"""The HTTP transport: redaction, loopback rules, challenge parsing, the HTTP
fallback against real registries, and, through a stub server, the faults a real
registry cannot be made to produce (a 503, a connection cut mid-body)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import imagebuild as ib
import pytest
from servers import CliFunction, Registry, free_port

from airgap.errors import ExitCode, RegistryError, RegistryUnreachable
from airgap.transport import Challenge, Transport, is_loopback, merge_scopes, redact

# --- redact ------------------------------------------------------------------

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("https://bob:hunter2@reg.example/v2/", "https://***@reg.example/v2/"),
        (
            "https://s3.example/b?X-Amz-Expires=300&X-Amz-Signature=abc123",
            "https://s3.example/b?X-Amz-Expires=300&X-Amz-Signature=***",
        ),
        (
            "https://s3.example/b?X-Amz-Security-Token=FQoG%2Fz&x=1",
            "https://s3.example/b?X-Amz-Security-Token=***&x=1",
        ),
        (
            "https://blob.example/c?sv=2020&sig=ab%2Fcd",
            "https://blob.example/c?sv=2020&sig=***",
        ),
        (
            "https://g.example/o?X-Goog-Signature=0a1b",
            "https://g.example/o?X-Goog-Signature=***",
        ),
        (
            f"https://auth.example/token?scope=repository:a:pull&access_token={JWT}",
            "https://auth.example/token?scope=repository:a:pull&access_token=***",
        ),
        ("POST /token refresh_token=r3fr3sh", "POST /token refresh_token=***"),
        ("login password=hunter2 failed", "login password=*** failed"),
        (f"Authorization: Bearer {JWT}", "Authorization: Bearer ***"),
        ("Authorization: Basic Ym9iOmh1bnRlcjI=", "Authorization: Basic ***"),
        (
            'Bearer realm="https://auth.example/token",service="reg"',
            'Bearer realm="https://auth.example/token",service="reg"',
        ),
        (
            "GET https://reg.example/v2/team/app/manifests/1.0 answered 404",
            "GET https://reg.example/v2/team/app/manifests/1.0 answered 404",
        ),
    ],
)
def test_redact_hides_secrets_and_keeps_the_rest(text: str, shown: str) -> None:
    assert redact(text) == shown


# --- is_loopback -------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("LOCALHOST:5000", True),
        ("127.0.0.1", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10:443", True),
        ("[::1]", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("[::ffff:127.0.0.1]:5000", True),
        ("0.0.0.0:5000", False),
        ("10.0.0.1:5000", False),
        ("128.0.0.1", False),
        ("[::2]:5000", False),
        ("reg.example", False),
        ("localhost.example.com:5000", False),
        ("mylocalhost", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# --- Challenge ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        (  # Docker Hub, for a push
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:samalba/my-app:pull,push"',
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:samalba/my-app:pull,push",
            },
        ),
        (  # distribution, a token without the scope: two scopes and an error
            'Bearer realm="http://127.0.0.1:1/token",service="reg",'
            'scope="repository:a:pull,push repository:b:pull",'
            'error="insufficient_scope"',
            "bearer",
            {
                "realm": "http://127.0.0.1:1/token",
                "service": "reg",
                "scope": "repository:a:pull,push repository:b:pull",
                "error": "insufficient_scope",
            },
        ),
        (  # Harbor: no scope on /v2/
            'Bearer realm="https://harbor.example/service/token",'
            'service="harbor-registry"',
            "bearer",
            {
                "realm": "https://harbor.example/service/token",
                "service": "harbor-registry",
            },
        ),
        (  # ECR and htpasswd registries
            'Basic realm="https://123.dkr.ecr.us-east-1.amazonaws.com/",'
            'service="ecr.amazonaws.com"',
            "basic",
            {
                "realm": "https://123.dkr.ecr.us-east-1.amazonaws.com/",
                "service": "ecr.amazonaws.com",
            },
        ),
        (  # spaces after commas and around '=', an unquoted value, odd case
            'bearer Realm = "https://a.example/t" , service=reg, error=invalid_token',
            "bearer",
            {
                "realm": "https://a.example/t",
                "service": "reg",
                "error": "invalid_token",
            },
        ),
        (  # an escaped quote inside a quoted value
            r'Basic realm="the \"test\" realm"',
            "basic",
            {"realm": 'the "test" realm'},
        ),
        (  # two challenges joined in one header: Bearer is chosen, params kept apart
            'Basic realm="basic-realm", Bearer realm="https://t.example/token",'
            'service="svc"',
            "bearer",
            {"realm": "https://t.example/token", "service": "svc"},
        ),
        ("Basic", "basic", {}),
    ],
)
def test_challenge_parse_of_real_world_headers(
    header: str, scheme: str, params: dict[str, str]
) -> None:
    challenge = Challenge.parse(header)

    assert challenge is not None
    assert (challenge.scheme, challenge.params) == (scheme, params)


def test_challenge_parse_of_an_empty_header_is_none() -> None:
    assert Challenge.parse("") is None
    assert Challenge.parse("   ") is None


def test_challenge_scopes_split_on_spaces_only() -> None:
    challenge = Challenge.parse(
        'Bearer realm="r",scope="repository:a:pull,push repository:b:pull"'
    )

    assert challenge is not None
    assert challenge.scopes == ["repository:a:pull,push", "repository:b:pull"]


def test_merge_scopes_joins_actions_per_resource() -> None:
    merged = merge_scopes(
        ["repository:a:push,pull", "repository:a:pull", "repository:h:5000/b:pull"]
    )

    assert merged == ["repository:a:pull,push", "repository:h:5000/b:pull"]


# --- scheme: HTTPS, HTTP only where allowed ---------------------------------


def test_loopback_registry_falls_back_to_plain_http(registry: Registry) -> None:
    transport = Transport(registry.host)

    transport.ping()

    assert transport.scheme == "http"


def test_non_loopback_name_gets_no_plain_http_fallback(registry: Registry) -> None:
    # 0.0.0.0 reaches the 127.0.0.1 listener on Linux, yet is not loopback.
    host = "0.0.0.0:" + registry.host.rsplit(":", 1)[1]

    with pytest.raises(RegistryUnreachable) as failure:
        Transport(host).ping()

    assert failure.value.message.startswith(f"TLS to {host} failed")
    assert f"--insecure-registry {host}" in (failure.value.hint or "")


def test_insecure_registry_allows_plain_http_for_any_host(registry: Registry) -> None:
    host = "0.0.0.0:" + registry.host.rsplit(":", 1)[1]
    transport = Transport(host, insecure=True)

    transport.ping()

    assert transport.scheme == "http"


def test_tls_registry_with_an_unknown_ca_reports_the_tls_failure(
    secure_registry: Registry,
) -> None:
    with pytest.raises(RegistryUnreachable) as failure:
        Transport(secure_registry.host).ping()

    assert failure.value.message.startswith(f"TLS to {secure_registry.host} failed")
    assert "--ca-cert" in (failure.value.hint or "")


def test_tls_registry_with_its_ca_speaks_https(secure_registry: Registry) -> None:
    transport = Transport(secure_registry.host, ca_cert=str(secure_registry.ca_path))

    transport.ping()

    assert transport.scheme == "https"


def test_refused_connection_is_a_registry_error_not_an_os_error() -> None:
    host = f"127.0.0.1:{free_port()}"

    with pytest.raises(RegistryUnreachable) as failure:
        Transport(host).request("GET", "/v2/")

    assert failure.value.exit_code == ExitCode.REGISTRY
    assert "connection refused" in failure.value.message


# --- faults, from a stub -----------------------------------------------------

Action = Callable[[http.server.BaseHTTPRequestHandler], None]


@dataclass
class Stub:
    """A registry stand-in: per path, a queue of actions (the last repeats)."""

    port: int
    routes: dict[str, list[Action]] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def on(self, path: str, *actions: Action) -> None:
        self.routes[path] = list(actions)

    def act(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        self.seen.append((handler.command, path))
        queue = self.routes.get(path)
        if not queue:
            reply(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}')(handler)
            return
        (queue.pop(0) if len(queue) > 1 else queue[0])(handler)

    def count(self, method: str, path: str) -> int:
        return self.seen.count((method, path))


def reply(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> Action:
    def act(handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        handler.rfile.read(length)
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    return act


def cut_after(body: bytes, sent: int) -> Action:
    """Promise all of `body`, send `sent` bytes of it, then close."""

    def act(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        handler.wfile.write(body[:sent])
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(2)

    return act


@pytest.fixture
def stub() -> Iterator[Stub]:
    """A stub registry on a free loopback port; /v2/ answers 200."""
    holder: list[Stub] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            holder[0].act(self)

        do_HEAD = do_PUT = do_POST = do_PATCH = do_GET

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder.append(Stub(server.server_address[1]))
    holder[0].on("/v2/", reply(200, b"{}"))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()


def test_503_then_200_is_retried_for_a_get(stub: Stub) -> None:
    path = "/v2/team/app/manifests/1"
    stub.on(path, reply(503, headers={"Retry-After": "0"}), reply(200, b"{}"))

    response = Transport(stub.host).request("GET", path)

    assert response.status_code == 200
    assert stub.count("GET", path) == 2


def test_a_streamed_body_is_not_sent_again_after_a_503(stub: Stub) -> None:
    path = "/v2/team/app/blobs/uploads/1"
    stub.on(path, reply(503, headers={"Retry-After": "0"}), reply(201))

    class Body:
        def read(self, n: int = -1) -> bytes:
            return b""

    with pytest.raises(RegistryError, match="503"):
        Transport(stub.host).request("PUT", path, data=Body(), expect=(201,))

    assert stub.count("PUT", path) == 1


def test_connection_cut_mid_blob_is_a_registry_error(stub: Stub) -> None:
    path = "/v2/team/app/blobs/sha256:" + "a" * 64
    stub.on(path, cut_after(b"x" * 100_000, 1000))
    transport = Transport(stub.host)
    response = transport.request("GET", path, stream=True)

    with pytest.raises(RegistryUnreachable) as failure:
        b"".join(transport.chunks(response, 4096))

    assert failure.value.exit_code == ExitCode.REGISTRY
    assert "broke off in the middle of the body" in failure.value.message
    assert failure.value.message.startswith(f"reading http://{stub.host}{path}")


def _serve_image(stub: Stub, img: ib.Image) -> None:
    stub.on(
        "/v2/team/app/manifests/1",
        reply(200, img.manifest, {"Content-Type": img.media_type}),
    )
    stub.on(
        f"/v2/team/app/manifests/{img.digest}",
        reply(200, img.manifest, {"Content-Type": img.media_type}),
    )
    stub.on(f"/v2/team/app/blobs/{img.config.digest}", reply(200, img.config.data))


def test_pack_with_a_connection_cut_mid_layer_exits_3_without_traceback(
    stub: Stub, tmp_path: Path, cli: CliFunction
) -> None:
    layer = ib.layer(ib.random_files(3, 2, 64 * 1024), compression="none")
    img = ib.image([layer])
    _serve_image(stub, img)
    stub.on(f"/v2/team/app/blobs/{layer.digest}", cut_after(layer.data, 5000))
    images = tmp_path / "images.yaml"
    images.write_text(f"registry-image: false\nimages:\n  - {stub.host}/team/app:1\n")

    packed = cli("pack", str(images), "-o", str(tmp_path / "b.tar.zst"))

    assert packed.exit_code == 3, packed
    assert "Traceback" not in packed.stderr
    lines = [line for line in packed.stderr.splitlines() if line.startswith("airgap:")]
    assert "broke off in the middle of the body" in lines[-1], packed


def test_pack_from_a_stub_serving_the_whole_image_succeeds(
    stub: Stub, tmp_path: Path, cli: CliFunction
) -> None:
    # The stub is a faithful enough registry: without a fault, pack works.
    layer = ib.layer(ib.random_files(3, 2, 64 * 1024), compression="none")
    img = ib.image([layer])
    _serve_image(stub, img)
    stub.on(f"/v2/team/app/blobs/{layer.digest}", reply(200, layer.data))
    images = tmp_path / "images.yaml"
    images.write_text(f"registry-image: false\nimages:\n  - {stub.host}/team/app:1\n")

    packed = cli("pack", str(images), "-o", str(tmp_path / "b.tar.zst"))

    assert packed.exit_code == 0, packed
    assert img.digest in packed.stdout
    assert json.loads(img.manifest)["layers"][0]["digest"] == layer.digest
