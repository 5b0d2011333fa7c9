"""The registry client: distribution-spec calls, named after protocol steps."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from urllib.parse import urlencode

import requests

from airgap.credentials import CredentialSource
from airgap.descriptor import Descriptor, Digest, HashingCheck
from airgap.errors import (
    AuthFailed,
    DigestMismatch,
    ManifestUnknown,
    RegistryError,
)
from airgap.manifest import ACCEPT, OCI_INDEX, Manifest, Schema1Manifest
from airgap.reference import Reference
from airgap.streams import Reader
from airgap.transport import Transport, redact, registry_error_codes

log = logging.getLogger(__name__)

CHUNK = 1 << 20
URL_TIMEOUT = (15, 300)


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


class Registry:
    """One registry host. ``display`` is the name users know it by (for
    ``docker.io`` that differs from the API host, and for a mirror too)."""

    def __init__(self, transport: Transport, display: str | None = None) -> None:
        self.transport = transport
        self.host = transport.host
        self.display = display or transport.host
        self.chunk_size: int | None = None

    def ping(self) -> None:
        self.transport.ping()

    # -- manifests ----------------------------------------------------------

    def get_manifest(self, repo: str, ref: str) -> Manifest:
        manifest = self.find_manifest(repo, ref)
        if manifest is None:
            raise ManifestUnknown(
                f"{self._name(repo, ref)} not found",
                "check the name and tag, and that the account may read it",
            )
        return manifest

    def find_manifest(self, repo: str, ref: str) -> Manifest | None:
        """The manifest ``ref`` names, or None when the registry has none."""
        response = self._manifest_response(repo, ref)
        if response.status_code == 404:
            return None
        try:
            manifest = Manifest.parse(
                response.content, response.headers.get("Content-Type")
            )
        except Schema1Manifest as exc:
            raise Schema1Manifest(self._name(repo, ref), exc.raw) from None
        if ref.startswith("sha256:") and str(manifest.digest) != ref:
            # The bytes decide, never the server's Docker-Content-Digest.
            raise DigestMismatch(
                f"{self._name(repo, ref)} served a manifest whose digest is "
                f"{manifest.digest}"
            )
        return manifest

    def has_manifest(self, repo: str, ref: str) -> bool:
        """Whether ``ref`` names a manifest; a HEAD, which Docker Hub does not
        count against its pull limit, so probing tags costs nothing there."""
        response = self.transport.request(
            "HEAD",
            f"/v2/{repo}/manifests/{ref}",
            scopes=[pull_scope(repo)],
            headers={"Accept": ACCEPT},
            expect=(200, 404),
        )
        return response.status_code == 200

    def manifest_digest(self, repo: str, ref: str) -> Digest | None:
        """The digest of what ``ref`` names now, from the bytes, or None."""
        response = self._manifest_response(repo, ref)
        return Digest.of(response.content) if response.status_code == 200 else None

    def _manifest_response(self, repo: str, ref: str) -> requests.Response:
        return self.transport.request(
            "GET",
            f"/v2/{repo}/manifests/{ref}",
            scopes=[pull_scope(repo)],
            headers={"Accept": ACCEPT},
            expect=(200, 404),
        )

    def _name(self, repo: str, ref: str) -> str:
        sep = "@" if ref.startswith("sha256:") else ":"
        return f"{self.display}/{repo}{sep}{ref}"

    def put_manifest(self, repo: str, ref: str, manifest: Manifest) -> bool:
        """PUT and read back; True when the registry says it indexed the
        manifest's subject for its referrers API (the ``OCI-Subject`` header)."""
        foreign = bool(manifest.foreign_layers)
        response = self.transport.request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            scopes=[push_scope(repo)],
            headers={"Content-Type": manifest.media_type},
            data=manifest.raw,
            # distribution refuses URLs with a 500, which no retry will heal.
            expect=(200, 201, 202, 400, 500) if foreign else (200, 201, 202, 400),
            retry=not foreign,
        )
        if response.status_code in (400, 500):
            raise _manifest_refused(response, self._name(repo, ref), manifest)
        pushed = self.manifest_digest(repo, ref)
        if pushed != manifest.digest:
            raise DigestMismatch(
                f"{self._name(repo, ref)} reads back as {pushed}, "
                f"pushed {manifest.digest}"
            )
        return bool(manifest.subject and response.headers.get("OCI-Subject"))

    def referrers(self, repo: str, digest: Digest) -> list[Descriptor] | None:
        """What the referrers API lists for ``digest``; None when the registry
        has no referrers API. The spec says 404 (distribution 2.8 does); some
        registries answer 400, 405 or 501 instead."""
        found: list[Descriptor] = []
        url: str | None = f"/v2/{repo}/referrers/{digest}"
        while url:
            response = self.transport.request(
                "GET",
                url,
                scopes=[pull_scope(repo)],
                headers={"Accept": OCI_INDEX},
                expect=(200, 400, 404, 405, 501),
            )
            if response.status_code != 200:
                return None
            found += Manifest.parse(response.content, OCI_INDEX).children
            following = response.links.get("next", {}).get("url")
            url = self._absolute(following) if following else None
        return found

    # -- blobs --------------------------------------------------------------

    def blob_exists(self, repo: str, digest: Digest) -> bool:
        return self._head_blob(repo, digest).status_code == 200

    def blob_size(self, repo: str, digest: Digest) -> int:
        """The blob's size as the registry states it."""
        response = self._head_blob(repo, digest)
        length = response.headers.get("Content-Length", "")
        if response.status_code != 200 or not length.isdigit():
            raise RegistryError(
                f"{self.display}/{repo} has no blob {digest} of a stated size"
            )
        return int(length)

    def _head_blob(self, repo: str, digest: Digest) -> requests.Response:
        return self.transport.request(
            "HEAD",
            f"/v2/{repo}/blobs/{digest}",
            scopes=[pull_scope(repo)],
            expect=(200, 404),
            allow_redirects=True,
        )

    def get_blob(self, repo: str, desc: Descriptor) -> bytes:
        check = HashingCheck(desc, f"blob {desc.digest} of {self.display}/{repo}")
        data = b"".join(self._chunks(repo, desc, check))
        check.verify()
        return data

    def open_blob(self, repo: str, desc: Descriptor) -> Iterator[bytes]:
        """The blob's bytes as they arrive, checked against ``desc`` at the end."""
        check = HashingCheck(desc, f"blob {desc.digest} of {self.display}/{repo}")
        yield from self._chunks(repo, desc, check)
        check.verify()

    def _chunks(
        self, repo: str, desc: Descriptor, check: HashingCheck
    ) -> Iterator[bytes]:
        response = self.transport.request(
            "GET",
            f"/v2/{repo}/blobs/{desc.digest}",
            scopes=[pull_scope(repo)],
            stream=True,
            expect=(200, 404) if desc.urls else (200,),
        )
        if response.status_code == 404:
            response.close()
            log.info(
                "%s lacks foreign layer %s: trying its URLs", self.display, desc.digest
            )
            yield from _url_chunks(desc, check)
            return
        with response:
            for chunk in self.transport.chunks(response, CHUNK):
                check.update(chunk)
                yield chunk

    def mount_blob(self, repo: str, digest: Digest, from_repo: str) -> bool:
        """Cross-repository mount: True when the registry linked the blob."""
        query = urlencode({"mount": str(digest), "from": from_repo})
        response = self.transport.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/?{query}",
            scopes=[push_scope(repo), pull_scope(from_repo)],
            expect=(201, 202),
        )
        if response.status_code == 201:
            return True
        self._cancel(response)
        return False

    def start_upload(self, repo: str) -> tuple[str, int | None]:
        response = self.transport.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            scopes=[push_scope(repo)],
            expect=(202,),
            retry=False,
        )
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.display} started an upload without a Location")
        minimum = response.headers.get("OCI-Chunk-Min-Length", "")
        return self._absolute(location), int(minimum) if minimum.isdigit() else None

    def put_blob(self, repo: str, desc: Descriptor, body: Reader) -> None:
        """Upload one blob read from ``body``: monolithic, or in chunks when the
        registry asks for them (``OCI-Chunk-Min-Length``) or the user set a size."""
        location, minimum = self.start_upload(repo)
        chunk = self.chunk_size or minimum
        if chunk:
            location = self._patch_chunks(
                repo, location, body, max(chunk, minimum or 0)
            )
            self._finish(repo, location, desc, None)
        else:
            self._finish(repo, location, desc, _SizedReader(body, desc.size))

    def _patch_chunks(self, repo: str, location: str, body: Reader, size: int) -> str:
        offset = 0
        while True:
            data = body.read(size)
            if not data:
                return location
            response = self.transport.request(
                "PATCH",
                location,
                scopes=[push_scope(repo)],
                data=data,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(data) - 1}",
                },
                expect=(202,),
                retry=False,
            )
            offset += len(data)
            location = self._absolute(response.headers.get("Location") or location)

    def _finish(
        self, repo: str, location: str, desc: Descriptor, body: Reader | None
    ) -> None:
        sep = "&" if "?" in location else "?"
        response = self.transport.request(
            "PUT",
            f"{location}{sep}{urlencode({'digest': str(desc.digest)})}",
            scopes=[push_scope(repo)],
            data=body if body is not None else b"",
            headers={"Content-Type": "application/octet-stream"},
            expect=(201, 204, 400, 413),
            retry=False,
        )
        if response.status_code == 413:
            raise RegistryError(
                f"{self.display} refused a {desc.size}-byte upload as too large (413)",
                "a proxy caps request bodies: pass --chunk-size, e.g. --chunk-size 50M",
            )
        if response.status_code == 400:
            codes = registry_error_codes(response)
            if "DIGEST_INVALID" in codes or "SIZE_INVALID" in codes:
                raise DigestMismatch(
                    f"{self.display} found blob {desc.digest} corrupt on upload"
                )
            raise RegistryError(f"{self.display} refused blob {desc.digest}")

    def _cancel(self, response: requests.Response) -> None:
        location = response.headers.get("Location")
        if location:
            try:
                self.transport.request(
                    "DELETE", self._absolute(location), expect=(204, 404, 405)
                )
            except (RegistryError, AuthFailed):
                log.debug("could not cancel an upload session at %s", self.display)

    def _absolute(self, location: str) -> str:
        if location.startswith(("http://", "https://")):
            return location
        return self.transport.url(location)

    # -- listing ------------------------------------------------------------

    def list_tags(self, repo: str) -> list[str]:
        response = self.transport.request(
            "GET", f"/v2/{repo}/tags/list", scopes=[pull_scope(repo)], expect=(200, 404)
        )
        if response.status_code == 404:
            return []
        return list(response.json().get("tags") or [])


def _url_chunks(desc: Descriptor, check: HashingCheck) -> Iterator[bytes]:
    """A foreign layer from the first of its URLs that serves it. These are
    other hosts: no registry credential or CA goes there, the system's trust
    does (``verify`` spelled out: see transport.py)."""
    failures = []
    for url in desc.urls:
        try:
            response = requests.get(url, stream=True, timeout=URL_TIMEOUT, verify=True)
        except requests.RequestException as exc:
            failures.append(f"{redact(url)}: {type(exc).__name__}")
            continue
        if response.status_code != 200:
            failures.append(f"{redact(url)}: {response.status_code}")
            response.close()
            continue
        yield from _url_body(response, url, check)
        return
    raise RegistryError(
        f"foreign layer {desc.digest} is neither in the registry nor at its URLs "
        f"({'; '.join(failures)})",
        "the layer is non-distributable: fetch it where its licence allows",
    )


def _url_body(
    response: requests.Response, url: str, check: HashingCheck
) -> Iterator[bytes]:
    with response:
        try:
            for chunk in response.iter_content(CHUNK):
                check.update(chunk)
                yield chunk
        except requests.RequestException as exc:
            raise RegistryError(
                f"{redact(url)} broke off while sending a foreign layer: "
                f"{type(exc).__name__}"
            ) from exc


class _SizedReader:
    """A body with a known length, so requests sends Content-Length rather than
    chunked transfer encoding, which some registries and proxies refuse."""

    def __init__(self, body: Reader, size: int) -> None:
        self._body = body
        self._size = size

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        return self._body.read(n)


def _manifest_refused(
    response: requests.Response, what: str, manifest: Manifest
) -> RegistryError:
    codes = registry_error_codes(response)
    if manifest.foreign_layers and _refuses_urls(response, codes, manifest):
        return RegistryError(
            f"{what}: the registry refuses layers with external URLs "
            f"(non-distributable layers, {len(manifest.foreign_layers)} here)",
            "allow them in the registry's config; for distribution: "
            "validation.manifests.urls.allow: ['^https?://']",
        )
    if "MANIFEST_BLOB_UNKNOWN" in codes or "BLOB_UNKNOWN" in codes:
        return RegistryError(
            f"{what}: the registry lacks a blob the manifest names",
            "run 'airgap verify' on the bundle",
        )
    listed = ", ".join(sorted(codes)) or f"status {response.status_code}"
    return RegistryError(f"{what}: manifest refused ({listed})")


def _refuses_urls(
    response: requests.Response, codes: set[str], manifest: Manifest
) -> bool:
    """Whether a refusal is about the layers' URLs. distribution 2.8 reports a
    URL it does not allow as an unknown blob, naming the foreign layer, even
    though the blob was pushed first."""
    body = response.text
    if "MANIFEST_INVALID" in codes and "url" in body.lower():
        return True
    return "MANIFEST_BLOB_UNKNOWN" in codes and any(
        str(layer.digest) in body for layer in manifest.foreign_layers
    )


class RegistryPool:
    """One client per registry host, built with the user's TLS, credential and
    mirror choices, so a token cached for one image serves the next."""

    def __init__(
        self,
        credentials: CredentialSource | None = None,
        insecure: Iterable[str] = (),
        ca_cert: str | None = None,
        mirrors: dict[str, str] | None = None,
    ) -> None:
        self.credentials = credentials or CredentialSource()
        self.insecure = set(insecure)
        self.ca_cert = ca_cert
        self.mirrors = mirrors or {}
        self._clients: dict[str, Registry] = {}

    def source(self, ref: Reference) -> Registry:
        """Where to pull ``ref`` from: its registry, or the mirror set for it."""
        mirror = self.mirrors.get(ref.registry)
        if mirror:
            return self.get(mirror, display=f"{mirror} (mirror of {ref.registry})")
        return self.get(ref.api_host, display=ref.registry, auth_name=ref.registry)

    def get(
        self, host: str, display: str | None = None, auth_name: str | None = None
    ) -> Registry:
        if host not in self._clients:
            transport = Transport(
                host,
                credentials=self.credentials.lookup(auth_name or host),
                insecure=host in self.insecure,
                ca_cert=self.ca_cert,
            )
            self._clients[host] = Registry(transport, display or host)
        return self._clients[host]
