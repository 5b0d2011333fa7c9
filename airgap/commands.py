"""The subcommands: parse options, call the verb, report the result."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import click

from airgap import inventory
from airgap.baseline import OMITTED, SINCE
from airgap.baseline import load as load_baseline
from airgap.bootstrap import Bootstrap, RegistrySpec
from airgap.bundle import PackOptions
from airgap.cache import BlobCache
from airgap.cli import (
    SETTINGS,
    common,
    emit,
    human_size,
    main,
    mirror_values,
    open_bundle,
    output_file,
    parse_mirrors,
    parse_platforms,
    registry_host,
    registry_options,
)
from airgap.copy import ResolveOptions
from airgap.daemon import Daemon
from airgap.descriptor import Platform
from airgap.errors import IntegrityError, UsageError
from airgap.imagelist import load as load_image_list
from airgap.index import DigestIndex
from airgap.load import DockerLoader
from airgap.media import base_name, parse_size, split_size_option
from airgap.pack import bundle_platform, pack
from airgap.registry import Registry, RegistryPool
from airgap.sync import SyncOptions, sync
from airgap.unpack import UnpackIncomplete, checked_prefix, target_name, unpack
from airgap.verify import verify

log = logging.getLogger(__name__)


def resolve_options(func: Any) -> Any:
    """--no-attachments and --convert-schema1, for pack and sync."""

    @click.option(
        "--no-attachments",
        is_flag=True,
        help="Leave signatures, attestations, SBOMs and other referrers behind.",
    )
    @click.option(
        "--convert-schema1",
        is_flag=True,
        help="Convert schema 1 images to schema 2 (new digests) instead of "
        "refusing them.",
    )
    @functools.wraps(func)
    def wrapper(no_attachments: bool, convert_schema1: bool, **kw: Any) -> Any:
        kw["resolve"] = ResolveOptions(not no_attachments, convert_schema1)
        return func(**kw)

    return wrapper


# Options that several commands share, declared once.
MIRROR = click.option(
    "--mirror",
    multiple=True,
    metavar="REGISTRY=HOST[:PORT]",
    callback=mirror_values,
    help="Pull REGISTRY's images from a mirror; names stay as listed.",
)
PLATFORMS = click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]",
    help="Carry only these platforms of multi-platform images.",
)
PREFIX = click.option(
    "--prefix",
    default="",
    metavar="PATH",
    help="Insert PATH before every repository name.",
)
CHUNK_SIZE = click.option(
    "--chunk-size",
    metavar="SIZE",
    help="Upload blobs in chunks of SIZE (for proxies that cap bodies).",
)


def _target(
    registry: str, pool_options: dict[str, Any], chunk_size: str | None, **extra: Any
) -> tuple[RegistryPool, Registry]:
    """The pool and the target registry; command-line credentials go to the
    target only."""
    pool_options["credentials"].explicit_for = registry
    pool = RegistryPool(**extra, **pool_options)
    target = pool.get(registry)
    if chunk_size:
        target.chunk_size = parse_size(chunk_size)
    return pool, target


@main.command("pack")
@click.argument("image_list", metavar="LIST")
@click.option(
    "-o",
    "--output",
    default="bundle.tar.zst",
    show_default=True,
    metavar="BUNDLE",
    callback=output_file,
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
    type=click.IntRange(min=-1),
    default=-1,
    show_default=True,
    help="zstd threads (-1: one per core).",
)
@MIRROR
@PLATFORMS
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
@click.option(
    "--split-size",
    metavar="SIZE",
    callback=lambda _ctx, _param, value: split_size_option(value) if value else None,
    help="Cut the bundle into parts of SIZE (700M, 4.7GB) or for a medium: "
    "cd, dvd, dvd-dl, fat32.",
)
@click.option(
    "--since",
    metavar="OLD",
    help="Leave out every blob OLD holds (a bundle, its .index.json or an inventory).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Blob cache that lets an interrupted pack resume "
    "[default: $XDG_CACHE_HOME/airgap/blobs].",
)
@resolve_options
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
    split_size: int | None,
    since: str | None,
    cache_dir: str | None,
    resolve: ResolveOptions,
    pool_options: dict[str, Any],
) -> None:
    """Pull every image of LIST (and the registry image) into one bundle."""
    if since and output != "-" and _same_bundle(since, output):
        raise UsageError(
            f"--since {since} names the bundle this pack writes",
            "write the new bundle under another name; the old one must stay",
        )
    if compression == "none" and output.endswith(".zst"):
        log.warning("--compression none writes a plain tar; %s says zstd", output)
    if split_size and output == "-":
        raise UsageError("--split-size writes files; it cannot go with -o -")
    images = load_image_list(image_list)
    pool = RegistryPool(mirrors=parse_mirrors(mirror), **pool_options)
    selected = parse_platforms(platforms)
    chosen = Platform.parse(docker_platform) if docker_platform else None
    options = PackOptions(
        compression,
        level,
        threads,
        bundle_platform(images, chosen, selected),
        split_size=split_size,
        baseline=load_baseline(since) if since else None,
    )
    result = pack(
        images,
        output,
        pool,
        options,
        selected,
        SETTINGS.progress,
        from_docker,
        resolve,
        cache=BlobCache(Path(cache_dir) if cache_dir else None),
    )
    index = result.index
    emit(
        {
            "bundle": result.path,
            "size": result.size,
            "sha256": result.sha256,
            "images": [i.to_json() for i in index.images],
            "blobs": len(index.blobs),
            "parts": [
                {"name": f.name, "sha256": f.sha256, "size": f.size}
                for f in result.files
            ],
            "omittedBlobs": len(index.extra.get(OMITTED) or []),
            "cacheHits": result.cache_hits,
        },
        [
            f"{result.path}: {len(index.images)} images, {len(index.blobs)} blobs, "
            f"{human_size(result.size)}",
            *(f"  {i.source} -> {i.target} {i.digest}" for i in index.images),
        ],
        err=output == "-",
    )


@main.command("unpack")
@click.argument("bundle")
@click.option(
    "--registry",
    metavar="HOST[:PORT]",
    callback=registry_host,
    help="The registry to push into.",
)
@PREFIX
@CHUNK_SIZE
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
@click.option(
    "--inventory-out",
    metavar="FILE",
    callback=output_file,
    help="After pushing, write what the registry holds (for pack --since).",
)
@click.option(
    "--no-attachments",
    is_flag=True,
    help="Push no signature, attestation, SBOM or other referrer of the bundle.",
)
@registry_options
@common
def unpack_command(
    bundle: str,
    registry: str | None,
    prefix: str,
    chunk_size: str | None,
    load: bool,
    start_registry: bool,
    inventory_out: str | None,
    no_attachments: bool,
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
    target = _target(registry, pool_options, chunk_size)[1] if registry else None
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
        result = unpack(
            reader,
            target,
            prefix,
            SETTINGS.progress,
            bootstrap,
            loader,
            attachments=not no_attachments,
        )
    except UnpackIncomplete as exc:
        if SETTINGS.json:
            exc.partial = _unpack_json(exc.result, registry)
        else:
            _emit_unpack(exc.result, registry)
        raise
    if target and inventory_out:
        inventory.write(inventory.take(target), inventory_out)
    _emit_unpack(result, registry)


def _docker_loader(index: DigestIndex, names: dict[int, str]) -> DockerLoader:
    return DockerLoader(Daemon.connect(), index, names)


def _same_bundle(one: str, other: str) -> bool:
    return os.path.abspath(base_name(one)) == os.path.abspath(base_name(other))


def _landed(landed: list[Any], registry: str | None) -> list[dict[str, str]]:
    """What unpack and sync pushed, as their --json results name it."""
    return [
        {
            "target": f"{registry}/{item.reference}",
            "digest": str(item.record.digest),
            "source": item.record.source,
        }
        for item in landed
    ]


def _unpack_json(result: Any, registry: str | None) -> dict[str, Any]:
    return {
        "registry": registry,
        "images": _landed(result.landed, registry),
        "loaded": [
            {"name": name, "imageId": image_id, "source": record.source}
            for record, name, image_id in result.loaded
        ],
        "broken": result.broken,
        "uploadedBytes": result.uploaded,
    }


def _emit_unpack(result: Any, registry: str | None) -> None:
    emit(
        _unpack_json(result, registry),
        [f"{registry}/{item.reference} {item.record.digest}" for item in result.landed]
        + [f"docker: {name} {image_id}" for _, name, image_id in result.loaded],
    )


@main.command("sync")
@click.argument("image_list", metavar="LIST")
@click.option(
    "--registry",
    metavar="HOST[:PORT]",
    callback=registry_host,
    help="The registry to copy into.",
)
@PREFIX
@MIRROR
@PLATFORMS
@CHUNK_SIZE
@resolve_options
@registry_options
@common
def sync_command(
    image_list: str,
    registry: str | None,
    prefix: str,
    mirror: tuple[str, ...],
    platforms: tuple[str, ...],
    chunk_size: str | None,
    resolve: ResolveOptions,
    pool_options: dict[str, Any],
) -> None:
    """Copy every image of LIST straight from its registry into another."""
    if not registry:
        raise UsageError("sync needs --registry HOST[:PORT]")
    if prefix:
        checked_prefix(prefix)  # before any registry is asked anything
    images = load_image_list(image_list)
    pool, target = _target(
        registry, pool_options, chunk_size, mirrors=parse_mirrors(mirror)
    )
    options = SyncOptions(prefix, parse_platforms(platforms), resolve)
    result = sync(images, pool, target, options, SETTINGS.progress)
    emit(
        {
            "registry": registry,
            "images": _landed(result.landed, registry),
            "uploadedBytes": result.uploaded,
        },
        [f"{registry}/{item.reference} {item.record.digest}" for item in result.landed],
    )


@main.command("verify")
@click.argument("bundle")
@common
def verify_command(bundle: str) -> None:
    """Check every blob and every reference of BUNDLE, offline."""
    reader = open_bundle(bundle)
    result = verify(reader, SETTINGS.progress)
    ok = not result.problems
    lines = (
        [
            f"{bundle}: OK, {len(result.index.images)} images, {result.blobs} blobs, "
            f"{human_size(result.size)} verified"
        ]
        if ok
        else [
            p if p.startswith(f"{bundle}:") else f"{bundle}: {p}"
            for p in result.problems
        ]
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
    hint = (
        "copy the parts named above again from the source media"
        if reader.part_problems()
        else "copy the bundle again from the source media"
    )
    error = IntegrityError(
        f"{bundle}: {len(result.problems)} problem(s); first: {result.problems[0]}",
        hint,
    )
    error.partial = {"bundle": bundle, "problems": result.problems}
    raise error


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
    since, left_out = index.extra.get(SINCE), index.extra.get(OMITTED) or []
    lines = _list_lines(index, prefix)
    if since:
        lines.append(
            f"differential: {len(left_out)} blobs left out, held by "
            f"{since.get('bundle', 'an earlier bundle')} on the isolated side"
        )
    emit(
        {
            "bundle": bundle,
            "images": _listing(index, prefix),
            "since": since,
            "omittedBlobs": len(left_out),
        },
        lines,
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
        if item.get("attachmentOf"):
            marker = f" [attached to {item['attachmentOf'][:19]}]"
        rows.append(
            (
                item["source"] + marker,
                item["target"],
                digest,
                ",".join(item["platforms"]) or "-",
                human_size(item["size"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


@main.command("inventory")
@click.option(
    "--registry", required=True, metavar="HOST[:PORT]", callback=registry_host
)
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE",
    callback=output_file,
    help="The inventory to write.",
)
@registry_options
@common
def inventory_command(registry: str, output: str, pool_options: dict[str, Any]) -> None:
    """Record what a registry holds, for a later pack --since FILE."""
    held = inventory.take(_target(registry, pool_options, None)[1])
    inventory.write(held, output)
    blobs = len(held.blobs())
    emit(
        {"inventory": output, "repositories": len(held.repositories), "blobs": blobs},
        [f"{output}: {len(held.repositories)} repositories, {blobs} blobs"],
    )


@main.group("cache")
def cache_group() -> None:
    """The blob cache that lets an interrupted pack resume."""


@cache_group.command("prune")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="The cache.")
@common
def cache_prune_command(cache_dir: str | None) -> None:
    """Remove every cached blob."""
    cache = BlobCache(Path(cache_dir) if cache_dir else None)
    count, size = cache.prune()
    emit(
        {"cache": str(cache.root), "removed": count, "bytes": size},
        [f"{cache.root}: removed {count} blobs, {human_size(size)}"],
    )
