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
from airgap.manifest import ACCEPT, Manifest
from airgap.reference import Reference
from airgap.streams import Reader
from airgap.transport import Transport, registry_error_codes

log = logging.getLogger(__name__)

CHUNK = 1 << 20


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
        response = self.transport.request(
            "GET",
            f"/v2/{repo}/manifests/{ref}",
            scopes=[pull_scope(repo)],
            headers={"Accept": ACCEPT},
            expect=(200, 404),
        )
        if response.status_code == 404:
            raise ManifestUnknown(
                f"{self.display}/{repo}:{ref} not found"
                if not ref.startswith("sha256:")
                else f"{self.display}/{repo}@{ref} not found",
                "check the name and tag, and that the account may read it",
            )
        raw = response.content
        manifest = Manifest.parse(raw, response.headers.get("Content-Type"))
        if ref.startswith("sha256:") and str(manifest.digest) != ref:
            # The bytes decide, never the server's Docker-Content-Digest.
            raise DigestMismatch(
                f"{self.display}/{repo}@{ref} served a manifest whose digest is "
                f"{manifest.digest}"
            )
        return manifest

    def manifest_digest(self, repo: str, ref: str) -> Digest | None:
        """The digest of what ``ref`` names now, from the bytes, or None."""
        response = self.transport.request(
            "GET",
            f"/v2/{repo}/manifests/{ref}",
            scopes=[pull_scope(repo)],
            headers={"Accept": ACCEPT},
            expect=(200, 404),
        )
        return Digest.of(response.content) if response.status_code == 200 else None

    def put_manifest(self, repo: str, ref: str, manifest: Manifest) -> None:
        response = self.transport.request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            scopes=[push_scope(repo)],
            headers={"Content-Type": manifest.media_type},
            data=manifest.raw,
            expect=(200, 201, 202, 400),
        )
        if response.status_code == 400:
            raise _manifest_refused(response, f"{self.display}/{repo}:{ref}")
        pushed = self.manifest_digest(repo, ref)
        if pushed != manifest.digest:
            raise DigestMismatch(
                f"{self.display}/{repo}:{ref} reads back as {pushed}, "
                f"pushed {manifest.digest}"
            )

    # -- blobs --------------------------------------------------------------

    def blob_exists(self, repo: str, digest: Digest) -> bool:
        response = self.transport.request(
            "HEAD",
            f"/v2/{repo}/blobs/{digest}",
            scopes=[pull_scope(repo)],
            expect=(200, 404),
            allow_redirects=True,
        )
        return response.status_code == 200

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
            expect=(200,),
        )
        with response:
            for chunk in response.iter_content(CHUNK):
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


def _manifest_refused(response: requests.Response, what: str) -> RegistryError:
    codes = registry_error_codes(response)
    if "MANIFEST_BLOB_UNKNOWN" in codes or "BLOB_UNKNOWN" in codes:
        return RegistryError(
            f"{what}: the registry lacks a blob the manifest names",
            "run 'airgap verify' on the bundle",
        )
    if "MANIFEST_INVALID" in codes and b"url" in response.content.lower():
        return RegistryError(
            f"{what}: the registry refuses layers with external URLs",
            "allow them in the registry config: validation.manifests.urls.allow",
        )
    return RegistryError(f"{what}: manifest refused ({', '.join(sorted(codes))})")


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
