"""HTTP to one registry host: TLS choices, authentication and retries.

Authentication follows the distribution spec: a request without credentials
draws a 401 whose ``WWW-Authenticate`` names the scheme. For ``Basic`` the
credentials go on every request; for ``Bearer`` a token is fetched from the
realm for exactly the scopes the request needs and cached per scope set. A
token that is refused with ``insufficient_scope`` is fetched once more.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests

from airgap.credentials import Credentials
from airgap.errors import AuthFailed, RegistryError, RegistryUnreachable

log = logging.getLogger(__name__)

USER_AGENT = "airgap"
CERTS_D = Path("/etc/docker/certs.d")
_RETRY_STATUS = {429, 500, 502, 503, 504}
_ATTEMPTS = 4
_TIMEOUT = (15, 300)
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_SECRET_QUERY = re.compile(
    r"((?:token|access_token|refresh_token|password|X-Amz-Signature|sig|"
    r"Signature|X-Goog-Signature)=)[^&\s]+",
    re.IGNORECASE,
)
_USERINFO = re.compile(r"(://)[^/@\s]+@")


def redact(text: str) -> str:
    """What may reach a log or an error: no passwords, tokens or signatures."""
    text = _USERINFO.sub(r"\1***@", text)
    return _SECRET_QUERY.sub(r"\1***", text)


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Challenge:
    def __init__(self, scheme: str, params: dict[str, str]) -> None:
        self.scheme = scheme.lower()
        self.params = params

    @classmethod
    def parse(cls, header: str) -> Challenge | None:
        header = header.strip()
        if not header:
            return None
        scheme, _, rest = header.partition(" ")
        params = {
            m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
            for m in _CHALLENGE_PARAM.finditer(rest)
        }
        return cls(scheme, params)


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
        self._verify: bool | str = ca_cert or _certs_d(host, "ca.crt") or True
        self._client_cert = _client_cert(host)
        self._scheme: str | None = None
        self._challenge: Challenge | None = None
        self._tokens: dict[frozenset[str], str] = {}
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
        scope_set = frozenset(scopes)
        attempts = _ATTEMPTS if retry else 1
        refreshed = False
        for attempt in range(1, attempts + 1):
            response = self._send(method, path, scope_set, **kwargs)
            if response.status_code == 401 and not refreshed:
                refreshed = True
                self._on_unauthorized(response, scope_set)
                response = self._send(method, path, scope_set, **kwargs)
            if response.status_code in _RETRY_STATUS and attempt < attempts:
                self._pause(response, attempt)
                continue
            break
        if response.status_code not in set(expect):
            raise self._error(response, method, path)
        return response

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
        last: Exception | None = None
        for scheme in schemes:
            try:
                response = self._raw(
                    "GET", f"{scheme}://{self.host}/v2/", retry_connect=True
                )
            except requests.exceptions.SSLError as exc:
                last = exc
                continue
            except requests.exceptions.ConnectionError as exc:
                last = exc
                continue
            self._scheme = scheme
            if response.status_code == 401:
                self._challenge = Challenge.parse(
                    response.headers.get("WWW-Authenticate", "")
                )
            elif response.status_code not in (200, 404):
                raise self._error(response, "GET", "/v2/")
            log.debug("registry %s speaks %s", self.host, scheme)
            return
        raise _unreachable(self.host, last, self._http_allowed())

    # -- internals ----------------------------------------------------------

    def _send(
        self, method: str, path: str, scopes: frozenset[str], **kwargs: Any
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        auth = self._authorization(scopes)
        if auth:
            headers["Authorization"] = auth
        url = path if path.startswith(("http://", "https://")) else self.url(path)
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
        tries = _ATTEMPTS if retry_connect or method in ("GET", "HEAD") else 1
        for attempt in range(1, tries + 1):
            try:
                log.debug("%s %s", method, redact(url))
                return self.session.request(method, url, **kwargs)
            except requests.exceptions.SSLError:
                raise
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):
                if attempt == tries or _is_refused_at_once(url):
                    raise
                time.sleep(min(2**attempt * 0.25, 4))
        raise AssertionError("unreachable")

    def _authorization(self, scopes: frozenset[str]) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return _basic(self.credentials) if self.credentials else None
        if challenge.scheme == "bearer":
            with self._lock:
                token = self._tokens.get(scopes)
            return f"Bearer {token}" if token else None
        return None

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
        wanted = set(scopes)
        if challenge.params.get("scope"):
            wanted.update(challenge.params["scope"].split(" "))
        token = self._fetch_token(challenge, sorted(wanted))
        with self._lock:
            self._tokens[scopes] = token

    def _fetch_token(self, challenge: Challenge, scopes: list[str]) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthFailed(f"{self.host} sent a Bearer challenge without a realm")
        service = challenge.params.get("service")
        creds = self.credentials
        if creds and creds.identity_token:
            response = self._oauth_refresh(realm, service, scopes, creds.identity_token)
        else:
            params: list[tuple[str, str]] = [("scope", s) for s in scopes]
            if service:
                params.append(("service", service))
            auth = (creds.username or "", creds.password or "") if creds else None
            response = self._raw("GET", realm, params=params, auth=auth)
        if response.status_code in (401, 403):
            raise _bad_login(self.host) if creds else _need_login(self.host)
        if response.status_code != 200:
            raise self._error(response, "GET", redact(realm))
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise AuthFailed(f"the token service of {self.host} returned no token")
        return str(token)

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
        return error_for(response, f"{method} {redact(self.url(path))}", self.host)


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


def _basic(creds: Credentials) -> str:
    import base64

    raw = f"{creds.username or ''}:{creds.password or ''}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _need_login(host: str) -> AuthFailed:
    return AuthFailed(
        f"{host} requires authentication",
        f"run 'docker login {host}' or pass --username and --password-stdin",
    )


def _bad_login(host: str) -> AuthFailed:
    return AuthFailed(
        f"{host} refused the username or password",
        "check the credentials in the Docker config or on the command line",
    )


def _unreachable(host: str, exc: Exception | None, http_allowed: bool) -> RegistryError:
    reason = redact(str(exc)) if exc else "no answer"
    if isinstance(exc, requests.exceptions.SSLError) and not http_allowed:
        return RegistryUnreachable(
            f"TLS to {host} failed: {reason}",
            f"pass --ca-cert FILE, or --insecure-registry {host} for plain HTTP",
        )
    return RegistryUnreachable(
        f"cannot reach registry {host}: {reason}",
        "check the host and port, and that the registry is running",
    )


def _is_refused_at_once(url: str) -> bool:
    # A refused connection on loopback will not heal in a second; elsewhere it may.
    host = url.split("://", 1)[-1].split("/", 1)[0]
    return is_loopback(host)


def _certs_d(host: str, name: str) -> str | None:
    path = CERTS_D / host / name
    return str(path) if path.is_file() else None


def _client_cert(host: str) -> tuple[str, str] | None:
    cert, key = _certs_d(host, "client.cert"), _certs_d(host, "client.key")
    return (cert, key) if cert and key else None
