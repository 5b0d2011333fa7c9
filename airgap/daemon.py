"""The local Docker daemon, through docker-py: load, save, and run the bundled
registry. Every failure becomes an airgap error with a hint."""

from __future__ import annotations

import logging
import os
import platform as host_platform
import re
import threading
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import requests

from airgap.descriptor import Platform
from airgap.errors import AirgapError, DockerUnavailable, ManifestUnknown, UsageError
from airgap.streams import Reader

log = logging.getLogger(__name__)

# Docker's own grammar for container names (daemon/names).
CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
NAME_RULE = (
    "a container name is two or more letters, digits and _ . -, the first a letter "
    "or digit"
)
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


class Daemon:
    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    @classmethod
    def connect(cls) -> Daemon:
        try:
            client = docker.from_env(timeout=300)
            client.ping()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
            raise DockerUnavailable(
                f"no Docker daemon answers at {where}: {_short(exc)}",
                "is dockerd running? set DOCKER_HOST to its socket if it is elsewhere",
            ) from exc
        return cls(client)

    def platform(self) -> Platform:
        info = self.client.info()
        arch = str(info.get("Architecture") or host_platform.machine())
        return Platform(str(info.get("OSType") or "linux"), _ARCH.get(arch, arch))

    def image_id(self, name: str) -> str | None:
        try:
            return str(self.client.images.get(name).id)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:
            raise _api_error("inspect", name, exc) from exc

    def load(self, tar: Reader) -> None:
        """``docker load`` of a tar stream; docker-py reports failures inside the
        output stream, not as exceptions, so each message is read."""
        try:
            for message in self.client.api.load_image(_chunks(tar)):
                error = message.get("error") or (message.get("errorDetail") or {}).get(
                    "message"
                )
                if error:
                    raise AirgapError(f"docker load failed: {error}")
                if message.get("stream"):
                    log.debug("docker: %s", str(message["stream"]).strip())
        except docker.errors.APIError as exc:
            raise _api_error("load", "the images", exc) from exc

    def save(self, name: str) -> Iterator[bytes]:
        try:
            image = self.client.images.get(name)
        except docker.errors.ImageNotFound as exc:
            raise ManifestUnknown(
                f"image {name} is not in the local Docker daemon",
                "build or pull it first, or drop 'source: docker' for this image",
            ) from exc
        return iter(image.save(named=False))

    def container(self, name: str) -> Any:
        """The container of exactly that name; None when there is none."""
        if not is_container_name(name):
            raise UsageError(f"{name!r} is not a Docker container name", NAME_RULE)
        try:
            attrs = self.client.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise AirgapError(
                f"docker inspect of container {name} failed: {_short(exc)}"
            ) from exc
        if not isinstance(attrs, dict):
            raise AirgapError(f"docker inspect of container {name} answered no object")
        # Docker falls back to an ID prefix when no name matches: not ours.
        if attrs.get("Name") != f"/{name}":
            return None
        return self.client.containers.prepare_model(attrs)


class PipeLoad:
    """Feeds ``docker load`` from a pipe in a thread, so the caller can write the
    archive as it reads the bundle. Nothing loads until the archive's
    ``manifest.json`` arrives, and that is written last."""

    def __init__(self, daemon: Daemon) -> None:
        read_fd, write_fd = os.pipe()
        self.writer = os.fdopen(write_fd, "wb", buffering=1 << 20)
        self._reader = os.fdopen(read_fd, "rb")
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(daemon,), daemon=True)
        self._thread.start()

    def _run(self, daemon: Daemon) -> None:
        try:
            daemon.load(self._reader)
        except BaseException as exc:  # handed to the caller in finish()
            self._error = exc
        finally:
            self._reader.close()

    def finish(self) -> None:
        self.writer.close()
        self._thread.join()
        if self._error:
            raise self._error

    def abort(self) -> None:
        try:
            self.writer.close()
        except OSError:
            pass
        self._thread.join(timeout=60)


def is_container_name(name: str) -> bool:
    return CONTAINER_NAME.fullmatch(name) is not None


def _chunks(tar: Reader) -> Iterator[bytes]:
    while data := tar.read(1 << 20):
        yield data


def _api_error(action: str, what: str, exc: docker.errors.APIError) -> AirgapError:
    return AirgapError(f"docker {action} of {what} failed: {_short(exc)}")


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
