"""One base exception for every failure a user can act on, with its exit code.

The CLI catches ``AirgapError`` in exactly one place, prints the message and the
hint, and exits with ``exit_code``. Subclasses are named for the condition found.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The documented exit codes (DESIGN.md); scripts branch on them."""

    OK = 0
    ERROR = 1
    USAGE = 2
    REGISTRY = 3
    AUTH = 4
    INTEGRITY = 5
    INTERRUPTED = 130


class AirgapError(Exception):
    exit_code = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # what was done before the failure, for the --json error document
        self.partial: dict[str, object] = {}


class UsageError(AirgapError):
    exit_code = ExitCode.USAGE


class ImageListError(UsageError):
    """The image list has a problem at a known file and line."""

    def __init__(
        self, path: str, line: int | None, problem: str, hint: str | None = None
    ):
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {problem}", hint)


class BadReference(UsageError):
    """A reference that does not follow Docker's grammar."""


class UnsupportedManifest(UsageError):
    """A manifest kind airgap refuses to carry as it is (schema 1)."""


class RegistryError(AirgapError):
    exit_code = ExitCode.REGISTRY


class RegistryUnreachable(RegistryError):
    pass


class ManifestUnknown(RegistryError):
    pass


class AuthFailed(AirgapError):
    exit_code = ExitCode.AUTH


class IntegrityError(AirgapError):
    exit_code = ExitCode.INTEGRITY


class DigestMismatch(IntegrityError):
    pass


class BundleCorrupt(IntegrityError):
    pass


class DockerUnavailable(AirgapError):
    exit_code = ExitCode.REGISTRY
