"""Registry credentials: the Docker config (auths, credsStore, credHelpers) or
what the user passed on the command line.

docker-py's ``docker.auth`` reads the config without a daemon; it returns keys
in differing case (``username`` from ``auths``, ``Username`` from a store), so
they are normalised here, once.
"""

from __future__ import annotations

import dataclasses
import logging

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

    def __init__(self, explicit: Credentials | None = None) -> None:
        self.explicit = explicit
        self._config: docker.auth.AuthConfig | None = None

    def lookup(self, registry: str) -> Credentials | None:
        if self.explicit:
            return self.explicit
        try:
            entry = self._load().resolve_authconfig(registry)
        except docker.errors.DockerException as exc:
            raise AuthFailed(
                f"cannot read credentials for {registry}: {exc}",
                "check the credsStore/credHelpers programs named in the Docker config",
            ) from exc
        if not entry:
            return None
        creds = _normalise(entry)
        log.debug("using credentials for %s (user %s)", registry, creds.username)
        return creds or None

    def _load(self) -> docker.auth.AuthConfig:
        if self._config is None:
            # load_config finds $DOCKER_CONFIG/config.json or ~/.docker/config.json
            self._config = docker.auth.load_config()
        return self._config


def _normalise(entry: dict[str, str]) -> Credentials:
    lowered = {key.lower(): value for key, value in entry.items() if value}
    return Credentials(
        username=lowered.get("username"),
        password=lowered.get("password"),
        identity_token=lowered.get("identitytoken"),
    )
