"""The image list: YAML and plain text, and errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airgap.descriptor import Platform
from airgap.errors import ExitCode, ImageListError, UsageError
from airgap.imagelist import ImageList, load, parse
from airgap.reference import Reference

DIGEST = "sha256:" + "c" * 64
AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")


def refs(images: ImageList) -> list[str]:
    return [str(entry.reference) for entry in images.images]


def fails(text: str, path: str = "list.yaml") -> ImageListError:
    with pytest.raises(ImageListError) as caught:
        parse(text, path)
    return caught.value


# -- YAML ---------------------------------------------------------------------


def test_yaml_list_reads_plain_and_mapping_entries() -> None:
    images = parse(
        "images:\n"
        "  - docker.io/library/nginx:alpine\n"
        "  - postgres:16\n"
        "  - name: redis:7\n"
        f"  - name: ghcr.io/acme/api@{DIGEST}\n"
        "    target: backend/api:v1.2.3\n",
        "list.yaml",
    )

    assert refs(images) == [
        "docker.io/library/nginx:alpine",
        "docker.io/library/postgres:16",
        "docker.io/library/redis:7",
        f"ghcr.io/acme/api@{DIGEST}",
    ]
    assert [e.target for e in images.images] == [None, None, None, "backend/api:v1.2.3"]
    assert [e.line for e in images.images] == [2, 3, 4, 5]


def test_target_name_defaults_to_the_source_repository_and_tag() -> None:
    images = parse(
        f"images:\n  - ex.com/team/app:1\n  - ex.com/team/pinned@{DIGEST}\n"
        "  - name: ex.com/x:2\n    target: y/z:3\n",
        "list.yaml",
    )

    names = [entry.target_name for entry in images.images]
    assert names == ["team/app:1", "team/pinned", "y/z:3"]


def test_registry_image_defaults_to_docker_hub_registry_2() -> None:
    images = parse("images:\n  - nginx\n", "list.yaml")

    assert images.registry_image == Reference.parse("docker.io/library/registry:2")
    last = images.all_entries()[-1]
    assert last.is_registry_image
    assert str(last.reference) == "docker.io/library/registry:2"


def test_registry_image_false_leaves_it_out() -> None:
    images = parse("registry-image: false\nimages:\n  - nginx\n", "list.yaml")

    assert images.registry_image is None
    assert [e.is_registry_image for e in images.all_entries()] == [False]


def test_custom_registry_image_is_added_and_marked() -> None:
    images = parse(
        "registry-image: localhost:5000/infra/registry:2.8\nimages:\n  - nginx\n",
        "list.yaml",
    )

    entries = images.all_entries()
    assert [str(e.reference) for e in entries] == [
        "docker.io/library/nginx:latest",
        "localhost:5000/infra/registry:2.8",
    ]
    assert [e.is_registry_image for e in entries] == [False, True]


def test_registry_image_also_listed_is_carried_once_and_marked() -> None:
    images = parse(
        "registry-image: ex.com/registry:2\nimages:\n  - ex.com/registry:2\n  - a\n",
        "list.yaml",
    )

    entries = images.all_entries()
    assert [str(e.reference) for e in entries] == [
        "ex.com/registry:2",
        "docker.io/library/a:latest",
    ]
    assert [e.is_registry_image for e in entries] == [True, False]


def test_global_platforms_stay_on_the_list_so_pack_platform_can_override_them() -> None:
    images = parse("platforms: [linux/amd64]\nimages:\n  - a\n  - b\n", "list.yaml")

    assert images.platforms == (AMD64,)
    assert [e.platforms for e in images.all_entries()] == [None] * 3


def test_per_image_platforms_are_kept_on_their_entry() -> None:
    images = parse(
        "platforms: [linux/amd64]\nimages:\n  - a\n"
        "  - name: b\n    platforms: [linux/amd64, linux/arm64/v8]\n",
        "list.yaml",
    )

    assert images.images[0].platforms is None
    assert images.images[1].platforms == (AMD64, Platform("linux", "arm64", "v8"))


def test_platforms_may_be_a_single_value() -> None:
    images = parse("images:\n  - name: a\n    platforms: linux/arm64\n", "l.yaml")

    assert images.images[0].platforms == (ARM64,)


def test_no_platforms_means_every_platform() -> None:
    images = parse("images:\n  - a\n", "list.yaml")

    assert images.platforms is None
    assert images.images[0].platforms is None


def test_same_image_under_two_targets_is_two_entries() -> None:
    images = parse(
        "images:\n  - name: a:1\n    target: x:1\n  - name: a:1\n    target: y:1\n",
        "list.yaml",
    )

    assert [e.target for e in images.images] == ["x:1", "y:1"]


# -- plain text ---------------------------------------------------------------


def test_text_list_has_one_reference_a_line_and_hash_comments() -> None:
    images = parse(
        "# base images\nnginx:alpine\n\n  redis:7   # cache\nlocalhost:5000/a/b\n",
        "list.txt",
    )

    assert refs(images) == [
        "docker.io/library/nginx:alpine",
        "docker.io/library/redis:7",
        "localhost:5000/a/b:latest",
    ]
    assert [e.line for e in images.images] == [2, 4, 5]
    assert images.registry_image == Reference.parse("registry:2")


def test_text_list_without_suffix_is_read_as_text() -> None:
    images = parse("nginx\nredis\n", "images")

    assert refs(images) == [
        "docker.io/library/nginx:latest",
        "docker.io/library/redis:latest",
    ]


def test_yaml_list_without_suffix_is_read_as_yaml() -> None:
    images = parse("registry-image: false\nimages:\n  - nginx\n", "images")

    assert images.registry_image is None
    assert refs(images) == ["docker.io/library/nginx:latest"]


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "list.yml"
    path.write_text("images:\n  - nginx\n")

    assert refs(load(str(path))) == ["docker.io/library/nginx:latest"]


def test_missing_file_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(UsageError) as caught:
        load(str(path))

    assert str(path) in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE


# -- errors -------------------------------------------------------------------

# (file text, path, line, fragment of the message)
ERRORS = {
    "unknown top-level key": ("imagez:\n  - a\n", "l.yaml", 1, "unknown key 'imagez'"),
    "unknown key in an entry": (
        "images:\n  - a\n  - name: b\n    platform: [linux/amd64]\n",
        "l.yaml",
        4,
        "unknown key 'platform'",
    ),
    "bad reference": (
        "images:\n  - a\n  - nginx:bad tag\n",
        "l.yaml",
        3,
        "invalid tag",
    ),
    "bad reference under name": (
        "images:\n  - name: a@sha256:123\n",
        "l.yaml",
        2,
        "invalid digest",
    ),
    "uppercase repository": (
        "images:\n  - a\n  - ex.com/Team/app\n",
        "l.yaml",
        3,
        "lowercase",
    ),
    "duplicate entry": (
        "images:\n  - nginx\n  - b\n  - docker.io/library/nginx:latest\n",
        "l.yaml",
        4,
        "duplicate entry docker.io/library/nginx:latest (first at line 2)",
    ),
    "duplicate key in an entry": (
        "images:\n  - name: a\n    name: b\n",
        "l.yaml",
        3,
        "duplicate key 'name'",
    ),
    "duplicate top-level key": (
        "images:\n  - a\nimages:\n  - b\n",
        "l.yaml",
        3,
        "duplicate key 'images'",
    ),
    "invalid YAML": ("images:\n  - a\n\t- b\n", "l.yaml", 3, "not valid YAML"),
    "missing images": ("platforms: [linux/amd64]\n", "l.yaml", 1, "missing 'images:'"),
    "empty images": ("registry-image: false\nimages: []\n", "l.yaml", 2, "empty"),
    "images not a list": ("images: nginx\n", "l.yaml", 1, "must be a list"),
    "entry without name": ("images:\n  - target: x:1\n", "l.yaml", 2, "'name:'"),
    "bad platform": (
        "images:\n  - name: a\n    platforms: [linux]\n",
        "l.yaml",
        3,
        "invalid platform 'linux'",
    ),
    "bad global platform": (
        "platforms: [linux/amd64, x]\nimages:\n  - a\n",
        "l.yaml",
        1,
        "invalid platform 'x'",
    ),
    "bad target": (
        "images:\n  - name: a\n    target: /abs:1\n",
        "l.yaml",
        3,
        "invalid target",
    ),
    "uppercase target": (
        "images:\n  - name: a\n    target: Back/api:1\n",
        "l.yaml",
        3,
        "lowercase",
    ),
    "registry-image neither reference nor false": (
        "registry-image: 5\nimages:\n  - a\n",
        "l.yaml",
        1,
        "'registry-image' must be a reference or false",
    ),
    "two sources under one target": (
        "images:\n  - a.com/app:1\n  - b.com/app:1\n",
        "l.yaml",
        3,
        "both land as app:1",
    ),
    "a listed image where the registry image lands": (
        "images:\n  - a\n  - ex.com/library/registry:2\n",
        "l.yaml",
        3,
        "the registry image docker.io/library/registry:2",
    ),
    "text: bad line": ("nginx\n# x\nBAD\n", "l.txt", 3, "lowercase"),
    "text: duplicate": ("nginx\nnginx:latest\n", "l.txt", 2, "duplicate entry"),
}


@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_image_list_error_names_file_line_and_problem(case: str) -> None:
    text, path, line, fragment = ERRORS[case]

    error = fails(text, path)

    assert error.message.startswith(f"{path}:{line}: "), error.message
    assert fragment in error.message
    assert error.exit_code == ExitCode.USAGE


def test_empty_yaml_file_is_an_error_naming_the_file() -> None:
    error = fails("", "empty.yaml")

    assert error.message == "empty.yaml: the image list is empty"


def test_text_list_of_only_comments_is_an_error() -> None:
    error = fails("# nothing yet\n\n", "l.txt")

    assert error.message.startswith("l.txt: ")
    assert "no images" in error.message


def test_unknown_key_error_hints_at_the_known_keys() -> None:
    error = fails("images:\n  - name: a\n    tag: b\n")

    assert error.hint == "known keys here: name, platforms, source, target"


def test_duplicate_entry_error_hints_to_list_each_image_once() -> None:
    assert fails("images:\n  - a\n  - a\n").hint == "list each image once"


# -- through the CLI ----------------------------------------------------------

CLI_ERRORS = {
    "unknown key": (
        "images:\n  - a\n  - name: b\n    tagg: x\n",
        4,
        "unknown key 'tagg'",
        "known keys here",
    ),
    "uppercase repository": (
        "images:\n  - ex.com/App\n",
        2,
        "lowercase",
        "repository names are lowercase",
    ),
    "duplicate entry": ("images:\n  - a\n  - a:latest\n", 3, "duplicate", "once"),
    "invalid YAML": ("images:\n  - [a\n", None, "not valid YAML", None),
    "bad reference": ("images:\n  - a@sha256:zz\n", 2, "invalid digest", None),
}


@pytest.mark.parametrize("case", CLI_ERRORS, ids=list(CLI_ERRORS))
def test_pack_with_a_bad_list_exits_2_naming_file_and_line(
    case: str, tmp_path: Path, cli
) -> None:
    text, line, fragment, hint = CLI_ERRORS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    bundle = tmp_path / "b.tar.zst"

    result = cli("pack", str(path), "-o", str(bundle))

    assert result.exit_code == 2, result
    lines = result.stderr.splitlines()
    where = f"{path}:{line}: " if line else f"{path}:"
    assert lines[0].startswith(f"airgap: error: {where}"), result
    assert fragment in lines[0]
    if hint:
        assert lines[1].startswith("hint: ") and hint in lines[1], result
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == [path]


def test_pack_with_a_bad_list_and_json_prints_the_error_on_stdout(
    tmp_path: Path, cli
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("images:\n  - Nginx\n")

    result = cli("pack", str(path), "-o", str(tmp_path / "b.tar.zst"), "--json")

    assert result.exit_code == 2, result
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["error"]["exitCode"] == 2
    assert document["error"]["message"].startswith(f"{path}:2: ")


def test_pack_with_a_missing_list_exits_2(tmp_path: Path, cli) -> None:
    result = cli("pack", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "b"))

    assert result.exit_code == 2, result
    assert "nope.yaml" in result.stderr
