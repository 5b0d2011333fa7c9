"""A token service for distribution's `auth: token:` mode, as Docker Hub, GHCR and
Harbor run one.

The registry sends clients to `realm`; this service checks their Basic
credentials (or an OAuth2 refresh token), grants what its policy allows for the
scopes asked, and signs a JWT the registry verifies against `cert_path`, its
`rootcertbundle`. distribution 2.8 finds the signing key from the JWT header:
an `x5c` chain that verifies up to the bundle, or a `kid` equal to the libtrust
key ID of a key in the bundle; both are offered here (`key_hint`).

Every request is recorded (who asked, which scopes, what was granted) so tests
can count token fetches. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import fnmatch
import hashlib
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from servers import Registry, RegistryFactory

SERVICE = "airgap-test-registry"
ISSUER = "airgap-test-token-issuer"
ALICE = "alice"
REFRESH_TOKEN = "refresh-" + secrets.token_hex(8)  # alice's identity token
KeyHint = Literal["x5c", "kid"]


@dataclass(frozen=True)
class Grant:
    """`account` (None: anonymous) may do `actions` on repositories matching
    `pattern` (fnmatch, so `team/*` covers `team/a/b` too)."""

    account: str | None
    pattern: str
    actions: tuple[str, ...]


@dataclass(frozen=True)
class TokenRequest:
    """One call to the realm, as the service saw it."""

    method: str
    grant_type: str  # "basic" (GET), "anonymous" (GET), "password", "refresh_token"
    account: str | None
    scopes: tuple[str, ...]
    service: str | None
    status: int
    granted: tuple[str, ...] = ()

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(self.scopes)


@dataclass
class TokenServer:
    """The running service; `registry_config()` is the registry's `auth:`."""

    realm: str
    cert_path: Path
    users: dict[str, str] = field(repr=False)
    grants: list[Grant]
    refresh_tokens: dict[str, str] = field(repr=False)  # token -> account
    key: rsa.RSAPrivateKey = field(repr=False)
    cert: x509.Certificate = field(repr=False)
    key_hint: KeyHint = "x5c"
    expires_in: int = 300
    requests: list[TokenRequest] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def registry_config(self) -> dict[str, Any]:
        token = {
            "realm": self.realm,
            "service": SERVICE,
            "issuer": ISSUER,
            "rootcertbundle": str(self.cert_path),
        }
        return {"auth": {"token": token}}

    def fetches(self, scopes: Iterable[str] | None = None) -> list[TokenRequest]:
        """The successful token requests, or those asking exactly `scopes`."""
        with self._lock:
            done = [r for r in self.requests if r.status == 200]
        if scopes is None:
            return done
        wanted = frozenset(scopes)
        return [r for r in done if r.scope_set == wanted]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def mint(self, account: str | None, access: list[dict[str, Any]]) -> str:
        """A signed JWT for `account` with exactly `access`."""
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": account or "",
            "aud": SERVICE,
            "exp": now + self.expires_in,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        header: dict[str, Any] = {"typ": "JWT", "alg": "RS256"}
        if self.key_hint == "x5c":
            der = self.cert.public_bytes(serialization.Encoding.DER)
            header["x5c"] = [base64.b64encode(der).decode()]
        else:
            header["kid"] = libtrust_key_id(self.cert)
        signing_input = f"{_b64json(header)}.{_b64json(claims)}".encode()
        signature = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input.decode()}.{_b64url(signature)}"

    def grant(self, account: str | None, scopes: Iterable[str]) -> list[dict[str, Any]]:
        """The `access` claim for `scopes`: per resource, the actions asked that
        the policy allows `account`; resources with none are left out."""
        access = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            kind, name, asked = parsed
            allowed = [a for a in asked if self._allows(account, kind, name, a)]
            if allowed:
                access.append({"type": kind, "name": name, "actions": allowed})
        return access

    def _allows(self, account: str | None, kind: str, name: str, action: str) -> bool:
        if kind != "repository":
            return False
        return any(
            g.account in (None, account)
            and fnmatch.fnmatchcase(name, g.pattern)
            and (action in g.actions or "*" in g.actions)
            for g in self.grants
        )

    def record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """`repository:team/app:pull,push` -> ("repository", "team/app", [...]).

    The name sits between the first and the last colon, so a name with a port
    (`host:5000/x`) survives; a resource class (`repository(plugin)`) is dropped.
    """
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not name:
        return None
    return kind.split("(", 1)[0], name, [a for a in actions.split(",") if a]


def libtrust_key_id(cert: x509.Certificate) -> str:
    """distribution's `kid` for a key: SHA-256 of its DER SubjectPublicKeyInfo,
    cut to 240 bits, base32 in twelve groups of four joined by colons."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def start_token_server(
    base_dir: Path,
    *,
    users: Mapping[str, str],
    grants: Iterable[Grant],
    refresh_tokens: Mapping[str, str] | None = None,
    key_hint: KeyHint = "x5c",
    expires_in: int = 300,
) -> TokenServer:
    """Generate the signing key and certificate under `base_dir` and serve."""
    base_dir.mkdir(parents=True, exist_ok=True)
    key, cert = _signing_identity()
    cert_path = base_dir / "token-signer.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    service = TokenServer(
        realm="",
        cert_path=cert_path,
        users=dict(users),
        grants=list(grants),
        refresh_tokens=dict(refresh_tokens or {}),
        key=key,
        cert=cert,
        key_hint=key_hint,
        expires_in=expires_in,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(service))
    server.daemon_threads = True
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    service._server = server
    service.realm = f"http://127.0.0.1:{server.server_address[1]}/token"
    return service


def _signing_identity() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    # Self-signed, so the certificate is its own chain's root in the bundle.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airgap test tokens")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64json(value: object) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


# --- a registry behind the service -------------------------------------------


@dataclass
class TokenRegistry:
    """A registry in `auth: token:` mode, its token service, and an open
    registry on the same storage: the back door seeds and checks, so no check
    leans on the client under test."""

    registry: Registry  # token-protected
    backdoor: Registry  # open, same storage
    tokens: TokenServer
    password: str = field(repr=False)  # alice's

    @property
    def host(self) -> str:
        return self.registry.host


def start_token_registry(
    registry_factory: RegistryFactory, base_dir: Path, key_hint: KeyHint = "x5c"
) -> TokenRegistry:
    """alice (password random, identity token REFRESH_TOKEN) may pull and push
    team/*; anyone may pull public/*; nothing else is granted."""
    backdoor = registry_factory()
    password = secrets.token_urlsafe(12)
    tokens = start_token_server(
        base_dir,
        users={ALICE: password},
        grants=[
            Grant(ALICE, "team/*", ("pull", "push")),
            Grant(None, "public/*", ("pull",)),
        ],
        refresh_tokens={REFRESH_TOKEN: ALICE},
        key_hint=key_hint,
    )
    storage = {"filesystem": {"rootdirectory": str(backdoor.data_dir)}}
    registry = registry_factory(
        config_extra={**tokens.registry_config(), "storage": storage}
    )
    return TokenRegistry(registry, backdoor, tokens, password)


# --- HTTP --------------------------------------------------------------------


def _handler_for(service: TokenServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(_TokenHandler):
        token_service = service

    return Handler


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    token_service: TokenServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the record in TokenServer.requests is the log

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path != "/token":
            self._reply(404, {"details": "not found"})
            return
        scopes = tuple(s for value in query.get("scope", []) for s in value.split(" "))
        service = query["service"][0] if query.get("service") else None
        basic = self._basic()
        if basic is None:
            self._issue("GET", "anonymous", None, scopes, service)
            return
        user, password = basic
        if self.token_service.users.get(user) != password:
            self._refuse("GET", "basic", user, scopes, service)
            return
        self._issue("GET", "basic", user, scopes, service)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        first = {key: values[0] for key, values in form.items()}
        scopes = tuple(first.get("scope", "").split())
        service, grant_type = first.get("service"), first.get("grant_type", "")
        account = self._post_account(grant_type, first)
        if account is None:
            self._refuse("POST", grant_type, first.get("username"), scopes, service)
            return
        self._issue("POST", grant_type, account, scopes, service)

    def _post_account(self, grant_type: str, form: dict[str, str]) -> str | None:
        users = self.token_service.users
        if grant_type == "refresh_token":
            return self.token_service.refresh_tokens.get(form.get("refresh_token", ""))
        if grant_type == "password":
            user = form.get("username", "")
            return user if user and users.get(user) == form.get("password") else None
        return None

    def _basic(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return ("", "")
        return user, password

    def _issue(
        self,
        method: str,
        grant_type: str,
        account: str | None,
        scopes: tuple[str, ...],
        service: str | None,
    ) -> None:
        access = self.token_service.grant(account, scopes)
        token = self.token_service.mint(account, access)
        granted = tuple(
            f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access
        )
        self.token_service.record(
            TokenRequest(method, grant_type, account, scopes, service, 200, granted)
        )
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": self.token_service.expires_in,
            "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        self._reply(200, body)

    def _refuse(
        self,
        method: str,
        grant_type: str,
        account: str | None,
        scopes: tuple[str, ...],
        service: str | None,
    ) -> None:
        self.token_service.record(
            TokenRequest(method, grant_type, account, scopes, service, 401)
        )
        self._reply(401, {"details": "incorrect username or password"})

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="airgap test tokens"')
        self.end_headers()
        self.wfile.write(data)
