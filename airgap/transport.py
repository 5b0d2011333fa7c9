"""HTTP to one registry host: TLS choices, authentication and retries.

Authentication follows the distribution spec: a request without credentials
draws a 401 whose ``WWW-Authenticate`` names the scheme. For ``Basic`` the
credentials go on every request; for ``Bearer`` a token is fetched from the
realm for exactly the scopes the request needs, cached per scope set until it
expires, and fetched before the request once the scheme is known, so a body is
sent once. A token refused (``insufficient_scope``, ``invalid_token``) is
fetched once more, for the scopes the request named plus those the challenge
names.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import logging
import re
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import requests
import requests.adapters

from airgap.credentials import Credentials
from airgap.errors import AuthFailed, RegistryError, RegistryUnreachable, UsageError

log = logging.getLogger(__name__)
# every request, apart from the rest: -v shows what airgap decides, -vv adds HTTP
http_log = logging.getLogger("airgap.http")

USER_AGENT = "airgap"
CERTS_D = Path("/etc/docker/certs.d")
_RETRY_STATUS = {429, 500, 502, 503, 504}
_ATTEMPTS = 4
_TIMEOUT = (15, 300)
# The token spec: expires_in defaults to 60 s and no token lives less.
_TOKEN_LIFETIME = 60
_TOKEN_MARGIN = 10
_CHALLENGE_ITEM = re.compile(
    r"\s*,?\s*([!#$%&\'*+.^_`|~\w-]+)"
    r'(?:\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*)))?'
)
_SECRET_QUERY = re.compile(
    r"((?:token|access_token|refresh_token|password|secret|X-Amz-Signature|sig|"
    r"Signature|X-Goog-Signature)=)[^&\s\"']+",
    re.IGNORECASE,
)
# A credential after its scheme, but not a challenge's ``realm="..."``.
_CREDENTIAL_HEADER = re.compile(
    r"\b(Bearer|Basic)\s+[\w.~+/-]+=*(?![=\"\w])", re.IGNORECASE
)
_USERINFO = re.compile(r"(://)[^/@\s]+@")


def redact(text: str) -> str:
    """What may reach a log or an error: no passwords, tokens or signatures."""
    text = _USERINFO.sub(r"\1***@", text)
    text = _CREDENTIAL_HEADER.sub(r"\1 ***", text)
    return _SECRET_QUERY.sub(r"\1***", text)


def check_ca_bundle(path: str) -> str:
    """``path`` when it holds PEM certificates. Checked as the options are
    read: requests would only fail at the first TLS handshake, and obscurely."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise UsageError(
            f"--ca-cert {path} holds no PEM certificate",
            "pass CA certificates in PEM form (-----BEGIN CERTIFICATE-----); "
            "from DER: openssl x509 -inform der -in CA.der -out CA.pem",
        ) from exc
    except OSError as exc:
        raise UsageError(f"--ca-cert {path}: {exc.strerror or exc}") from exc
    return path


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``::1``, with or without a port."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


class Challenge:
    """One scheme of a ``WWW-Authenticate`` header and its parameters."""

    def __init__(self, scheme: str, params: dict[str, str]) -> None:
        self.scheme = scheme.lower()
        self.params = params

    @property
    def scopes(self) -> list[str]:
        return self.params.get("scope", "").split()

    @property
    def error(self) -> str:
        return self.params.get("error", "")

    @classmethod
    def parse(cls, header: str) -> Challenge | None:
        """The challenge to answer: Bearer before Basic before any other."""
        found = cls.parse_all(header)
        rank = {"bearer": 0, "basic": 1}
        return min(found, key=lambda c: rank.get(c.scheme, 2)) if found else None

    @classmethod
    def parse_all(cls, header: str) -> list[Challenge]:
        """Every challenge in a header, which may join several with commas: a
        name with ``=`` is a parameter, a name without one starts a scheme."""
        challenges: list[Challenge] = []
        for match in _CHALLENGE_ITEM.finditer(header):
            name, quoted, bare = match.groups()
            if quoted is None and bare is None:
                challenges.append(cls(name, {}))
            elif challenges:
                value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
                challenges[-1].params[name.lower()] = value
        return challenges


@dataclasses.dataclass(frozen=True)
class _Token:
    value: str
    expires: float  # on the monotonic clock


class _LargeBlocks(requests.adapters.HTTPAdapter):
    """Upload bodies are sent in 1 MiB reads rather than urllib3's 16 KiB: a
    blob streams through hashing and decompression on every read."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = 1 << 20
        super().init_poolmanager(*args, **kwargs)


class Transport:
    """Requests to one registry, with its scheme, trust and authentication."""

    def __init__(
        self,
        host: str,
        credentials: Credentials | None = None,
        insecure: bool = False,
        ca_cert: str | None = None,
    ) -> None:
        self.host = host
        self.credentials = credentials
        self.insecure = insecure
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        for prefix in ("https://", "http://"):
            self.session.mount(prefix, _LargeBlocks())
        self._verify: bool | str = ca_cert or _certs_d(host, "ca.crt") or True
        self._client_cert = _client_cert(host)
        self._scheme: str | None = None
        self._challenge: Challenge | None = None
        self._tokens: dict[frozenset[str], _Token] = {}
        self._lock = threading.Lock()

    # -- the request loop -------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        scopes: Iterable[str] = (),
        retry: bool = True,
        expect: Iterable[int] = (200,),
        **kwargs: Any,
    ) -> requests.Response:
        """One registry call. Raises for any status outside ``expect``."""
        try:
            response = self._exchange(method, path, frozenset(scopes), retry, kwargs)
        except requests.exceptions.RequestException as exc:
            raise self._broken(exc, f"{method} {self._shown(path)}") from exc
        if response.status_code not in set(expect):
            raise self._error(response, method, path)
        return response

    def chunks(self, response: requests.Response, size: int) -> Iterator[bytes]:
        """A streamed body, with a connection lost mid-way as a RegistryError."""
        try:
            yield from response.iter_content(size)
        except requests.exceptions.RequestException as exc:
            raise self._broken(exc, f"reading {redact(response.url)}") from exc

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"

    @property
    def scheme(self) -> str:
        if self._scheme is None:
            self.ping()
        assert self._scheme is not None
        return self._scheme

    def ping(self) -> None:
        """Find the scheme (HTTPS, else HTTP where allowed) and the challenge."""
        schemes = ["https", "http"] if self._http_allowed() else ["https"]
        failures: list[Exception] = []
        for scheme in schemes:
            try:
                response = self._raw(
                    "GET", f"{scheme}://{self.host}/v2/", retry_connect=True
                )
            except requests.exceptions.RequestException as exc:
                failures.append(exc)
                continue
            if scheme == "http" and response.status_code == 400 and failures:
                # A TLS port answering plain HTTP: the TLS failure is the news.
                break
            self._scheme = scheme
            if response.status_code == 401:
                self._challenge = Challenge.parse(
                    response.headers.get("WWW-Authenticate", "")
                )
            elif response.status_code not in (200, 404):
                raise self._error(response, "GET", "/v2/")
            log.debug("registry %s speaks %s", self.host, scheme)
            return
        tls = [e for e in failures if isinstance(e, requests.exceptions.SSLError)]
        raise _unreachable(self.host, (tls or failures or [None])[0])

    # -- internals ----------------------------------------------------------

    def _exchange(
        self,
        method: str,
        path: str,
        scopes: frozenset[str],
        retry: bool,
        kwargs: dict[str, Any],
    ) -> requests.Response:
        # A stream can be read once: after any answer it is spent.
        replayable = _replayable(kwargs)
        attempts = _ATTEMPTS if retry and replayable else 1
        refreshed = False
        for attempt in range(1, attempts + 1):
            response = self._send(method, path, scopes, **kwargs)
            if response.status_code == 401 and not refreshed:
                refreshed = True
                self._on_unauthorized(response, scopes)
                if not replayable:
                    raise self._refused(response, method, path)
                response = self._send(method, path, scopes, **kwargs)
            if response.status_code == 401:
                raise self._refused(response, method, path)
            if response.status_code in _RETRY_STATUS and attempt < attempts:
                self._pause(response, attempt)
                continue
            break
        return response

    def _send(
        self, method: str, path: str, scopes: frozenset[str], **kwargs: Any
    ) -> requests.Response:
        # The URL first: building it pings, and the ping learns the scheme.
        url = path if path.startswith(("http://", "https://")) else self.url(path)
        headers = dict(kwargs.pop("headers", None) or {})
        auth = self._authorization(scopes)
        if auth:
            headers["Authorization"] = auth
        return self._raw(method, url, headers=headers, **kwargs)

    def _raw(
        self, method: str, url: str, retry_connect: bool = False, **kwargs: Any
    ) -> requests.Response:
        kwargs.setdefault("timeout", _TIMEOUT)
        # requests lets REQUESTS_CA_BUNDLE override a session's verify, so every
        # call names its own (psf/requests#3829).
        kwargs["verify"] = False if self.insecure else self._verify
        if self._client_cert:
            kwargs["cert"] = self._client_cert
        idempotent = retry_connect or method in ("GET", "HEAD")
        tries = _ATTEMPTS if idempotent and _replayable(kwargs) else 1
        for attempt in range(1, tries + 1):
            try:
                http_log.debug("%s %s", method, redact(url))
                return self.session.request(method, url, **kwargs)
            except requests.exceptions.SSLError:
                raise
            except (
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout,
            ) as exc:
                # A refused connection on loopback will not heal in a second.
                if attempt == tries or (_refusal_in(exc) and _on_loopback(url)):
                    raise
                time.sleep(min(2**attempt * 0.25, 4))
        raise AssertionError("unreachable")

    def _authorization(self, scopes: frozenset[str]) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return _basic(self.credentials) if self.credentials else None
        if challenge.scheme != "bearer":
            return None
        token = self._cached(scopes)
        if token is None and scopes:
            # Known to be Bearer: fetch first, rather than spend the body on a 401.
            fetched = self._fetch_token(challenge, merge_scopes(scopes))
            token = self._store(scopes, fetched)
        return f"Bearer {token}" if token else None

    def _cached(self, scopes: frozenset[str]) -> str | None:
        with self._lock:
            token = self._tokens.get(scopes)
        if token is None or token.expires <= _clock():
            return None
        return token.value

    def _store(self, scopes: frozenset[str], token: _Token) -> str:
        with self._lock:
            self._tokens[scopes] = token
        return token.value

    def _on_unauthorized(
        self, response: requests.Response, scopes: frozenset[str]
    ) -> None:
        challenge = Challenge.parse(response.headers.get("WWW-Authenticate", ""))
        if challenge is None:
            raise AuthFailed(
                f"{self.host} refused the request without saying how to authenticate"
            )
        self._challenge = challenge
        if challenge.scheme == "basic":
            if not self.credentials:
                raise _need_login(self.host)
            return
        if challenge.scheme != "bearer":
            raise AuthFailed(
                f"{self.host} asks for unsupported auth {challenge.scheme!r}"
            )
        wanted = merge_scopes([*scopes, *challenge.scopes])
        self._store(scopes, self._fetch_token(challenge, wanted))

    def _fetch_token(self, challenge: Challenge, scopes: list[str]) -> _Token:
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthFailed(f"{self.host} sent a Bearer challenge without a realm")
        service = challenge.params.get("service")
        creds = self.credentials
        http_log.debug("fetching a token from %s for %s", redact(realm), scopes or "-")
        try:
            fetched = _clock()
            response = self._token_response(realm, service, scopes, creds)
        except requests.exceptions.RequestException as exc:
            raise self._broken(exc, f"token service {redact(realm)}") from exc
        if response.status_code in (401, 403):
            raise _bad_login(self.host, creds) if creds else _need_login(self.host)
        if response.status_code != 200:
            raise error_for(response, f"GET {redact(realm)}", self.host)
        return _parse_token(response, self.host, fetched)

    def _token_response(
        self,
        realm: str,
        service: str | None,
        scopes: list[str],
        creds: Credentials | None,
    ) -> requests.Response:
        if creds and creds.identity_token:
            return self._oauth_refresh(realm, service, scopes, creds.identity_token)
        params: list[tuple[str, str]] = [("scope", s) for s in scopes]
        if service:
            params.append(("service", service))
        auth = (creds.username or "", creds.password or "") if creds else None
        return self._raw("GET", realm, params=params, auth=auth)

    def _oauth_refresh(
        self, realm: str, service: str | None, scopes: list[str], refresh: str
    ) -> requests.Response:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "client_id": USER_AGENT,
            "scope": " ".join(scopes),
        }
        if service:
            form["service"] = service
        return self._raw("POST", realm, data=form)

    def _refused(
        self, response: requests.Response, method: str, path: str
    ) -> AuthFailed:
        """A 401 that a fresh token or the credentials did not cure."""
        challenge = Challenge.parse(response.headers.get("WWW-Authenticate", ""))
        if not self.credentials:
            return _need_login(self.host)
        if challenge and challenge.error == "invalid_token":
            return AuthFailed(
                f"{self.host} refused a fresh token from its own token service",
                "the token expired in flight, or the registry does not trust "
                "its token service; run the command again",
            )
        if challenge and challenge.scheme == "bearer":
            scopes = merge_scopes(challenge.scopes)
            wanted = " ".join(scopes) or f"{method} {self._shown(path)}"
            return AuthFailed(
                f"{self.host} refused {_account(self.credentials)} access to "
                f"{wanted} ({challenge.error or 'unauthorized'})",
                "the account lacks permission for this: ask the registry's "
                "administrator, or use an account that has it",
            )
        return _bad_login(self.host, self.credentials)

    def _broken(self, exc: Exception, what: str) -> RegistryError:
        if isinstance(exc, requests.exceptions.SSLError):
            return _unreachable(self.host, exc)
        return RegistryUnreachable(
            f"{what}: {_describe(exc)}",
            "check the network and the registry, then run the command again",
        )

    def _shown(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return redact(path)
        return redact(f"{self._scheme or 'https'}://{self.host}{path}")

    def _http_allowed(self) -> bool:
        return self.insecure or is_loopback(self.host)

    def _pause(self, response: requests.Response, attempt: int) -> None:
        delay = min(2**attempt * 0.5, 10.0)
        retry_after = response.headers.get("Retry-After", "")
        if retry_after.isdigit():
            delay = min(float(retry_after), 30.0)
        log.info(
            "%s answered %s; trying again in %.1fs",
            self.host,
            response.status_code,
            delay,
        )
        response.close()
        time.sleep(delay)

    def _error(self, response: requests.Response, method: str, path: str) -> Exception:
        return error_for(response, f"{method} {self._shown(path)}", self.host)


def merge_scopes(scopes: Iterable[str]) -> list[str]:
    """One scope per resource with every action asked, in a stable order:
    ``repository:a:push,pull`` and ``repository:a:pull`` give
    ``repository:a:pull,push``. The name sits between the first and the last
    colon, so it may hold a port."""
    actions: dict[str, set[str]] = {}
    for scope in scopes:
        resource, sep, wanted = scope.rpartition(":")
        if not sep or ":" not in resource:
            actions.setdefault(scope, set())  # not type:name:actions; kept as is
            continue
        actions.setdefault(resource, set()).update(a for a in wanted.split(",") if a)
    return sorted(
        f"{resource}:{','.join(sorted(acts))}" if acts else resource
        for resource, acts in actions.items()
    )


def error_for(response: requests.Response, what: str, host: str) -> Exception:
    """The airgap error for a registry's refusal, with its error codes."""
    codes, detail = _registry_errors(response)
    status = response.status_code
    message = f"{what} answered {status}" + (f": {detail}" if detail else "")
    if status == 401:
        return AuthFailed(message, "check the username and password for " + host)
    if status == 403 or "DENIED" in codes:
        return AuthFailed(message, f"the account lacks permission on {host}")
    return RegistryError(message)


def registry_error_codes(response: requests.Response) -> set[str]:
    return _registry_errors(response)[0]


def _registry_errors(response: requests.Response) -> tuple[set[str], str]:
    try:
        body = response.json()
    except ValueError:
        return set(), response.reason or ""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return set(), response.reason or ""
    codes = {str(e.get("code", "")) for e in errors if isinstance(e, dict)}
    detail = "; ".join(
        f"{e.get('code', '')}: {e.get('message', '')}"
        for e in errors
        if isinstance(e, dict)
    )
    return codes, redact(detail)


def _parse_token(response: requests.Response, host: str, fetched: float) -> _Token:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise AuthFailed(f"the token service of {host} answered something not JSON")
    token = body.get("token") or body.get("access_token")
    if not token:
        raise AuthFailed(f"the token service of {host} returned no token")
    lifetime = body.get("expires_in")
    if not isinstance(lifetime, int) or lifetime < _TOKEN_LIFETIME:
        lifetime = _TOKEN_LIFETIME
    return _Token(str(token), fetched + lifetime - _TOKEN_MARGIN)


def _replayable(kwargs: dict[str, Any]) -> bool:
    data = kwargs.get("data")
    return "files" not in kwargs and (
        data is None or isinstance(data, (bytes, str, dict, list, tuple))
    )


def _basic(creds: Credentials) -> str:
    raw = f"{creds.username or ''}:{creds.password or ''}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _account(creds: Credentials) -> str:
    return f"account {creds.username!r}" if creds.username else "the identity token"


def _need_login(host: str) -> AuthFailed:
    return AuthFailed(
        f"{host} requires authentication",
        f"run 'docker login {host}' or pass --username and --password-stdin",
    )


def _bad_login(host: str, creds: Credentials | None) -> AuthFailed:
    if creds and creds.identity_token and not creds.password:
        return AuthFailed(
            f"{host} refused the identity token in the Docker config",
            f"it may have expired: run 'docker login {host}' again",
        )
    return AuthFailed(
        f"{host} refused the username or password",
        "check the credentials in the Docker config or on the command line",
    )


def _unreachable(host: str, exc: Exception | None) -> RegistryError:
    reason = _describe(exc) if exc else "no answer"
    if isinstance(exc, requests.exceptions.SSLError):
        return RegistryUnreachable(
            f"TLS to {host} failed: {reason}",
            f"pass --ca-cert FILE, or --insecure-registry {host} for plain HTTP",
        )
    return RegistryUnreachable(
        f"cannot reach registry {host}: {reason}",
        "check the host and port, and that the registry is running",
    )


def _describe(exc: BaseException) -> str:
    """A short, redacted reason; requests nests the useful part deep inside."""
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the connection broke off in the middle of the body"
    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    if _refusal_in(exc):
        return "connection refused"
    return redact(str(exc))


def _refusal_in(exc: BaseException | None, depth: int = 0) -> bool:
    """Whether a ConnectionRefusedError sits anywhere in the chain."""
    if exc is None or depth > 8:
        return False
    if isinstance(exc, ConnectionRefusedError):
        return True
    inner = [exc.__cause__, exc.__context__, getattr(exc, "reason", None), *exc.args]
    return any(
        _refusal_in(e, depth + 1)
        for e in inner
        if isinstance(e, BaseException) and e is not exc
    )


def _on_loopback(url: str) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0]
    return is_loopback(host)


def _clock() -> float:
    return time.monotonic()


def _certs_d(host: str, name: str) -> str | None:
    path = CERTS_D / host / name
    return str(path) if path.is_file() else None


def _client_cert(host: str) -> tuple[str, str] | None:
    cert, key = _certs_d(host, "client.cert"), _certs_d(host, "client.key")
    return (cert, key) if cert and key else None
