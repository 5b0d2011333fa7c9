"""pack --split-size: parts cut as the stream is produced, read back as one
stream from any name of the bundle, and every bad part named."""

from __future__ import annotations

import io
import json
import math
import subprocess
import tarfile
from pathlib import Path

import imagebuild as ib
import pytest
from servers import Registry, skopeo_digest

from airgap import media
from airgap.errors import UsageError
from airgap.media import parse_split_size


@pytest.fixture(autouse=True)
def kilobyte_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests cut kilobyte bundles to land boundaries exactly; the 1 MB
    floor protects users from a typo, not the format from small parts."""
    monkeypatch.setattr(media, "MIN_SPLIT_SIZE", 1)


def push_app(registry: Registry) -> tuple[str, ib.Image]:
    """An image of two incompressible layers, 192 KiB and 96 KiB."""
    big = ib.layer(ib.random_files(11, 3, 64 * 1024))
    small = ib.layer(ib.random_files(12, 3, 32 * 1024))
    img = ib.image([big, small], cmd=["/app"])
    return ib.push_image(registry, "team/app", "1.0", img), img


def write_list(tmp_path: Path, registry: Registry) -> Path:
    path = tmp_path / "images.yaml"
    path.write_text(
        f"registry-image: false\nimages:\n  - {registry.host}/team/app:1.0\n"
    )
    return path


def parts_of(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.[0-9][0-9][0-9]"))


def joined(parts: list[Path]) -> bytes:
    return b"".join(p.read_bytes() for p in parts)


def member_offsets(tar_bytes: bytes) -> dict[str, tuple[int, int, int]]:
    """name -> (header offset, data offset, size) in an uncompressed bundle."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        return {m.name: (m.offset, m.offset_data, m.size) for m in tar}


def sha256sum_check(folder: Path, sums: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sha256sum", "-c", sums], cwd=folder, capture_output=True)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("700M", 700_000_000),
        ("4G", 4_000_000_000),
        ("4.7GB", 4_700_000_000),
        ("512MiB", 512 * 2**20),
        ("12345", 12345),
        ("cd", 700_000_000),
        ("dvd", 4_700_000_000),
        ("DVD-DL", 8_500_000_000),
        ("fat32", 2**32 - 1),
    ],
)
def test_split_size_reads_units_and_media_presets(text: str, size: int) -> None:
    assert parse_split_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-5M", "4X", "floppy", "MB", "nan"])
def test_split_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(UsageError):
        parse_split_size(text)


@pytest.mark.parametrize("where", ["inside a tar header", "inside a blob"])
def test_parts_cut_at_exact_offsets_read_back_as_one_stream(
    tmp_path: Path, registry_factory, cli, where: str
) -> None:
    upstream, isolated = registry_factory(), registry_factory()
    digest, img = push_app(upstream)
    image_list = write_list(tmp_path, upstream)
    plain = tmp_path / "plain" / "p.tar"
    plain.parent.mkdir()
    made = cli("pack", str(image_list), "-o", str(plain), "--compression", "none")
    assert made.exit_code == 0, made
    offsets = member_offsets(plain.read_bytes())
    header, data, size = offsets[f"blobs/sha256/{img.layers[0].digest[7:]}"]
    split = header + 100 if where == "inside a tar header" else data + size // 2
    out = tmp_path / "split"
    out.mkdir()
    bundle = out / "b.tar"

    packed = cli(
        "pack", str(image_list), "-o", str(bundle), "--compression", "none",
        "--split-size", str(split), "--json",
    )  # fmt: skip

    assert packed.exit_code == 0, packed
    parts = parts_of(out, "b.tar")
    assert len(parts) == math.ceil(plain.stat().st_size / split)
    assert all(p.stat().st_size == split for p in parts[:-1])
    stream = joined(parts)
    header, data, size = member_offsets(stream)[
        f"blobs/sha256/{img.layers[0].digest[7:]}"
    ]
    inside = (header, data) if where == "inside a tar header" else (data, data + size)
    assert inside[0] < split < inside[1]
    result = json.loads(packed.stdout)
    assert [p["name"] for p in result["parts"]] == [p.name for p in parts]
    side = json.loads((out / "b.index.json").read_text())
    assert side["parts"] == len(parts)
    assert [f["size"] for f in side["files"]] == [p.stat().st_size for p in parts]
    assert sha256sum_check(out, "b.sha256").returncode == 0
    for name in ("b.sha256", "b.tar.001", "b"):
        verified = cli("verify", str(out / name))
        assert verified.exit_code == 0, (name, verified)
    unpacked = cli("unpack", str(out / "b.tar.001"), "--registry", isolated.host)
    assert unpacked.exit_code == 0, unpacked
    assert skopeo_digest("team/app:1.0", isolated) == digest


def test_zstd_parts_concatenate_into_a_stream_tar_can_list(
    tmp_path: Path, registry, cli
) -> None:
    digest, img = push_app(registry)
    image_list = write_list(tmp_path, registry)
    bundle = tmp_path / "b.tar.zst"

    packed = cli("pack", str(image_list), "-o", str(bundle), "--split-size", "64K")

    assert packed.exit_code == 0, packed
    assert not bundle.exists()
    parts = parts_of(tmp_path, "b.tar.zst")
    assert len(parts) >= 4
    listing = subprocess.run(
        "cat b.tar.zst.* | zstd -dc | tar t",
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert f"blobs/sha256/{img.layers[1].digest[7:]}" in listing.split()
    listed = cli("list", str(tmp_path / "b"), "--json")
    assert listed.exit_code == 0, listed
    assert json.loads(listed.stdout)["images"][0]["digest"] == digest


def test_a_shorter_pack_to_the_same_name_leaves_no_stale_parts(
    tmp_path: Path, registry, cli
) -> None:
    push_app(registry)
    image_list = write_list(tmp_path, registry)
    bundle = str(tmp_path / "b.tar.zst")
    first = cli("pack", str(image_list), "-o", bundle, "--split-size", "32K")
    assert first.exit_code == 0, first
    many = len(parts_of(tmp_path, "b.tar.zst"))

    again = cli("pack", str(image_list), "-o", bundle, "--split-size", "128K")

    assert again.exit_code == 0, again
    parts = parts_of(tmp_path, "b.tar.zst")
    assert len(parts) < many
    assert len((tmp_path / "b.sha256").read_text().splitlines()) == len(parts)
    assert cli("verify", bundle + ".001").exit_code == 0


def test_pack_failing_mid_stream_removes_every_part(
    tmp_path: Path, registry, cli
) -> None:
    _, img = push_app(registry)
    # Resolving still works (manifest and config are there); the layer fetch,
    # after the first parts are written, does not.
    gone = img.layers[1].digest
    deleted = registry.request("DELETE", f"/v2/team/app/blobs/{gone}")
    assert deleted.status_code == 202, deleted.text
    image_list = write_list(tmp_path, registry)

    packed = cli(
        "pack", str(image_list), "-o", str(tmp_path / "b.tar.zst"),
        "--split-size", "16K", "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip

    assert packed.exit_code == 3, packed
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith((".b", "b"))]
    assert left == []


@pytest.fixture
def split_bundle(tmp_path_factory, registry, cli) -> Path:
    """A 2.3 MiB zstd bundle in 512 KiB parts: part 4 lies beyond what the
    reader takes in while reading the header."""
    folder = tmp_path_factory.mktemp("split")
    big = ib.layer(ib.random_files(21, 3, 512 * 1024))
    small = ib.layer(ib.random_files(22, 3, 256 * 1024))
    ib.push_image(registry, "team/app", "1.0", ib.image([big, small]))
    image_list = write_list(folder, registry)
    bundle = folder / "b.tar.zst"
    packed = cli("pack", str(image_list), "-o", str(bundle), "--split-size", "512K")
    assert packed.exit_code == 0, packed
    assert len(parts_of(folder, "b.tar.zst")) == 5
    return folder


def missing(path: Path) -> str:
    path.unlink()
    return "missing"


def truncated(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:-1000])
    return "truncated"


def corrupted(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return "corrupt"


@pytest.mark.parametrize("damage", [missing, truncated, corrupted])
@pytest.mark.parametrize("number", [1, 4])
def test_verify_names_exactly_the_bad_part(
    split_bundle: Path, cli, damage, number: int
) -> None:
    parts = parts_of(split_bundle, "b.tar.zst")
    bad = parts[number - 1]
    word = damage(bad)

    verified = cli("verify", str(split_bundle / "b.sha256"), "--json")

    assert verified.exit_code == 5, verified
    error = json.loads(verified.stdout)["error"]["message"]
    assert f"{bad.name} is {word}" in error
    named = {p.name for p in parts if p.name in verified.stderr}
    assert named == {bad.name}, verified.stderr


def test_two_bad_parts_are_both_named(split_bundle: Path, cli) -> None:
    parts = parts_of(split_bundle, "b.tar.zst")
    corrupted(parts[1])
    missing(parts[3])
    truncated(parts[4])

    verified = cli("verify", str(split_bundle / "b"))

    assert verified.exit_code == 5, verified
    assert f"{parts[1].name} is corrupt" in verified.stderr
    assert f"{parts[3].name} is missing" in verified.stderr
    assert f"{parts[4].name} is truncated" in verified.stderr


def test_unpack_names_a_corrupt_part(split_bundle: Path, registry_factory, cli) -> None:
    isolated = registry_factory()
    parts = parts_of(split_bundle, "b.tar.zst")
    corrupted(parts[3])

    unpacked = cli("unpack", str(parts[0]), "--registry", isolated.host)

    assert unpacked.exit_code == 5, unpacked
    assert f"{parts[3].name} is corrupt" in unpacked.stderr
    assert isolated.tags("team/app") == []
