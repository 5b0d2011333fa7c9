"""Bad input against real registries: unknown images, unreachable registries,
and bundles that were damaged on the way (flipped bytes, cut short, a blob
missing, not a bundle at all). Each ends with its exit code and a message that
says what broke, and nothing of a broken image reaches the target."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import imagebuild as ib
import pytest
from servers import CliFunction, Registry, RegistryFactory, free_port, skopeo_digest


@dataclass
class Upstream:
    registry: Registry
    app: ib.Image  # base + its own layer: the one the corruption tests break
    sibling: ib.Image  # shares app's base layer, not its own layer
    other: ib.Image  # OCI, shares nothing with app

    @property
    def digests(self) -> dict[str, str]:
        return {
            "team/app:1.0": self.app.digest,
            "team/sibling:1": self.sibling.digest,
            "team/other:2": self.other.digest,
        }

    def image_list(self, tmp_path: Path, *extra: str) -> Path:
        host = self.registry.host
        lines = [f"  - {host}/{ref}" for ref in (*self.digests, *extra)]
        path = tmp_path / "images.yaml"
        path.write_text("registry-image: false\nimages:\n" + "\n".join(lines) + "\n")
        return path


@pytest.fixture
def upstream(registry_factory: RegistryFactory) -> Upstream:
    registry = registry_factory()
    base = ib.layer(ib.random_files(10, 3, 24 * 1024))
    app = ib.image([base, ib.layer(ib.random_files(11, 2, 24 * 1024))])
    sibling = ib.image([base, ib.layer(ib.random_files(12, 1, 8 * 1024))])
    other = ib.image(
        [ib.layer(ib.random_files(13, 2, 16 * 1024), media_type_style="oci")],
        oci=True,
    )
    ib.push_image(registry, "team/app", "1.0", app)
    ib.push_image(registry, "team/sibling", "1", sibling)
    ib.push_image(registry, "team/other", "2", other)
    return Upstream(registry, app, sibling, other)


def pack(cli: CliFunction, upstream: Upstream, tmp_path: Path, *options: str) -> Path:
    none = "--compression" in options
    bundle = tmp_path / ("b.tar" if none else "b.tar.zst")
    result = cli(
        "pack", str(upstream.image_list(tmp_path)), "-o", str(bundle), *options
    )
    assert result.exit_code == 0, result
    return bundle


def data_offset(bundle: Path, digest: str) -> tuple[int, int]:
    """Where the bytes of blob `digest` start in an uncompressed bundle, and
    their size; read with tarfile's index only, nothing extracted."""
    with tarfile.open(bundle) as tar:
        info = tar.getmember(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        return info.offset_data, info.size


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def assert_landed(registry: Registry, ref: str, digest: str) -> None:
    repo, tag = ref.rsplit(":", 1)
    assert registry.tags(repo) == [tag], ref
    assert skopeo_digest(ref, registry) == digest, ref


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("airgap: error:")]
    assert lines, stderr
    return lines[-1]


# -- pack: the source is wrong --------------------------------------------------


def test_pack_of_an_unknown_image_exits_3_naming_it(
    upstream: Upstream, tmp_path: Path, cli: CliFunction
) -> None:
    image_list = upstream.image_list(tmp_path, "team/nope:9")
    out = tmp_path / "out"
    out.mkdir()

    result = cli("pack", str(image_list), "-o", str(out / "b.tar.zst"))

    assert result.exit_code == 3, result
    assert f"{upstream.registry.host}/team/nope:9" in error_line(result.stderr)
    assert list(out.iterdir()) == []


def test_pack_of_an_unknown_tag_of_a_known_repository_exits_3(
    upstream: Upstream, tmp_path: Path, cli: CliFunction
) -> None:
    image_list = upstream.image_list(tmp_path, "team/app:nope")

    result = cli("pack", str(image_list), "-o", str(tmp_path / "b.tar.zst"))

    assert result.exit_code == 3, result
    assert "team/app:nope" in error_line(result.stderr)
    assert "not found" in result.stderr


def test_pack_from_an_unreachable_registry_exits_3(
    tmp_path: Path, cli: CliFunction
) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    image_list = tmp_path / "images.yaml"
    image_list.write_text(f"registry-image: false\nimages:\n  - {host}/a/b:1\n")

    result = cli("pack", str(image_list), "-o", str(tmp_path / "b.tar.zst"))

    assert result.exit_code == 3, result
    assert host in error_line(result.stderr)
    assert "hint:" in result.stderr
    assert not (tmp_path / "b.tar.zst").exists()


def test_pack_failing_midway_leaves_no_bundle_and_no_temp_file(
    upstream: Upstream, tmp_path: Path, cli: CliFunction
) -> None:
    # Remove one layer from the source after its manifest is there: the pack
    # resolves fine and breaks only while it is writing that layer.
    layer = upstream.other.layers[0].digest
    deleted = upstream.registry.request("DELETE", f"/v2/team/other/blobs/{layer}")
    assert deleted.status_code == 202, deleted.text
    out = tmp_path / "out"
    out.mkdir()

    result = cli(
        "pack", str(upstream.image_list(tmp_path)), "-o", str(out / "b.tar.zst")
    )

    assert result.exit_code == 3, result
    assert layer in error_line(result.stderr)
    assert list(out.iterdir()) == []


def carried_alone(bundle: Path, tmp_path: Path) -> Path:
    """The bundle moved away from its .sha256 and .index.json side files, as
    when only the bundle was copied: then the stream itself must tell."""
    alone = tmp_path / "alone"
    alone.mkdir()
    return bundle.rename(alone / bundle.name)


# -- a flipped byte -------------------------------------------------------------


@pytest.fixture
def flipped_layer_bundle(upstream: Upstream, tmp_path: Path, cli: CliFunction) -> Path:
    """An uncompressed bundle with one byte of app's own layer flipped."""
    bundle = pack(cli, upstream, tmp_path, "--compression", "none")
    offset, size = data_offset(bundle, upstream.app.layers[1].digest)
    flip_byte(bundle, offset + size // 2)
    return bundle


def test_unpack_of_a_flipped_layer_byte_exits_5_naming_blob_and_image(
    upstream: Upstream,
    flipped_layer_bundle: Path,
    registry_factory: RegistryFactory,
    cli: CliFunction,
) -> None:
    target = registry_factory()

    result = cli("unpack", str(flipped_layer_bundle), "--registry", target.host)

    assert result.exit_code == 5, result
    message = error_line(result.stderr)
    assert upstream.app.layers[1].digest in message
    assert "team/app:1.0" in message
    assert "hint:" in result.stderr


def test_unpack_of_a_flipped_layer_byte_pushes_no_tag_for_that_image_only(
    upstream: Upstream,
    flipped_layer_bundle: Path,
    registry_factory: RegistryFactory,
    cli: CliFunction,
) -> None:
    target = registry_factory()

    result = cli("unpack", str(flipped_layer_bundle), "--registry", target.host)

    assert result.exit_code == 5, result
    assert target.tags("team/app") == []
    assert target.get_manifest("team/app", upstream.app.digest).status_code == 404
    # The sibling shares app's (intact) base layer; the other image shares nothing.
    assert_landed(target, "team/sibling:1", upstream.sibling.digest)
    assert_landed(target, "team/other:2", upstream.other.digest)


def test_unpack_json_of_a_partly_broken_bundle_is_one_failed_document(
    flipped_layer_bundle: Path,
    registry_factory: RegistryFactory,
    cli: CliFunction,
) -> None:
    target = registry_factory()

    result = cli(
        "unpack", str(flipped_layer_bundle), "--registry", target.host, "--json"
    )

    assert result.exit_code == 5, result
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["error"]["exitCode"] == 5
    assert list(document["broken"]) == ["team/app:1.0"]
    assert sorted(i["target"] for i in document["images"]) == [
        f"{target.host}/team/other:2",
        f"{target.host}/team/sibling:1",
    ]


def test_verify_of_a_flipped_layer_byte_exits_5_naming_the_blob(
    upstream: Upstream, flipped_layer_bundle: Path, cli: CliFunction
) -> None:
    result = cli("verify", str(flipped_layer_bundle))

    assert result.exit_code == 5, result
    error_line(result.stderr)
    # Every problem has a line of its own; the bad part (the file) comes first.
    assert upstream.app.layers[1].digest in result.stderr


def test_verify_of_a_flipped_manifest_byte_exits_5_naming_it(
    upstream: Upstream, tmp_path: Path, cli: CliFunction
) -> None:
    bundle = pack(cli, upstream, tmp_path, "--compression", "none")
    offset, _ = data_offset(bundle, upstream.other.digest)
    flip_byte(bundle, offset + 1)

    result = cli("verify", str(bundle))

    assert result.exit_code == 5, result
    error_line(result.stderr)
    assert upstream.other.digest in result.stderr


@pytest.mark.parametrize("side_files", [True, False], ids=["side-files", "alone"])
def test_flipped_byte_in_a_zstd_bundle_exits_5_and_tags_no_affected_image(
    side_files: bool,
    upstream: Upstream,
    tmp_path: Path,
    registry_factory: RegistryFactory,
    cli: CliFunction,
) -> None:
    bundle = pack(cli, upstream, tmp_path)
    if not side_files:
        bundle = carried_alone(bundle, tmp_path)
    flip_byte(bundle, bundle.stat().st_size // 2)
    target = registry_factory()

    verified = cli("verify", str(bundle))
    unpacked = cli("unpack", str(bundle), "--registry", target.host)

    assert verified.exit_code == 5, verified
    assert unpacked.exit_code == 5, unpacked
    landed = {ref for ref in upstream.digests if target.tags(ref.split(":")[0])}
    assert landed != set(upstream.digests)
    for ref in landed:  # whatever did land is whole
        assert skopeo_digest(ref, target) == upstream.digests[ref]


# -- cut short --------------------------------------------------------------------

CUTS = {
    "half": lambda size: size // 2,
    "at 4 KiB": lambda size: 4096,
    "one byte short": lambda size: size - 1,
    "checksum cut": lambda size: size - 3,
}


@pytest.mark.parametrize("side_files", [True, False], ids=["side-files", "alone"])
@pytest.mark.parametrize("cut", CUTS, ids=list(CUTS))
def test_truncated_zstd_bundle_fails_verify_and_unpack_with_5(
    cut: str,
    side_files: bool,
    upstream: Upstream,
    tmp_path: Path,
    registry_factory: RegistryFactory,
    cli: CliFunction,
) -> None:
    bundle = pack(cli, upstream, tmp_path)
    if not side_files:
        bundle = carried_alone(bundle, tmp_path)
    data = bundle.read_bytes()
    bundle.write_bytes(data[: CUTS[cut](len(data))])
    target = registry_factory()

    verified = cli("verify", str(bundle))
    unpacked = cli("unpack", str(bundle), "--registry", target.host)

    assert verified.exit_code == 5, verified
    assert unpacked.exit_code == 5, unpacked
    assert "truncated" in verified.stderr + unpacked.stderr


def test_zstd_bundle_cut_in_its_checksum_still_lands_every_verified_image(
    upstream: Upstream,
    tmp_path: Path,
    registry_factory: RegistryFactory,
    cli: CliFunction,
) -> None:
    # Every blob is whole and checked by its sha256; only the frame's end is gone.
    bundle = carried_alone(pack(cli, upstream, tmp_path), tmp_path)
    bundle.write_bytes(bundle.read_bytes()[:-2])
    target = registry_factory()

    result = cli("unpack", str(bundle), "--registry", target.host)

    assert result.exit_code == 5, result
    assert "truncated" in error_line(result.stderr)
    for ref, digest in upstream.digests.items():
        assert_landed(target, ref, digest)


def test_uncompressed_bundle_cut_inside_its_last_layer_fails_with_5(
    upstream: Upstream,
    tmp_path: Path,
    registry_factory: RegistryFactory,
    cli: CliFunction,
) -> None:
    bundle = carried_alone(
        pack(cli, upstream, tmp_path, "--compression", "none"), tmp_path
    )
    with tarfile.open(bundle) as tar:
        last = tar.getmembers()[-1]
    bundle.write_bytes(bundle.read_bytes()[: last.offset_data + last.size - 1])
    digest = "sha256:" + last.name.rsplit("/", 1)[1]
    images = {"team/app:1.0": upstream.app, "team/sibling:1": upstream.sibling}
    images["team/other:2"] = upstream.other
    cut_off = {
        ref for ref, img in images.items() if digest in {b.digest for b in img.layers}
    }
    target = registry_factory()

    verified = cli("verify", str(bundle))
    unpacked = cli("unpack", str(bundle), "--registry", target.host)

    assert verified.exit_code == 5, verified
    assert digest in verified.stderr
    assert unpacked.exit_code == 5, unpacked
    assert digest in error_line(unpacked.stderr)
    assert cut_off
    for ref, img in images.items():
        if ref in cut_off:
            assert target.tags(ref.split(":")[0]) == [], ref
        else:
            assert_landed(target, ref, img.digest)


# -- a blob missing -----------------------------------------------------------------


def without_member(bundle: Path, name: str, out: Path) -> None:
    """Copy the tar `bundle` to `out`, member by member, leaving out `name`."""
    with (
        tarfile.open(bundle) as src,
        tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for info in src.getmembers():
            if info.name == name:
                continue
            stream = src.extractfile(info) if info.isfile() else None
            dst.addfile(info, stream)


def test_bundle_missing_a_layer_fails_with_5_naming_blob_and_image(
    upstream: Upstream,
    tmp_path: Path,
    registry_factory: RegistryFactory,
    cli: CliFunction,
) -> None:
    bundle = pack(cli, upstream, tmp_path, "--compression", "none")
    layer = upstream.other.layers[0].digest
    damaged = tmp_path / "missing.tar"
    without_member(bundle, f"blobs/sha256/{layer.removeprefix('sha256:')}", damaged)
    target = registry_factory()

    verified = cli("verify", str(damaged))
    unpacked = cli("unpack", str(damaged), "--registry", target.host)

    assert verified.exit_code == 5, verified
    assert layer in error_line(verified.stderr)
    assert "missing" in error_line(verified.stderr)
    assert unpacked.exit_code == 5, unpacked
    assert layer in error_line(unpacked.stderr)
    assert "team/other:2" in error_line(unpacked.stderr)
    assert target.tags("team/other") == []
    assert_landed(target, "team/app:1.0", upstream.app.digest)


def test_bundle_missing_a_manifest_fails_verify_with_5(
    upstream: Upstream, tmp_path: Path, cli: CliFunction
) -> None:
    bundle = pack(cli, upstream, tmp_path, "--compression", "none")
    damaged = tmp_path / "missing.tar"
    hex_ = upstream.app.digest.removeprefix("sha256:")
    without_member(bundle, f"blobs/sha256/{hex_}", damaged)

    result = cli("verify", str(damaged))

    assert result.exit_code == 5, result
    assert upstream.app.digest in error_line(result.stderr)


def test_intact_rewritten_bundle_still_verifies(
    upstream: Upstream, tmp_path: Path, cli: CliFunction
) -> None:
    # The control for the tests above: the rewrite alone breaks nothing.
    bundle = pack(cli, upstream, tmp_path, "--compression", "none")
    copy = tmp_path / "copy.tar"
    without_member(bundle, "no such member", copy)

    result = cli("verify", str(copy))

    assert result.exit_code == 0, result


# -- not a bundle at all -------------------------------------------------------------

NOT_BUNDLES = {
    "text": b"just some notes\n" * 100,
    "empty": b"",
    "zstd of text": ib.compress(b"hello\n" * 1000, "zstd"),
    "gzip": ib.compress(b"hello\n" * 1000, "gzip"),
    "a plain tar": ib.tar_bytes({"etc/passwd": b"root:x:0:0::/root:/bin/sh\n"}),
}


@pytest.mark.parametrize("kind", NOT_BUNDLES, ids=list(NOT_BUNDLES))
@pytest.mark.parametrize("command", ["verify", "list"])
def test_a_file_that_is_not_a_bundle_is_refused_clearly(
    kind: str, command: str, tmp_path: Path, cli: CliFunction
) -> None:
    path = tmp_path / "thing.tar.zst"
    path.write_bytes(NOT_BUNDLES[kind])

    result = cli(command, str(path))

    assert result.exit_code == 5, result
    message = error_line(result.stderr)
    if kind == "a plain tar":
        assert "unexpected member 'etc'" in message
    else:
        assert "not an airgap bundle" in message
    assert result.stderr.splitlines()[-1].startswith("hint: "), result
    assert "Traceback" not in result.stderr


def test_unpack_of_a_file_that_is_not_a_bundle_pushes_nothing(
    tmp_path: Path, registry: Registry, cli: CliFunction
) -> None:
    path = tmp_path / "notes.tar.zst"
    path.write_bytes(b"not a bundle\n" * 100)

    result = cli("unpack", str(path), "--registry", registry.host)

    assert result.exit_code == 5, result
    assert "not an airgap bundle" in error_line(result.stderr)
    assert registry.catalog() == []


def test_verify_of_a_missing_file_exits_2(tmp_path: Path, cli: CliFunction) -> None:
    result = cli("verify", str(tmp_path / "nope.tar.zst"))

    assert result.exit_code == 2, result
    assert "nope.tar.zst" in error_line(result.stderr)


# -- list -------------------------------------------------------------------------


def test_list_shows_source_target_digest_platforms_and_size(
    upstream: Upstream, tmp_path: Path, cli: CliFunction
) -> None:
    bundle = pack(cli, upstream, tmp_path)

    result = cli("list", str(bundle))

    assert result.exit_code == 0, result
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["SOURCE", "TARGET", "DIGEST", "PLATFORMS", "SIZE"]
    assert len(rows) == 3
    host = upstream.registry.host
    for ref, digest in upstream.digests.items():
        (row,) = [r for r in rows if r.startswith(f"{host}/{ref} ")]
        assert row.split()[1:4] == [ref, digest, "linux/amd64"], row


def test_list_json_gives_every_field_per_image(
    upstream: Upstream, tmp_path: Path, cli: CliFunction
) -> None:
    bundle = pack(cli, upstream, tmp_path)

    result = cli("list", str(bundle), "--json")

    assert result.exit_code == 0, result
    document = json.loads(result.stdout)
    assert document["ok"] is True
    by_target = {item["target"]: item for item in document["images"]}
    assert set(by_target) == set(upstream.digests)
    app = by_target["team/app:1.0"]
    assert app["source"] == f"{upstream.registry.host}/team/app:1.0"
    assert app["digest"] == upstream.app.digest
    assert app["platforms"] == ["linux/amd64"]
    expected_size = upstream.app.size + sum(b.size for b in upstream.app.blobs)
    assert app["size"] == expected_size
    assert app["registryImage"] is False


def test_list_with_prefix_shows_target_names_under_it(
    upstream: Upstream, tmp_path: Path, cli: CliFunction
) -> None:
    bundle = pack(cli, upstream, tmp_path)

    result = cli("list", str(bundle), "--json", "--prefix", "mirror")

    assert result.exit_code == 0, result
    targets = {item["target"] for item in json.loads(result.stdout)["images"]}
    assert targets == {f"mirror/{ref}" for ref in upstream.digests}


def test_list_reads_a_bundle_from_stdin(
    upstream: Upstream, tmp_path: Path, cli: CliFunction
) -> None:
    bundle = pack(cli, upstream, tmp_path)

    result = cli("list", "-", "--json", input=bundle.read_bytes())

    assert result.exit_code == 0, result
    digests = {i["digest"] for i in json.loads(result.stdout)["images"]}
    assert digests == set(upstream.digests.values())
