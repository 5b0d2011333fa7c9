"""Fixtures shared by every test: an isolated home, real registries, a private
Docker daemon and an in-process `airgap` runner.

Servers listen on 127.0.0.1 only, and a missing server binary fails the test
instead of skipping it: CI installs them all (scripts/test.sh), so a skip would
only hide a broken setup.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import servers
from servers import CliResult, DockerDaemon, Home, Registry, RegistryFactory

# Variables through which the host's own settings could leak into a test.
LEAKY_ENV = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "REGISTRY_AUTH_FILE",
    "XDG_RUNTIME_DIR",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "docker: needs the private Docker daemon (docker_daemon fixture)"
    )


@pytest.fixture(autouse=True)
def isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Home:
    """A fresh HOME per test, so no credential or cache of the host is used."""
    root = tmp_path_factory.mktemp("home")
    home = Home(root, root / ".docker", root / ".cache", root / ".config")
    monkeypatch.setenv("HOME", str(home.home))
    monkeypatch.setenv("DOCKER_CONFIG", str(home.docker_config))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home.cache))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home.config))
    for name in LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)
    return home


def _start(tmp_path_factory: pytest.TempPathFactory, **options: Any) -> Registry:
    try:
        return servers.start_registry(tmp_path_factory.mktemp("registry"), **options)
    except servers.ServerFailed as exc:
        failure = str(exc)
    pytest.fail(failure, pytrace=False)  # outside except: no chained traceback


@pytest.fixture
def registry_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RegistryFactory]:
    """`registry_factory(tls=False, htpasswd=False, config_extra=None)`."""
    started: list[Registry] = []

    def factory(
        *,
        tls: bool = False,
        htpasswd: bool = False,
        config_extra: Mapping[str, Any] | None = None,
    ) -> Registry:
        registry = _start(
            tmp_path_factory, tls=tls, htpasswd=htpasswd, config_extra=config_extra
        )
        started.append(registry)
        return registry

    yield factory
    for registry in started:
        registry.stop()


@pytest.fixture
def registry(registry_factory: RegistryFactory) -> Registry:
    """An empty, open, plain-HTTP registry."""
    return registry_factory()


@pytest.fixture
def secure_registry(registry_factory: RegistryFactory) -> Registry:
    """An empty registry behind TLS (throwaway CA) and htpasswd (user alice)."""
    return registry_factory(tls=True, htpasswd=True)


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[DockerDaemon]:
    """A private dockerd for the whole session: host networking only, no bridge."""
    failure = ""
    try:
        daemon = servers.start_docker_daemon()
    except servers.ServerFailed as exc:
        failure = str(exc)
    if failure:
        pytest.fail(failure, pytrace=False)
    yield daemon
    daemon.stop()


@pytest.fixture
def cli() -> servers.CliFunction:
    """`cli(*args, input=None, env=None) -> CliResult`, running airgap in-process."""

    def run(
        *args: str,
        input: str | bytes | None = None,
        env: Mapping[str, str | None] | None = None,
    ) -> CliResult:
        from airgap.cli import main  # imported late: a broken CLI fails only here

        return servers.run_click(main, args, input=input, env=env)

    return run


# Appended, not merged above, so parallel edits to this file do not collide.
import tokenserver  # noqa: E402


@pytest.fixture
def token_registry(
    registry_factory: RegistryFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tokenserver.TokenRegistry]:
    """A registry behind `auth: token:` (distribution verifies x5c-signed JWTs),
    its token service (alice may pull and push team/*, anyone may pull
    public/*) and an open back door onto the same storage."""
    setup = tokenserver.start_token_registry(
        registry_factory, tmp_path_factory.mktemp("tokens")
    )
    yield setup
    setup.tokens.stop()
