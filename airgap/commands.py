"""The subcommands: parse options, call the verb, report the result."""

from __future__ import annotations

from typing import Any

import click

from airgap.bootstrap import Bootstrap, RegistrySpec
from airgap.bundle import PackOptions
from airgap.cli import (
    SETTINGS,
    common,
    emit,
    human_size,
    main,
    open_bundle,
    parse_mirrors,
    parse_platforms,
    registry_options,
)
from airgap.daemon import Daemon
from airgap.descriptor import Platform
from airgap.errors import IntegrityError, UsageError
from airgap.imagelist import load as load_image_list
from airgap.index import DigestIndex
from airgap.load import DockerLoader
from airgap.pack import bundle_platform, pack
from airgap.registry import RegistryPool
from airgap.unpack import UnpackIncomplete, target_name, unpack
from airgap.verify import verify


@main.command("pack")
@click.argument("image_list", metavar="LIST")
@click.option(
    "-o",
    "--output",
    default="bundle.tar.zst",
    show_default=True,
    metavar="BUNDLE",
    help="The bundle to write ('-' for stdout).",
)
@click.option(
    "--compression",
    type=click.Choice(["zstd", "none"]),
    default="zstd",
    show_default=True,
)
@click.option(
    "--level",
    type=click.IntRange(1, 22),
    default=3,
    show_default=True,
    help="zstd level.",
)
@click.option(
    "--threads",
    type=int,
    default=-1,
    show_default=True,
    help="zstd threads (-1: one per core).",
)
@click.option(
    "--mirror",
    multiple=True,
    metavar="REGISTRY=HOST[:PORT]",
    help="Pull REGISTRY's images from a mirror; names stay as listed.",
)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]",
    help="Carry only these platforms of multi-platform images.",
)
@click.option(
    "--docker-platform",
    metavar="OS/ARCH[/VARIANT]",
    help="Platform written to manifest.json for docker load.",
)
@click.option(
    "--from-docker",
    is_flag=True,
    help="Export the listed images from the local Docker daemon (docker save).",
)
@registry_options
@common
def pack_command(
    image_list: str,
    output: str,
    compression: str,
    level: int,
    threads: int,
    mirror: tuple[str, ...],
    platforms: tuple[str, ...],
    docker_platform: str | None,
    from_docker: bool,
    pool_options: dict[str, Any],
) -> None:
    """Pull every image of LIST (and the registry image) into one bundle."""
    images = load_image_list(image_list)
    pool = RegistryPool(mirrors=parse_mirrors(mirror), **pool_options)
    selected = parse_platforms(platforms)
    chosen = Platform.parse(docker_platform) if docker_platform else None
    options = PackOptions(
        compression, level, threads, bundle_platform(images, chosen, selected)
    )
    result = pack(
        images, output, pool, options, selected, SETTINGS.progress, from_docker
    )
    index = result.index
    emit(
        {
            "bundle": result.path,
            "size": result.size,
            "sha256": result.sha256,
            "images": [i.to_json() for i in index.images],
            "blobs": len(index.blobs),
        },
        [
            f"{result.path}: {len(index.images)} images, {len(index.blobs)} blobs, "
            f"{human_size(result.size)}",
            *(f"  {i.source} -> {i.target} {i.digest}" for i in index.images),
        ],
    )


@main.command("unpack")
@click.argument("bundle")
@click.option("--registry", metavar="HOST[:PORT]", help="The registry to push into.")
@click.option(
    "--prefix",
    default="",
    metavar="PATH",
    help="Insert PATH before every repository name.",
)
@click.option(
    "--chunk-size",
    metavar="SIZE",
    help="Upload blobs in chunks of SIZE (for proxies that cap bodies).",
)
@click.option(
    "--load",
    is_flag=True,
    help="Load the images into the local Docker daemon (with or without --registry).",
)
@click.option(
    "--start-registry",
    is_flag=True,
    help="When nothing answers at --registry, start the bundled "
    "registry image in the local Docker daemon.",
)
@click.option(
    "--registry-name",
    default="registry",
    show_default=True,
    help="Container name for --start-registry.",
)
@click.option(
    "--registry-data",
    metavar="DIR",
    help="Host directory for the registry's storage (default: a "
    "named volume NAME-data).",
)
@click.option(
    "--registry-network",
    metavar="NETWORK",
    help="Docker network for the registry ('host' for daemons without a bridge).",
)
@click.option(
    "--registry-htpasswd",
    metavar="FILE",
    help="Require logins from this htpasswd file (bcrypt).",
)
@click.option("--registry-tls-cert", metavar="FILE", help="Serve TLS with this cert.")
@click.option("--registry-tls-key", metavar="FILE", help="Key of --registry-tls-cert.")
@registry_options
@common
def unpack_command(
    bundle: str,
    registry: str | None,
    prefix: str,
    chunk_size: str | None,
    load: bool,
    start_registry: bool,
    pool_options: dict[str, Any],
    **registry_spec: str | None,
) -> None:
    """Verify BUNDLE and push every image into a registry (or load it into
    Docker)."""
    if not registry and not load:
        raise UsageError(
            "unpack needs --registry HOST[:PORT] or --load",
            "e.g. airgap unpack B --registry localhost:5000 --start-registry",
        )
    target = RegistryPool(**pool_options).get(registry) if registry else None
    if target and chunk_size:
        target.chunk_size = parse_size(chunk_size)
    spec = RegistrySpec(
        name=registry_spec["registry_name"] or "registry",
        data=registry_spec["registry_data"],
        network=registry_spec["registry_network"],
        htpasswd=registry_spec["registry_htpasswd"],
        tls_cert=registry_spec["registry_tls_cert"],
        tls_key=registry_spec["registry_tls_key"],
    )
    bootstrap = Bootstrap(target, spec) if target and start_registry else None
    loader = _docker_loader if load else None
    reader = open_bundle(bundle)
    try:
        result = unpack(reader, target, prefix, SETTINGS.progress, bootstrap, loader)
    except UnpackIncomplete as exc:
        _emit_unpack(exc.result, registry)
        raise
    _emit_unpack(result, registry)


def _docker_loader(index: DigestIndex, names: dict[int, str]) -> DockerLoader:
    return DockerLoader(Daemon.connect(), index, names)


def _emit_unpack(result: Any, registry: str | None) -> None:
    emit(
        {
            "registry": registry,
            "images": [
                {
                    "target": f"{registry}/{item.reference}",
                    "digest": str(item.record.digest),
                    "source": item.record.source,
                }
                for item in result.landed
            ],
            "loaded": [
                {"name": name, "imageId": image_id, "source": record.source}
                for record, name, image_id in result.loaded
            ],
            "broken": result.broken,
            "uploadedBytes": result.uploaded,
        },
        [f"{registry}/{item.reference} {item.record.digest}" for item in result.landed]
        + [f"docker: {name} {image_id}" for _, name, image_id in result.loaded],
    )


@main.command("verify")
@click.argument("bundle")
@common
def verify_command(bundle: str) -> None:
    """Check every blob and every reference of BUNDLE, offline."""
    result = verify(open_bundle(bundle), SETTINGS.progress)
    ok = not result.problems
    lines = (
        [
            f"{bundle}: OK, {len(result.index.images)} images, {result.blobs} blobs, "
            f"{human_size(result.size)} verified"
        ]
        if ok
        else [f"{bundle}: {p}" for p in result.problems]
    )
    if ok:
        emit(
            {
                "bundle": bundle,
                "images": len(result.index.images),
                "blobs": result.blobs,
                "problems": [],
            },
            lines,
        )
        return
    if not SETTINGS.json:
        for line in lines:
            click.echo(line, err=True)
    raise IntegrityError(
        f"{bundle}: {len(result.problems)} problem(s); first: {result.problems[0]}",
        "copy the bundle again from the source media",
    )


@main.command("list")
@click.argument("bundle")
@click.option(
    "--prefix",
    default="",
    metavar="PATH",
    help="Show target names under PATH, as unpack --prefix would.",
)
@common
def list_command(bundle: str, prefix: str) -> None:
    """Print the images in BUNDLE: source, target, digest, platforms, size."""
    index = open_bundle(bundle).header().index
    emit(
        {"bundle": bundle, "images": _listing(index, prefix)},
        _list_lines(index, prefix),
    )


def _listing(index: DigestIndex, prefix: str) -> list[dict[str, Any]]:
    out = []
    for record in index.images:
        repo, tag = target_name(record, prefix)
        item = record.to_json()
        item["target"] = f"{repo}:{tag}" if tag else repo
        item["size"] = index.image_size(record)
        out.append(item)
    return out


def _list_lines(index: DigestIndex, prefix: str) -> list[str]:
    rows = [("SOURCE", "TARGET", "DIGEST", "PLATFORMS", "SIZE")]
    for item in _listing(index, prefix):
        digest = item["digest"]
        if item.get("sourceDigest"):
            digest += f" (source {item['sourceDigest']})"
        marker = " [registry image]" if item["registryImage"] else ""
        rows.append(
            (
                item["source"] + marker,
                item["target"],
                digest,
                ",".join(item["platforms"]) or "-",
                human_size(item["size"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
        + "  "
        + r[4]
        for r in rows
    ]


_UNITS = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "KI": 2**10,
    "MI": 2**20,
    "GI": 2**30,
    "TI": 2**40,
}


def parse_size(text: str) -> int:
    """``700M``, ``4G``, ``4.7GB``: decimal units; ``512MiB``: binary."""
    value = text.strip().upper().removesuffix("B")
    number = value.rstrip("KMGTI")
    unit = value[len(number) :]
    try:
        size = int(float(number) * _UNITS[unit])
    except (KeyError, ValueError) as exc:
        hint = "write e.g. 50M, 4.7GB or 512MiB"
        raise UsageError(f"invalid size {text!r}", hint) from exc
    if size <= 0:
        raise UsageError(f"invalid size {text!r}", "a size must be positive")
    return size
