"""References by Docker's grammar and defaults, as a table of cases."""

from __future__ import annotations

import pytest

from airgap.errors import BadReference, ExitCode
from airgap.reference import Reference

HEX_A = "a" * 64
HEX_B = "b" * 64

# text -> (registry, repository, tag, digest)
VALID = {
    "nginx": ("docker.io", "library/nginx", "latest", None),
    "nginx:1.25-alpine": ("docker.io", "library/nginx", "1.25-alpine", None),
    "user/app": ("docker.io", "user/app", "latest", None),
    "docker.io/nginx": ("docker.io", "library/nginx", "latest", None),
    "docker.io/library/nginx": ("docker.io", "library/nginx", "latest", None),
    "index.docker.io/x": ("docker.io", "library/x", "latest", None),
    "index.docker.io/user/x:1": ("docker.io", "user/x", "1", None),
    "registry-1.docker.io/library/nginx": (
        "docker.io",
        "library/nginx",
        "latest",
        None,
    ),
    "localhost/foo": ("localhost", "foo", "latest", None),
    "localhost:5000/a/b:t": ("localhost:5000", "a/b", "t", None),
    # A first component with an uppercase letter can only be a host.
    "Foo/bar": ("Foo", "bar", "latest", None),
    "registry.example.com:443/a": ("registry.example.com:443", "a", "latest", None),
    "ghcr.io/acme/team/api:v1.2.3": ("ghcr.io", "acme/team/api", "v1.2.3", None),
    "[::1]:5000/a:b": ("[::1]:5000", "a", "b", None),
    "[::1]/a": ("[::1]", "a", "latest", None),
    "127.0.0.1:5000/x/y": ("127.0.0.1:5000", "x/y", "latest", None),
    # Without a slash, "localhost:5000" is the image localhost, tagged 5000.
    "localhost:5000": ("docker.io", "library/localhost", "5000", None),
    "a__b/c-d.e_f": ("docker.io", "a__b/c-d.e_f", "latest", None),
    "ex.com/a---b": ("ex.com", "a---b", "latest", None),
    "nginx:UPPER_case.tag": ("docker.io", "library/nginx", "UPPER_case.tag", None),
    "nginx:_leading": ("docker.io", "library/nginx", "_leading", None),
    "nginx:" + "t" * 128: ("docker.io", "library/nginx", "t" * 128, None),
    # With both, the digest decides what is fetched and the tag names it.
    f"nginx:1.25@sha256:{HEX_A}": (
        "docker.io",
        "library/nginx",
        "1.25",
        f"sha256:{HEX_A}",
    ),
    f"nginx@sha256:{HEX_A}": ("docker.io", "library/nginx", None, f"sha256:{HEX_A}"),
    f"localhost:5000/a@sha256:{HEX_B}": (
        "localhost:5000",
        "a",
        None,
        f"sha256:{HEX_B}",
    ),
    "  nginx  ": ("docker.io", "library/nginx", "latest", None),
}


@pytest.mark.parametrize("text", VALID, ids=list(VALID))
def test_valid_reference_parses_to_its_parts(text: str) -> None:
    ref = Reference.parse(text)

    assert (ref.registry, ref.repository, ref.tag, ref.digest) == VALID[text]


@pytest.mark.parametrize("text", VALID, ids=list(VALID))
def test_str_of_a_reference_parses_back_to_the_same_reference(text: str) -> None:
    ref = Reference.parse(text)

    assert Reference.parse(str(ref)) == ref
    assert str(Reference.parse(str(ref))) == str(ref)


NORMALISED = {
    "nginx": "docker.io/library/nginx:latest",
    "index.docker.io/x": "docker.io/library/x:latest",
    "user/app:2": "docker.io/user/app:2",
    "localhost:5000/a/b:t": "localhost:5000/a/b:t",
    f"nginx:1@sha256:{HEX_A}": f"docker.io/library/nginx:1@sha256:{HEX_A}",
    f"nginx@sha256:{HEX_A}": f"docker.io/library/nginx@sha256:{HEX_A}",
}


@pytest.mark.parametrize("text", NORMALISED, ids=list(NORMALISED))
def test_str_spells_out_every_default(text: str) -> None:
    assert str(Reference.parse(text)) == NORMALISED[text]


def test_digest_decides_what_is_fetched_when_a_tag_is_also_given() -> None:
    ref = Reference.parse(f"nginx:1.25@sha256:{HEX_A}")

    assert ref.pinned == f"sha256:{HEX_A}"
    assert ref.tag == "1.25"


def test_tag_is_fetched_when_there_is_no_digest() -> None:
    assert Reference.parse("nginx:1.25").pinned == "1.25"


def test_docker_hub_is_reached_at_its_api_host() -> None:
    assert Reference.parse("nginx").api_host == "registry-1.docker.io"
    assert Reference.parse("localhost:5000/a").api_host == "localhost:5000"


def test_with_registry_keeps_the_path_under_a_new_host_and_prefix() -> None:
    ref = Reference.parse("nginx:alpine").with_registry("reg:5000", prefix="/mirror/")

    assert str(ref) == "reg:5000/mirror/library/nginx:alpine"


# text -> a fragment the message must contain
INVALID = {
    "": "empty",
    "   ": "empty",
    "Nginx": "lowercase",
    "docker.io/Library/nginx": "lowercase",
    "ex.com/Foo": "lowercase",
    "a/B/c": "lowercase",
    "nginx:": "invalid tag",
    "nginx:-bad": "invalid tag",
    "nginx:.bad": "invalid tag",
    "nginx:bad tag": "invalid tag",
    "nginx:t\u00e6g": "invalid tag",
    "nginx:" + "t" * 129: "invalid tag",
    "nginx@": "invalid digest",
    "nginx@sha256:abc": "invalid digest",
    "nginx@sha256:" + "A" * 64: "invalid digest",
    f"nginx@sha256:{HEX_A}0": "invalid digest",
    "nginx@" + HEX_A: "invalid digest",
    "nginx@md5:" + "a" * 32: "unsupported digest algorithm",
    "nginx@sha512:" + "a" * 128: "unsupported digest algorithm",
    "a//b": "invalid repository",
    "/nginx": "invalid repository",
    "nginx/": "invalid repository",
    ":tag": "invalid repository",
    "_foo": "invalid repository",
    "ex.com/a___b": "invalid repository",
    "ex.com/a-.b": "invalid repository",
    "ex.com/-a": "invalid repository",
    "nginx:t:t": "invalid repository",
    "ex.com:/a": "invalid registry host",
    "ex.com:abc/a": "invalid registry host",
    "ex..com/a": "invalid registry host",
    "x" * 256: "longer than 255",
}


@pytest.mark.parametrize("text", INVALID, ids=[t[:40] or "empty" for t in INVALID])
def test_invalid_reference_is_a_usage_error_saying_why(text: str) -> None:
    with pytest.raises(BadReference) as caught:
        Reference.parse(text)

    assert INVALID[text] in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE


def test_uppercase_repository_error_hints_that_tags_may_keep_case() -> None:
    with pytest.raises(BadReference) as caught:
        Reference.parse("ex.com/MyApp:Tag")

    assert caught.value.hint is not None
    assert "lowercase" in caught.value.hint


def test_bad_tag_error_hints_at_the_tag_alphabet() -> None:
    with pytest.raises(BadReference) as caught:
        Reference.parse("nginx:-x")

    assert caught.value.hint is not None
    assert "128" in caught.value.hint


def test_unsupported_digest_error_hints_at_sha256() -> None:
    with pytest.raises(BadReference) as caught:
        Reference.parse("nginx@sha512:" + "a" * 128)

    assert caught.value.hint is not None
    assert "sha256" in caught.value.hint
