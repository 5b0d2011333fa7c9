"""Registry credentials: the Docker config (auths, credsStore, credHelpers) or
what the user passed on the command line.

docker-py's ``docker.auth`` reads the config without a daemon; it returns keys
in differing case (``username`` from ``auths``, ``Username`` from a store), so
they are normalised here, once. The config is ``$DOCKER_CONFIG/config.json``
when ``DOCKER_CONFIG`` is set (and nothing else, as for the Docker CLI), else
``~/.docker/config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path

import docker.auth
import docker.errors

from airgap.errors import AuthFailed

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    identity_token: str | None = dataclasses.field(default=None, repr=False)

    def __bool__(self) -> bool:
        return bool(self.username or self.identity_token)


class CredentialSource:
    """Looks up credentials per registry host; explicit ones win over the config."""

    def __init__(
        self, explicit: Credentials | None = None, explicit_for: str | None = None
    ) -> None:
        self.explicit = explicit
        # Command-line credentials go to this host only, when one is named
        # (unpack and sync name their target); pack sends them to its sources.
        self.explicit_for = explicit_for
        self._config: docker.auth.AuthConfig | None = None

    def lookup(self, registry: str) -> Credentials | None:
        if self.explicit and self.explicit_for in (None, registry):
            return self.explicit
        try:
            # docker-py warns (on stderr) before it fails for a missing helper.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                entry = self._load().resolve_authconfig(registry)
        except docker.errors.DockerException as exc:
            raise AuthFailed(
                f"cannot read credentials for {registry}: {_one_line(exc)}",
                f"check the credsStore/credHelpers programs named in {config_path()}",
            ) from exc
        if not entry:
            return None
        creds = _normalise(entry)
        log.debug("using credentials for %s (user %s)", registry, creds.username)
        return creds or None

    def _load(self) -> docker.auth.AuthConfig:
        if self._config is None:
            self._config = _read_config(config_path())
        return self._config


def config_path() -> Path:
    """Where the Docker CLI would read its config.json."""
    directory = os.environ.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / "config.json"
    return Path.home() / ".docker" / "config.json"


def _read_config(path: Path) -> docker.auth.AuthConfig:
    # docker-py would fall back from a missing $DOCKER_CONFIG to ~/.docker, and
    # skip a file it cannot parse in silence; the Docker CLI does neither.
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return docker.auth.AuthConfig({})
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return docker.auth.AuthConfig({})
    if not isinstance(config, dict):
        log.warning("ignoring %s: not a JSON object", path)
        config = {}
    if not config:  # docker-py would go looking for a file again
        return docker.auth.AuthConfig({})
    try:
        return docker.auth.load_config(config_dict=config)
    except (docker.errors.DockerException, ValueError) as exc:
        # ValueError: an "auth" that is not base64 of "user:password".
        raise AuthFailed(
            f"{path} has a malformed auths entry: {_one_line(exc)}",
            f"run 'docker login' again, or fix the entry in {path}",
        ) from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _normalise(entry: dict[str, str]) -> Credentials:
    lowered = {key.lower(): value for key, value in entry.items() if value}
    return Credentials(
        username=lowered.get("username"),
        password=lowered.get("password"),
        identity_token=lowered.get("identitytoken"),
    )
