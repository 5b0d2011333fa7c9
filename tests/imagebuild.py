"""Build real container images in memory and push them to a real registry.

The tests build their fixtures here rather than with the airgap package, so a bug
in the code under test cannot hide itself by producing the very images it is then
checked against. Everything is deterministic: tar entries are sorted and carry
mtime 0 and uid/gid 0, gzip headers carry mtime 0, JSON is serialised with sorted
keys, so building the same files twice gives the same digests.

Run as a script, it turns directories into a runnable image in a registry, one
layer per `--dir`, bottom first; images built on the same base directory share
its layer blob:

    python tests/imagebuild.py push-dir --registry 127.0.0.1:5000 \\
        --repo library/hello --tag 1.0 --dir BUSYBOX --dir HELLO --cmd /bin/hello
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shlex
import stat
import sys
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import requests
import zstandard

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_FOREIGN_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

MANIFEST_TYPES = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX)

DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
EPOCH = "1970-01-01T00:00:00Z"

Compression = Literal["gzip", "zstd", "none"]
Style = Literal["docker", "oci"]

_LAYER_TYPES: dict[tuple[str, str], str] = {
    ("docker", "gzip"): DOCKER_LAYER_GZIP,
    ("docker", "none"): DOCKER_LAYER,
    ("oci", "gzip"): OCI_LAYER_GZIP,
    ("oci", "zstd"): OCI_LAYER_ZSTD,
    ("oci", "none"): OCI_LAYER,
}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# --- files -------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    """One entry of a layer: a regular file, a directory or a symlink."""

    data: bytes = field(default=b"", repr=False)
    mode: int = 0o644
    kind: Literal["file", "dir", "symlink"] = "file"
    target: str = ""


def executable(data: bytes) -> File:
    return File(data, mode=0o755)


def directory(mode: int = 0o755) -> File:
    return File(mode=mode, kind="dir")


def symlink(target: str) -> File:
    return File(mode=0o777, kind="symlink", target=target)


def host_file(path: str | os.PathLike[str], mode: int | None = None) -> File:
    """A file copied from the host, e.g. a static binary, with its own mode."""
    path = Path(path)
    if mode is None:
        mode = path.stat().st_mode & 0o7777
    return File(path.read_bytes(), mode=mode)


Files = Mapping[str, "bytes | File"]


def random_files(seed: int, count: int, size: int) -> dict[str, bytes]:
    """`count` files of `size` random bytes, the same for the same seed."""
    rng = random.Random(seed)
    return {f"data/{seed}/file-{i:04d}.bin": rng.randbytes(size) for i in range(count)}


def files_from_dir(root: str | os.PathLike[str]) -> dict[str, File]:
    """Every directory, regular file and symlink under `root`, modes kept."""
    root = Path(root)
    files: dict[str, File] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            entry = _host_entry(path)
            if entry is not None:
                files[path.relative_to(root).as_posix()] = entry
    return files


def _host_entry(path: Path) -> File | None:
    st = path.lstat()
    mode = st.st_mode & 0o7777
    if stat.S_ISLNK(st.st_mode):
        return symlink(os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return directory(mode)
    if stat.S_ISREG(st.st_mode):
        return File(path.read_bytes(), mode=mode)
    return None  # devices and fifos have no place in a test image


# --- blobs and layers --------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """Bytes as a registry stores them, with what a descriptor says about them."""

    data: bytes = field(repr=False)
    digest: str
    size: int
    media_type: str
    diff_id: str | None = None  # layers only: digest of the uncompressed tar
    tar: bytes | None = field(default=None, repr=False)  # layers only
    urls: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        data: bytes,
        media_type: str,
        diff_id: str | None = None,
        tar: bytes | None = None,
    ) -> Blob:
        return cls(data, sha256_digest(data), len(data), media_type, diff_id, tar)

    def descriptor(self) -> dict[str, object]:
        desc: dict[str, object] = {
            "mediaType": self.media_type,
            "size": self.size,
            "digest": self.digest,
        }
        if self.urls:
            desc["urls"] = list(self.urls)
        return desc


def layer(
    files: Files,
    compression: Compression = "gzip",
    media_type_style: Style = "docker",
    media_type: str | None = None,
) -> Blob:
    """A layer blob holding `files`; `media_type` overrides the usual one."""
    if media_type is None:
        if (media_type_style, compression) not in _LAYER_TYPES:
            raise ValueError(f"no {media_type_style} media type for {compression}")
        media_type = _LAYER_TYPES[media_type_style, compression]

    tar = tar_bytes(files)
    data = compress(tar, compression)
    return Blob.of(data, media_type, diff_id=sha256_digest(tar), tar=tar)


def foreign_layer(blob: Blob, urls: Sequence[str], oci: bool = False) -> Blob:
    """The same layer marked as fetched from `urls`, so no registry holds it."""
    media_type = OCI_FOREIGN_LAYER if oci else DOCKER_FOREIGN_LAYER
    return replace(blob, media_type=media_type, urls=tuple(urls))


def compress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


def tar_bytes(files: Files) -> bytes:
    """A deterministic tar of `files`, missing parent directories added."""
    entries = {path.strip("/"): _as_file(value) for path, value in files.items()}
    for path in list(entries):
        for parent in _parents(path):
            entries.setdefault(parent, directory())

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            info, data = _tar_entry(path, entries[path])
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _as_file(value: bytes | File) -> File:
    return value if isinstance(value, File) else File(value)


def _parents(path: str) -> Iterable[str]:
    parts = path.split("/")[:-1]
    return ("/".join(parts[: i + 1]) for i in range(len(parts)))


def _tar_entry(path: str, entry: File) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(path)
    info.mode = entry.mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
    else:
        info.size = len(entry.data)
    return info, entry.data if entry.kind == "file" else b""


# --- images and indexes ------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """A single-platform image: its config, its layers and its manifest."""

    config: Blob
    layers: tuple[Blob, ...]
    manifest: bytes = field(repr=False)
    digest: str
    media_type: str
    platform: str  # "os/architecture[/variant]"

    @property
    def size(self) -> int:
        return len(self.manifest)

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)


@dataclass(frozen=True)
class Index:
    """An OCI image index or a Docker manifest list over some images."""

    data: bytes = field(repr=False)
    digest: str
    media_type: str
    images: tuple[Image, ...]

    @property
    def size(self) -> int:
        return len(self.data)


def image(
    layers: Sequence[Blob],
    oci: bool = False,
    os: str = "linux",
    architecture: str = "amd64",
    variant: str | None = None,
    cmd: Sequence[str] | None = None,
    entrypoint: Sequence[str] | None = None,
    env: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Image:
    """A real image config and manifest (Docker schema 2 unless `oci`)."""
    container: dict[str, object] = {"Env": list(DEFAULT_ENV if env is None else env)}
    if cmd is not None:
        container["Cmd"] = list(cmd)
    if entrypoint is not None:
        container["Entrypoint"] = list(entrypoint)
    if labels:
        container["Labels"] = dict(labels)

    config = Blob.of(
        _config_json(layers, os, architecture, variant, container),
        OCI_CONFIG if oci else DOCKER_CONFIG,
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
            "config": config.descriptor(),
            "layers": [blob.descriptor() for blob in layers],
        }
    )
    platform = "/".join(p for p in (os, architecture, variant) if p)
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    return Image(
        config, tuple(layers), manifest, sha256_digest(manifest), media_type, platform
    )


def _config_json(
    layers: Sequence[Blob],
    os: str,
    architecture: str,
    variant: str | None,
    container: dict[str, object],
) -> bytes:
    config: dict[str, object] = {
        "architecture": architecture,
        "os": os,
        "created": EPOCH,
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in layers]},
        "history": [
            {"created": EPOCH, "created_by": f"imagebuild layer {i}"}
            for i in range(len(layers))
        ],
    }
    if variant:
        config["variant"] = variant
    return canonical_json(config)


def index(
    images: Sequence[Image | tuple[Image, str]],
    oci: bool = True,
) -> Index:
    """An index over `images`; a platform string may override an image's own."""
    pairs = [
        item if isinstance(item, tuple) else (item, item.platform) for item in images
    ]
    media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    data = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [_child(img, platform) for img, platform in pairs],
        }
    )
    return Index(data, sha256_digest(data), media_type, tuple(i for i, _ in pairs))


def _child(img: Image, platform: str) -> dict[str, object]:
    os_, arch, *variant = platform.split("/")
    spec = {"os": os_, "architecture": arch}
    if variant:
        spec["variant"] = variant[0]
    return {
        "mediaType": img.media_type,
        "size": img.size,
        "digest": img.digest,
        "platform": spec,
    }


def docker_archive(img: Image, repo_tags: Sequence[str] = ()) -> bytes:
    """A `docker save`-style tar of `img`, for `docker load`."""
    config_name = img.config.digest.removeprefix("sha256:") + ".json"
    layer_names = [_archive_name(blob) for blob in img.layers]
    manifest = [
        {"Config": config_name, "RepoTags": list(repo_tags), "Layers": layer_names}
    ]
    files: dict[str, bytes | File] = {"manifest.json": canonical_json(manifest)}
    files[config_name] = img.config.data
    for name, blob in zip(layer_names, img.layers, strict=True):
        files[name] = blob.tar if blob.tar is not None else blob.data
    return tar_bytes(files)


def _archive_name(blob: Blob) -> str:
    if blob.diff_id is None:
        raise ValueError(f"{blob.digest} is not a layer")
    return blob.diff_id.removeprefix("sha256:") + "/layer.tar"


# --- pushing -----------------------------------------------------------------


class RegistryLike(Protocol):
    """What pushing needs to know about a registry (servers.Registry has it)."""

    @property
    def url(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def ca_path(self) -> str | os.PathLike[str] | None: ...


@dataclass(frozen=True)
class Endpoint:
    url: str
    username: str | None = None
    password: str | None = None
    ca_path: str | None = None


def request(
    registry: RegistryLike, method: str, path_or_url: str, **kwargs: Any
) -> requests.Response:
    """One HTTP call with the registry's credentials and CA.

    `verify` is always passed explicitly: a REQUESTS_CA_BUNDLE in the environment
    would otherwise replace it.
    """
    url = path_or_url
    if not url.startswith(("http://", "https://")):
        url = registry.url.rstrip("/") + path_or_url
    auth = None
    if registry.username is not None:
        auth = (registry.username, registry.password or "")
    verify = str(registry.ca_path) if registry.ca_path else True
    kwargs.setdefault("timeout", 30)
    return requests.request(method, url, auth=auth, verify=verify, **kwargs)


def push_blob(registry: RegistryLike, repo: str, data: bytes) -> str:
    """Upload `data` in one monolithic PUT unless the repository has it."""
    digest = sha256_digest(data)
    if request(registry, "HEAD", f"/v2/{repo}/blobs/{digest}").status_code == 200:
        return digest

    started = request(registry, "POST", f"/v2/{repo}/blobs/uploads/")
    _expect(started, 202)
    location = requests.compat.urljoin(registry.url, started.headers["Location"])
    sep = "&" if "?" in location else "?"
    done = request(
        registry,
        "PUT",
        f"{location}{sep}digest={digest}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    _expect(done, 201)
    return digest


def push_manifest(
    registry: RegistryLike, repo: str, ref: str, data: bytes, media_type: str
) -> str:
    """PUT a manifest or index by tag or digest; returns its digest."""
    response = request(
        registry,
        "PUT",
        f"/v2/{repo}/manifests/{ref}",
        data=data,
        headers={"Content-Type": media_type},
    )
    _expect(response, 201)
    digest = sha256_digest(data)
    served = response.headers.get("Docker-Content-Digest", digest)
    if served != digest:
        raise RuntimeError(f"registry says {served} for a manifest of {digest}")
    return digest


def push_image(registry: RegistryLike, repo: str, tag: str | None, img: Image) -> str:
    """Push blobs, then the manifest (by tag, or by digest if `tag` is None)."""
    for blob in img.blobs:
        if not blob.urls:  # foreign layers live elsewhere
            push_blob(registry, repo, blob.data)
    return push_manifest(
        registry, repo, tag or img.digest, img.manifest, img.media_type
    )


def push_index(
    registry: RegistryLike,
    repo: str,
    tag: str | None,
    idx: Index,
    images: Sequence[Image] | None = None,
) -> str:
    """Push every child image by digest first: the registry checks they exist."""
    for img in idx.images if images is None else images:
        push_image(registry, repo, None, img)
    return push_manifest(registry, repo, tag or idx.digest, idx.data, idx.media_type)


def _expect(response: requests.Response, status: int) -> None:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.url}: expected {status}, "
            f"got {response.status_code}: {response.text[:500]}"
        )


# --- command line ------------------------------------------------------------


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="imagebuild.py")
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push-dir", help="push directories as an image")
    push.add_argument("--registry", required=True, help="HOST:PORT or URL")
    push.add_argument("--repo", required=True)
    push.add_argument("--tag", default="latest")
    push.add_argument(
        "--dir",
        dest="dirs",
        action="append",
        required=True,
        type=Path,
        help="a layer's files; repeat for more layers, bottom first",
    )
    push.add_argument("--cmd", type=shlex.split, help="shell-style words")
    push.add_argument("--entrypoint", type=shlex.split, help="shell-style words")
    push.add_argument(
        "--symlink",
        action="append",
        default=[],
        help="PATH=TARGET, added to the top layer",
    )
    push.add_argument("--oci", action="store_true")
    push.add_argument("--arch", default="amd64")
    push.add_argument("--username")
    push.add_argument("--password-stdin", action="store_true")
    push.add_argument("--ca-cert")
    return parser.parse_args(argv)


def _layer_files(args: argparse.Namespace) -> list[dict[str, bytes | File]]:
    """The files of each layer, bottom first; --symlink entries go on top."""
    layers: list[dict[str, bytes | File]] = [
        dict(files_from_dir(path)) for path in args.dirs
    ]
    for pair in args.symlink:
        path, _, target = pair.partition("=")
        layers[-1][path.strip("/")] = symlink(target)
    return layers


def _push_dir(args: argparse.Namespace) -> str:
    style: Style = "oci" if args.oci else "docker"
    img = image(
        [layer(files, media_type_style=style) for files in _layer_files(args)],
        oci=args.oci,
        architecture=args.arch,
        cmd=args.cmd,
        entrypoint=args.entrypoint,
    )
    url = args.registry
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    endpoint = Endpoint(url.rstrip("/"), args.username, password, args.ca_cert)
    return push_image(endpoint, args.repo, args.tag, img)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    print(_push_dir(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
