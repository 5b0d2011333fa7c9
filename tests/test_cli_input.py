"""Input the command line must refuse, or cut short, cleanly: click's own usage
errors in the house format, option values checked before any request, output
paths checked before the work, split sizes, a reader closing the bundle
stream, and Ctrl-C or SIGTERM in the middle of a split pack."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import imagebuild as ib
import pytest
from servers import CliFunction, Registry
from test_resume import AIRGAP, GateProxy

from airgap import media
from airgap.errors import AirgapError, UsageError
from airgap.parts import PartDamaged, PartFile, PartReader
from airgap.reference import parse_registry_host

NOISE = ("Traceback", "Exception ignored", "Usage:", "Errno")


def write_list(folder: Path, host: str, repo: str = "team/app:1") -> Path:
    path = folder / "images.yaml"
    path.write_text(f"registry-image: false\nimages:\n  - {host}/{repo}\n")
    return path


def assert_house_error(stderr: str, message: str, hint: str) -> None:
    """One error line, ``message`` in it, then the hint, last; log lines
    before them are fine."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("airgap: error: ")]
    assert len(errors) == 1 and message in errors[0], stderr
    assert lines[-2:] == [errors[0], lines[-1]], stderr
    assert lines[-1].startswith("hint: ") and hint in lines[-1], stderr
    assert not [word for word in NOISE if word in stderr], stderr


@pytest.fixture
def small_image(registry: Registry) -> Registry:
    img = ib.image([ib.layer(ib.random_files(3, 2, 4096))], cmd=["/x"])
    ib.push_image(registry, "team/app", "1", img)
    return registry


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port that records whether anything connected to it."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def connected(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return False
    return True


# -- 1: click's usage errors ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message", "command"),
    [
        (["pack", "L", "--level", "99"], "'--level': 99 is not in the range", "pack"),
        (
            ["pack", "L", "--compression", "gzip"],
            "'gzip' is not one of 'zstd', 'none'",
            "pack",
        ),
        (["pack", "L", "--ca-cert", "/nonexistent/ca.pem"], "does not exist", "pack"),
        (["inventory", "--registry", "localhost:5000"], "Missing option", "inventory"),
        (["unpack"], "Missing argument 'BUNDLE'", "unpack"),
        (["bogus"], "No such command 'bogus'", ""),
    ],
)
def test_click_usage_errors_are_one_line_and_a_hint_exit_2(
    cli: CliFunction, args: list[str], message: str, command: str
) -> None:
    result = cli(*args)

    assert result.exit_code == 2, result
    where = f"airgap {command}".strip()
    assert_house_error(result.stderr, message, f"see '{where} --help'")
    assert result.stdout == ""


@pytest.mark.parametrize("place", ["before the command", "after the command"])
def test_click_usage_errors_honour_json_in_either_place(
    cli: CliFunction, place: str
) -> None:
    args = ["pack", "L", "--level", "99"]
    args = ["--json", *args] if place == "before the command" else [*args, "--json"]

    result = cli(*args)

    assert result.exit_code == 2, result
    error = json.loads(result.stdout)["error"]
    assert error["exitCode"] == 2
    assert "--level" in error["message"]
    assert error["hint"] == "see 'airgap pack --help'"


def test_help_and_version_still_exit_0(cli: CliFunction) -> None:
    helped, version = cli("pack", "--help"), cli("--version")

    assert helped.exit_code == 0 and helped.stdout.startswith("Usage: airgap pack")
    assert version.exit_code == 0 and version.stdout.startswith("airgap")


def test_the_sigterm_handler_is_restored_after_a_run(cli: CliFunction) -> None:
    before = signal.getsignal(signal.SIGTERM)

    assert cli("--version").exit_code == 0
    assert cli("pack", "L", "--level", "99").exit_code == 2

    assert signal.getsignal(signal.SIGTERM) == before


# -- 3: registry hosts ------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["localhost", "localhost:5000", "10.0.0.1:443", "[::1]:5000", "a.b-c.io"]
)
def test_registry_hosts_that_are_host_and_port_pass(text: str) -> None:
    assert parse_registry_host(text) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1:99999", "port 99999 is not in 1-65535"),
        ("localhost:0", "port 0 is not in 1-65535"),
        ("http://127.0.0.1:5000", "no scheme"),
        ("127.0.0.1:5000/foo", "without a path"),
        ("local_host", "not a HOST[:PORT]"),
        ("localhost:", "not a HOST[:PORT]"),
        ("", "not a HOST[:PORT]"),
    ],
)
def test_registry_hosts_with_a_bad_port_scheme_or_path_are_refused(
    text: str, reason: str
) -> None:
    with pytest.raises(UsageError) as caught:
        parse_registry_host(text, "--registry")

    assert caught.value.message.startswith(f"invalid --registry {text!r}")
    assert reason in caught.value.message
    assert caught.value.hint and "HOST[:PORT], e.g. localhost:5000" in caught.value.hint


def registry_args(option: str, value: str, folder: Path, host: str) -> list[str]:
    image_list = str(write_list(folder, host))
    bundle = str(folder / "b.tar.zst")
    return {
        "unpack --registry": ["unpack", bundle, "--registry", value],
        "sync --registry": ["sync", image_list, "--registry", value],
        "inventory --registry": ["inventory", "--registry", value, "-o", "i.json"],
        "pack --insecure-registry": ["pack", image_list, "--insecure-registry", value],
        "pack --mirror": ["pack", image_list, "--mirror", f"docker.io={value}"],
    }[option]


@pytest.mark.parametrize(
    "option",
    [
        "unpack --registry",
        "sync --registry",
        "inventory --registry",
        "pack --insecure-registry",
        "pack --mirror",
    ],
)
@pytest.mark.parametrize("form", ["http://127.0.0.1:{port}", "127.0.0.1:{port}/foo"])
def test_a_malformed_registry_is_a_usage_error_before_any_request(
    cli: CliFunction,
    tmp_path: Path,
    listener: socket.socket,
    option: str,
    form: str,
) -> None:
    port = listener.getsockname()[1]
    value = form.format(port=port)

    # the image list names the listener too: any request at all would show
    result = cli(*registry_args(option, value, tmp_path, f"127.0.0.1:{port}"))

    assert result.exit_code == 2, result
    assert_house_error(result.stderr, repr(value), "HOST[:PORT]")
    assert not connected(listener)


def test_a_registry_port_out_of_range_is_a_usage_error(cli: CliFunction) -> None:
    result = cli("inventory", "--registry", "127.0.0.1:99999", "-o", "i.json")

    assert result.exit_code == 2, result
    assert_house_error(result.stderr, "port 99999 is not in 1-65535", "HOST[:PORT]")


# -- 4: output paths ------------------------------------------------------------


@pytest.mark.parametrize("output", ["adir", "nodir/inv.json"])
def test_inventory_output_is_checked_before_the_registry_is_walked(
    cli: CliFunction,
    tmp_path: Path,
    listener: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    output: str,
) -> None:
    (tmp_path / "adir").mkdir()
    monkeypatch.chdir(tmp_path)
    host = f"127.0.0.1:{listener.getsockname()[1]}"

    result = cli("inventory", "--registry", host, "-o", output)

    assert result.exit_code == 2, result
    if output == "adir":
        assert_house_error(result.stderr, "is a directory", "name the file to write")
    else:
        assert_house_error(result.stderr, "no directory nodir", "create nodir first")
    assert not connected(listener)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["adir"]


def test_a_side_file_that_cannot_be_written_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    taken = tmp_path / "taken"
    (taken / "inside").mkdir(parents=True)  # a non-empty directory: no rename

    with pytest.raises(AirgapError) as caught:
        media.write_side_file(str(taken), b"{}\n")

    assert caught.value.message.startswith(f"cannot write {taken}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_verify_of_a_directory_says_it_is_one(cli: CliFunction, tmp_path: Path) -> None:
    result = cli("verify", str(tmp_path))

    assert result.exit_code == 2, result
    assert_house_error(result.stderr, "is a directory", "bundle")


# -- 5: split sizes ---------------------------------------------------------------


@pytest.mark.parametrize("size", ["1", "2", "512K", "999999"])
def test_split_sizes_below_1m_are_refused(cli: CliFunction, size: str) -> None:
    result = cli("pack", "L", "--split-size", size)

    assert result.exit_code == 2, result
    assert_house_error(result.stderr, "too small", "700M")


def test_a_split_size_of_1m_is_accepted() -> None:
    assert media.split_size_option("1M") == 10**6


def write_parts(folder: Path, data: bytes, sizes: list[int]) -> list[PartFile]:
    parts, offset = [], 0
    for number, size in enumerate([*sizes, len(data) - sum(sizes)], 1):
        chunk = data[offset : offset + size]
        offset += size
        path = folder / f"b.tar.zst.{number:03d}"
        path.write_bytes(chunk)
        parts.append(PartFile(str(path), hashlib.sha256(chunk).hexdigest(), size))
    return parts


def test_part_reader_reads_are_short_only_at_the_end(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4
    reader = PartReader(write_parts(tmp_path, data, [1, 2, 3, 1, 500]))

    reads = [reader.read(7) for _ in range(148)]

    assert b"".join(reads) == data
    assert [len(r) for r in reads[:-2]] == [7] * 146
    assert len(reads[-2]) == len(data) % 7 and reads[-1] == b""
    assert reader.check_rest() == []


def test_part_reader_returns_the_good_bytes_before_naming_a_bad_part(
    tmp_path: Path,
) -> None:
    parts = write_parts(tmp_path, b"abcdefgh", [3])
    Path(parts[0].path).write_bytes(b"abX")
    reader = PartReader(parts)

    first = reader.read(8)

    assert first == b"abX"
    with pytest.raises(PartDamaged) as caught:
        reader.read(8)
    assert "b.tar.zst.001 is corrupt" in caught.value.message
    assert reader.read(8) == b"defgh"


def test_a_bundle_whose_first_part_is_two_bytes_verifies(
    cli: CliFunction, small_image: Registry, tmp_path: Path
) -> None:
    bundle = tmp_path / "whole.tar.zst"
    made = cli("pack", str(write_list(tmp_path, small_image.host)), "-o", str(bundle))
    assert made.exit_code == 0, made
    parts = write_parts(tmp_path, bundle.read_bytes(), [2])
    sums = "".join(f"{p.sha256}  {p.name}\n" for p in parts)
    (tmp_path / "b.sha256").write_text(sums)

    verified = cli("verify", str(tmp_path / "b.sha256"))

    assert verified.exit_code == 0, verified


def test_a_pack_needing_more_than_999_parts_fails_and_leaves_none(
    cli: CliFunction,
    small_image: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(media, "MIN_SPLIT_SIZE", 1)  # a small bundle, many parts
    image_list = write_list(tmp_path, small_image.host)
    out = tmp_path / "out"
    out.mkdir()

    result = cli(
        "pack", str(image_list), "-o", str(out / "b.tar.zst"), "--split-size", "2"
    )

    assert result.exit_code == 2, result
    assert_house_error(result.stderr, "more than 999 parts", "larger --split-size")
    assert list(out.iterdir()) == []


# -- 6: other option values -------------------------------------------------------


def test_negative_threads_below_minus_1_are_refused(cli: CliFunction) -> None:
    result = cli("pack", "L", "--threads", "-7")

    assert result.exit_code == 2, result
    assert_house_error(result.stderr, "'--threads': -7", "see 'airgap pack --help'")


def test_a_ca_cert_that_is_not_pem_is_refused_before_any_request(
    cli: CliFunction, tmp_path: Path, listener: socket.socket
) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("this is not a certificate\n")
    host = f"127.0.0.1:{listener.getsockname()[1]}"

    result = cli(
        "inventory", "--registry", host, "-o", "i.json", "--ca-cert", str(garbage)
    )

    assert result.exit_code == 2, result
    assert_house_error(result.stderr, "holds no PEM certificate", "PEM")
    assert not connected(listener)


# -- 7: -v and -vv ------------------------------------------------------------------


@pytest.mark.parametrize("verbose", ["-v", "-vv"])
def test_request_lines_appear_at_vv_only(
    cli: CliFunction, small_image: Registry, tmp_path: Path, verbose: str
) -> None:
    image_list = write_list(tmp_path, small_image.host)

    result = cli("pack", str(image_list), "-o", str(tmp_path / "b.tar.zst"), verbose)

    assert result.exit_code == 0, result
    assert "DEBUG: registry" in result.stderr  # -v's own lines either way
    request = f"DEBUG: GET http://{small_image.host}/v2/team/app/manifests/1"
    assert (request in result.stderr) == (verbose == "-vv"), result.stderr


# -- 2: the bundle stream, Ctrl-C and SIGTERM ---------------------------------------


def test_a_reader_closing_the_bundle_stream_ends_with_one_clear_line(
    registry: Registry, tmp_path: Path
) -> None:
    img = ib.image([ib.layer(ib.random_files(5, 2, 512 * 1024))], cmd=["/x"])
    ib.push_image(registry, "team/app", "1", img)
    image_list = write_list(tmp_path, registry.host)
    args = [AIRGAP, "pack", str(image_list), "-o", "-", "--cache-dir", str(tmp_path)]

    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.read(1000)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    code = process.wait(60)

    assert code == 1, stderr
    assert_house_error(stderr, "the reader of the bundle stream closed it", "-o FILE")


def wait_for(path: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("sent", "word"), [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")]
)
def test_a_split_pack_stopped_by_a_signal_removes_its_parts_and_exits_130(
    registry: Registry,
    tmp_path: Path,
    sent: signal.Signals,
    word: str,
) -> None:
    layers = [ib.layer(ib.random_files(60 + i, 2, 600 * 1024)) for i in range(3)]
    img = ib.image(layers, cmd=["/app"])
    ib.push_image(registry, "team/app", "1", img)
    paths = {f"/blobs/{b.digest}" for b in img.layers}
    proxy = GateProxy(
        registry, lambda m, p: m == "GET" and any(p.endswith(x) for x in paths), 2
    )
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    out = tmp_path / "out"
    out.mkdir()
    args = [
        AIRGAP, "pack", str(write_list(tmp_path, proxy.host)),
        "-o", str(out / "b.tar"), "--compression", "none", "--split-size", "1M",
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    log = tmp_path / "pack.log"

    try:
        with open(log, "wb") as sink:
            process = subprocess.Popen(args, stdout=sink, stderr=sink)
        wait_for(out / "b.tar.001", process, log)
        assert proxy.holding.wait(60), log.read_text()
        process.send_signal(sent)
        code = process.wait(60)
    finally:
        proxy.open()
        proxy.shutdown()
        proxy.server_close()

    stderr = log.read_text()
    assert code == 130, stderr
    assert stderr.strip().splitlines()[-1] == f"airgap: error: {word}", stderr
    assert not [w for w in NOISE if w in stderr], stderr
    assert list(out.iterdir()) == []
