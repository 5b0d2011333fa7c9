"""Bearer token auth against a real distribution registry in `auth: token:` mode,
the path Docker Hub, GHCR and Harbor use, with the token service of
tokenserver.py.

The token-protected registry shares its storage with an open one, the back
door: images are seeded and results checked through it, so no check depends on
airgap's own authentication.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import imagebuild as ib
import pytest
import requests
from servers import CliFunction, Home, Registry, RegistryFactory, skopeo_digest
from tokenserver import (
    ALICE,
    REFRESH_TOKEN,
    Grant,
    TokenRegistry,
    start_token_registry,
    start_token_server,
)

from airgap.credentials import Credentials
from airgap.descriptor import Digest
from airgap.errors import AuthFailed
from airgap.registry import Registry as RegistryClient
from airgap.registry import pull_scope, push_scope
from airgap.transport import Transport


def alice(setup: TokenRegistry) -> Credentials:
    return Credentials(username=ALICE, password=setup.password)


def transport_for(
    setup: TokenRegistry, credentials: Credentials | None = None
) -> Transport:
    return Transport(setup.host, credentials=credentials)


def base_layer() -> ib.Blob:
    return ib.layer(ib.random_files(7, 3, 16 * 1024))


def seed(backdoor: Registry) -> dict[str, str]:
    """Images sharing `base_layer()`; reference -> digest."""
    base = base_layer()
    images = {
        "team/app:1.0": ib.image([base, ib.layer({"v": b"1"})]),
        "team/app:2.0": ib.image([base, ib.layer({"v": b"2"})]),
        "team/tool:1": ib.image([base, ib.layer({"tool": b"t"})]),
        "public/hello:1": ib.image([ib.layer({"hello": b"hi"})]),
    }
    digests = {}
    for ref, img in images.items():
        repo, tag = ref.split(":")
        digests[ref] = ib.push_image(backdoor, repo, tag, img)
    return digests


def image_list(tmp_path: Path, host: str, *refs: str) -> Path:
    path = tmp_path / "images.yaml"
    lines = "".join(f"  - {host}/{ref}\n" for ref in refs)
    path.write_text(f"registry-image: false\nimages:\n{lines}")
    return path


def docker_config(home: Home, host: str, entry: dict[str, str]) -> None:
    home.docker_config.mkdir(parents=True, exist_ok=True)
    config = {"auths": {host: entry}}
    (home.docker_config / "config.json").write_text(json.dumps(config))


def basic_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def error_lines(stderr: str) -> list[str]:
    """The error and hint lines, without the log lines around them."""
    return [
        line
        for line in stderr.splitlines()
        if line.startswith(("airgap: error:", "hint:"))
    ]


# --- the fixture itself ------------------------------------------------------


def test_registry_accepts_a_token_from_the_service_and_refuses_a_foreign_one(
    token_registry: TokenRegistry, tmp_path: Path
) -> None:
    seed(token_registry.backdoor)
    access = [{"type": "repository", "name": "team/app", "actions": ["pull"]}]
    stranger = start_token_server(tmp_path / "other", users={}, grants=[])
    url = f"{token_registry.registry.url}/v2/team/app/tags/list"

    try:
        ours = token_registry.tokens.mint(ALICE, access)
        foreign = stranger.mint(ALICE, access)
    finally:
        stranger.stop()
    accepted = requests.get(url, headers={"Authorization": f"Bearer {ours}"}, timeout=5)
    refused = requests.get(
        url, headers={"Authorization": f"Bearer {foreign}"}, timeout=5
    )

    assert accepted.status_code == 200, accepted.text
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]


# --- pack: pulling through tokens -------------------------------------------


def test_pack_with_docker_config_fetches_one_token_per_repository(
    token_registry: TokenRegistry,
    isolated_home: Home,
    tmp_path: Path,
    cli: CliFunction,
) -> None:
    digests = seed(token_registry.backdoor)
    host = token_registry.host
    docker_config(isolated_home, host, basic_entry(ALICE, token_registry.password))
    images = image_list(tmp_path, host, "team/app:1.0", "team/app:2.0")

    packed = cli("pack", str(images), "-o", str(tmp_path / "b.tar.zst"))

    assert packed.exit_code == 0, packed
    assert digests["team/app:1.0"] in packed.stdout
    assert digests["team/app:2.0"] in packed.stdout
    fetches = token_registry.tokens.fetches()
    assert [f.scopes for f in fetches] == [(pull_scope("team/app"),)]
    assert fetches[0].account == ALICE and fetches[0].grant_type == "basic"


def test_registry_accepts_tokens_naming_their_key_by_libtrust_kid(
    registry_factory: RegistryFactory,
    isolated_home: Home,
    tmp_path: Path,
    cli: CliFunction,
) -> None:
    setup = start_token_registry(registry_factory, tmp_path / "tokens", "kid")
    try:
        digests = seed(setup.backdoor)
        docker_config(isolated_home, setup.host, basic_entry(ALICE, setup.password))
        images = image_list(tmp_path, setup.host, "team/tool:1")

        packed = cli("pack", str(images), "-o", str(tmp_path / "b.tar.zst"))
    finally:
        setup.tokens.stop()

    assert packed.exit_code == 0, packed
    assert digests["team/tool:1"] in packed.stdout


def test_anonymous_pack_of_a_public_repository_needs_no_credentials(
    token_registry: TokenRegistry, tmp_path: Path, cli: CliFunction
) -> None:
    digests = seed(token_registry.backdoor)
    images = image_list(tmp_path, token_registry.host, "public/hello:1")

    packed = cli("pack", str(images), "-o", str(tmp_path / "b.tar.zst"))

    assert packed.exit_code == 0, packed
    assert digests["public/hello:1"] in packed.stdout
    fetches = token_registry.tokens.fetches()
    assert fetches and all(f.grant_type == "anonymous" for f in fetches)


def test_anonymous_pack_of_a_private_repository_exits_4_asking_to_log_in(
    token_registry: TokenRegistry, tmp_path: Path, cli: CliFunction
) -> None:
    seed(token_registry.backdoor)
    images = image_list(tmp_path, token_registry.host, "team/app:1.0")

    packed = cli("pack", str(images), "-o", str(tmp_path / "b.tar.zst"))

    assert packed.exit_code == 4, packed
    lines = error_lines(packed.stderr)
    assert lines[0] == f"airgap: error: {token_registry.host} requires authentication"
    assert lines[1].startswith("hint: run 'docker login"), packed
    assert len(lines) == 2 and "Traceback" not in packed.stderr


def test_wrong_password_exits_4_with_one_error_line_and_a_hint(
    token_registry: TokenRegistry, tmp_path: Path, cli: CliFunction
) -> None:
    seed(token_registry.backdoor)
    images = image_list(tmp_path, token_registry.host, "team/app:1.0")
    wrong = "not-" + token_registry.password

    packed = cli(
        "pack",
        str(images),
        "-o",
        str(tmp_path / "b.tar.zst"),
        "--username",
        ALICE,
        "--password-stdin",
        input=wrong + "\n",
    )

    assert packed.exit_code == 4, packed
    assert error_lines(packed.stderr) == [
        f"airgap: error: {token_registry.host} refused the username or password",
        "hint: check the credentials in the Docker config or on the command line",
    ]
    assert wrong not in packed.stdout + packed.stderr
    refused = [r for r in token_registry.tokens.requests if r.status == 401]
    assert [r.account for r in refused] == [ALICE]


def test_identity_token_in_docker_config_uses_the_refresh_token_grant(
    token_registry: TokenRegistry,
    isolated_home: Home,
    tmp_path: Path,
    cli: CliFunction,
) -> None:
    digests = seed(token_registry.backdoor)
    host = token_registry.host
    docker_config(isolated_home, host, {"identitytoken": REFRESH_TOKEN})
    images = image_list(tmp_path, host, "team/app:1.0")

    packed = cli("pack", str(images), "-o", str(tmp_path / "b.tar.zst"))

    assert packed.exit_code == 0, packed
    assert digests["team/app:1.0"] in packed.stdout
    fetches = token_registry.tokens.fetches()
    assert fetches
    assert {(f.method, f.grant_type, f.account) for f in fetches} == {
        ("POST", "refresh_token", ALICE)
    }


# --- unpack: pushing through tokens -----------------------------------------


def _pack_from_backdoor(
    setup: TokenRegistry, tmp_path: Path, cli: CliFunction, *refs: str
) -> Path:
    bundle = tmp_path / "b.tar.zst"
    packed = cli(
        "pack", str(image_list(tmp_path, setup.backdoor.host, *refs)), "-o", str(bundle)
    )
    assert packed.exit_code == 0, packed
    return bundle


def test_unpack_with_password_stdin_pushes_and_mounts_across_repositories(
    token_registry: TokenRegistry, tmp_path: Path, cli: CliFunction
) -> None:
    digests = seed(token_registry.backdoor)
    bundle = _pack_from_backdoor(
        token_registry, tmp_path, cli, "team/app:1.0", "team/tool:1"
    )

    unpacked = cli(
        "unpack",
        str(bundle),
        "--registry",
        token_registry.host,
        "--prefix",
        "team/restored",
        "--username",
        ALICE,
        "--password-stdin",
        input=token_registry.password + "\n",
    )

    assert unpacked.exit_code == 0, unpacked
    for ref in ("team/app:1.0", "team/tool:1"):
        landed = f"team/restored/{ref}"
        assert skopeo_digest(landed, token_registry.backdoor) == digests[ref], ref
    fetches = token_registry.tokens.fetches()
    assert all(f.account == ALICE for f in fetches)
    repeated = [s for s, n in Counter(f.scope_set for f in fetches).items() if n > 1]
    assert repeated == []
    # The shared base layer went up once and was mounted: push on one
    # repository and pull on the other, in one token.
    mounts = [f for f in fetches if len(f.scopes) == 2]
    assert len(mounts) == 1 and len(mounts[0].granted) == 2, fetches


def test_unpack_into_a_pull_only_repository_exits_4_naming_the_permission(
    token_registry: TokenRegistry, tmp_path: Path, cli: CliFunction
) -> None:
    seed(token_registry.backdoor)
    bundle = _pack_from_backdoor(token_registry, tmp_path, cli, "team/tool:1")

    unpacked = cli(
        "unpack",
        str(bundle),
        "--registry",
        token_registry.host,
        "--prefix",
        "public/mirror",
        "--username",
        ALICE,
        "--password-stdin",
        input=token_registry.password + "\n",
    )

    assert unpacked.exit_code == 4, unpacked
    lines = error_lines(unpacked.stderr)
    wanted = push_scope("public/mirror/team/tool")
    assert len(lines) == 2, unpacked
    assert lines[0] == (
        f"airgap: error: {token_registry.host} refused account 'alice' access to "
        f"{wanted} (insufficient_scope)"
    )
    assert lines[1].startswith("hint: the account lacks permission"), unpacked
    assert token_registry.backdoor.tags("public/mirror/team/tool") == []


# --- the transport's token cache ---------------------------------------------


def test_transport_fetches_again_when_its_token_lacks_a_scope_the_registry_needs(
    token_registry: TokenRegistry,
) -> None:
    seed(token_registry.backdoor)
    digest = base_layer().digest
    transport = transport_for(token_registry, alice(token_registry))

    # A mount needs pull on the source too; say only push on the target.
    response = transport.request(
        "POST",
        f"/v2/team/copy/blobs/uploads/?mount={digest}&from=team/app",
        scopes=[push_scope("team/copy")],
        expect=(201,),
    )

    assert response.status_code == 201
    asked = [f.scope_set for f in token_registry.tokens.fetches()]
    assert asked == [
        {push_scope("team/copy")},
        {push_scope("team/copy"), pull_scope("team/app")},
    ]


def test_mount_blob_asks_one_token_for_both_repositories(
    token_registry: TokenRegistry,
) -> None:
    seed(token_registry.backdoor)
    base = base_layer()
    client = RegistryClient(transport_for(token_registry, alice(token_registry)))

    mounted = client.mount_blob("team/other", Digest.parse(base.digest), "team/app")

    assert mounted
    assert [f.scope_set for f in token_registry.tokens.fetches()] == [
        {push_scope("team/other"), pull_scope("team/app")}
    ]
    assert token_registry.backdoor.get_blob("team/other", base.digest) == base.data


def test_token_is_reused_until_it_expires_then_fetched_before_the_request(
    token_registry: TokenRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(token_registry.backdoor)
    transport = transport_for(token_registry, alice(token_registry))
    now = [1000.0]
    monkeypatch.setattr("airgap.transport._clock", lambda: now[0])
    tags = "/v2/team/app/tags/list"

    for _ in range(3):
        transport.request("GET", tags, scopes=[pull_scope("team/app")])
    before = len(token_registry.tokens.fetches())
    now[0] += token_registry.tokens.expires_in
    transport.request("GET", tags, scopes=[pull_scope("team/app")])

    assert before == 1
    assert len(token_registry.tokens.fetches()) == 2
    assert "invalid_token" not in token_registry.registry.log()


def test_a_streamed_body_refused_for_scope_is_not_sent_twice(
    token_registry: TokenRegistry,
) -> None:
    transport = transport_for(token_registry, alice(token_registry))
    path = "/v2/public/hello/blobs/uploads/00000000-0000-0000-0000-000000000000"

    class Body:
        def __init__(self) -> None:
            self.reads = 0

        def read(self, n: int = -1) -> bytes:
            self.reads += 1
            return b"x" * 10 if self.reads == 1 else b""

    with pytest.raises(AuthFailed, match="insufficient_scope"):
        transport.request(
            "PUT",
            f"{path}?digest=sha256:{'0' * 64}",
            scopes=[push_scope("public/hello")],
            data=Body(),
            expect=(201,),
        )

    puts = [
        line for line in token_registry.registry.log().splitlines() if '"PUT ' in line
    ]
    assert len(puts) == 1, puts


def test_registry_that_distrusts_its_token_service_exits_4_saying_so(
    registry_factory: RegistryFactory,
    isolated_home: Home,
    tmp_path: Path,
    cli: CliFunction,
) -> None:
    tokens = start_token_server(
        tmp_path / "tokens", users={ALICE: "pw"}, grants=[Grant(ALICE, "*", ("*",))]
    )
    stranger = start_token_server(tmp_path / "stranger", users={}, grants=[])
    stranger.stop()
    config = tokens.registry_config()
    config["auth"]["token"]["rootcertbundle"] = str(stranger.cert_path)
    registry = registry_factory(config_extra=config)
    docker_config(isolated_home, registry.host, basic_entry(ALICE, "pw"))
    images = image_list(tmp_path, registry.host, "team/app:1.0")

    try:
        packed = cli("pack", str(images), "-o", str(tmp_path / "b.tar.zst"))
    finally:
        tokens.stop()

    assert packed.exit_code == 4, packed
    assert error_lines(packed.stderr)[0] == (
        f"airgap: error: {registry.host} refused a fresh token from its own "
        "token service"
    )
    assert len(tokens.fetches()) == 2  # the first, and one more after the refusal
