"""The command line. Errors are caught in exactly one place (``_Group.invoke``):
one line on stderr, a hint, and the exit code of the error's class."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from airgap import __version__
from airgap import log as airgap_log
from airgap.bundle import BundleReader
from airgap.credentials import Credentials, CredentialSource
from airgap.descriptor import Platform
from airgap.errors import AirgapError, ExitCode, UsageError
from airgap.media import open_input
from airgap.progress import Progress
from airgap.transport import redact

F = Callable[..., Any]


@dataclasses.dataclass
class Settings:
    verbose: int = 0
    quiet: int = 0
    json: bool = False
    debug: bool = False

    @property
    def progress(self) -> Progress:
        return Progress(enabled=None if not self.quiet else False)


SETTINGS = Settings()


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AirgapError as exc:
            _report(exc.message, exc.hint, exc.exit_code, exc)
            ctx.exit(int(exc.exit_code))
        except KeyboardInterrupt:
            _report("interrupted", None, ExitCode.INTERRUPTED, None)
            ctx.exit(int(ExitCode.INTERRUPTED))
        except OSError as exc:
            _report(redact(str(exc)), None, ExitCode.ERROR, exc)
            ctx.exit(int(ExitCode.ERROR))


def _report(
    message: str, hint: str | None, code: int, exc: BaseException | None
) -> None:
    if SETTINGS.debug and exc is not None:
        traceback.print_exception(exc, file=sys.stderr)
    click.echo(f"airgap: error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    if SETTINGS.json:
        error = {"message": message, "hint": hint, "exitCode": int(code)}
        partial = getattr(exc, "partial", None) or {}
        click.echo(json.dumps({"ok": False, "error": error, **partial}, indent=2))


def _output_options(func: F) -> F:
    for option in (
        click.option("--debug", is_flag=True, help="Tracebacks on errors."),
        click.option(
            "--json", "as_json", is_flag=True, help="Machine-readable result."
        ),
        click.option(
            "-q", "--quiet", count=True, help="No progress bars, fewer log lines."
        ),
        click.option(
            "-v", "--verbose", count=True, help="More log lines (-vv for HTTP)."
        ),
    ):
        func = option(func)
    return func


def _apply(verbose: int, quiet: int, as_json: bool, debug: bool) -> None:
    """Adds to what the group's options set, so ``airgap -v pack`` and
    ``airgap pack -v`` mean the same."""
    SETTINGS.verbose += verbose
    SETTINGS.quiet += quiet
    SETTINGS.json = SETTINGS.json or as_json
    SETTINGS.debug = SETTINGS.debug or debug
    quiet_level = SETTINGS.quiet + (1 if SETTINGS.json else 0)
    airgap_log.configure(SETTINGS.verbose, quiet_level)


def common(func: F) -> F:
    """-v/-q/--json/--debug, which every command takes."""

    @_output_options
    @functools.wraps(func)
    def wrapper(verbose: int, quiet: int, as_json: bool, debug: bool, **kw: Any) -> Any:
        _apply(verbose, quiet, as_json, debug)
        return func(**kw)

    return wrapper


def registry_options(func: F) -> F:
    @click.option(
        "--insecure-registry",
        multiple=True,
        metavar="HOST[:PORT]",
        help="Plain HTTP or unverified TLS for this registry (repeatable).",
    )
    @click.option(
        "--ca-cert",
        type=click.Path(exists=True, dir_okay=False),
        help="CA bundle to trust for registries.",
    )
    @click.option("--username", help="Registry username (with --password-stdin).")
    @click.option(
        "--password-stdin", is_flag=True, help="Read the password from stdin."
    )
    @functools.wraps(func)
    def wrapper(
        insecure_registry: tuple[str, ...],
        ca_cert: str | None,
        username: str | None,
        password_stdin: bool,
        **kw: Any,
    ) -> Any:
        explicit = _explicit_credentials(username, password_stdin)
        kw["pool_options"] = {
            "credentials": CredentialSource(explicit),
            "insecure": insecure_registry,
            "ca_cert": ca_cert,
        }
        return func(**kw)

    return wrapper


def _explicit_credentials(
    username: str | None, password_stdin: bool
) -> Credentials | None:
    if password_stdin and not username:
        raise UsageError("--password-stdin needs --username")
    if not username:
        return None
    if not password_stdin:
        raise UsageError(
            "--username needs --password-stdin",
            'echo "$PASSWORD" | airgap ... --username USER --password-stdin',
        )
    password = sys.stdin.readline().rstrip("\r\n")
    return Credentials(username=username, password=password)


def emit(result: dict[str, Any], lines: list[str], err: bool = False) -> None:
    """The result on stdout (stderr when stdout carries a bundle): JSON with
    --json, else human lines."""
    if SETTINGS.json:
        click.echo(json.dumps({"ok": True, **result}, indent=2), err=err)
        return
    for line in lines:
        click.echo(line, err=err)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="airgap")
@_output_options
def main(verbose: int, quiet: int, as_json: bool, debug: bool) -> None:
    """Carry container images into networks with no internet, digest for digest.

    On the connected host, `airgap pack` writes one bundle; on the isolated host,
    `airgap unpack` verifies it and pushes every image into a registry.
    """
    # one process may run several commands (tests do): start from scratch
    vars(SETTINGS).update(vars(Settings()))
    _apply(verbose, quiet, as_json, debug)


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def parse_mirrors(values: tuple[str, ...]) -> dict[str, str]:
    mirrors = {}
    for value in values:
        registry, sep, mirror = value.partition("=")
        if not sep or not registry or not mirror:
            raise UsageError(
                f"invalid --mirror {value!r}",
                "write REGISTRY=HOST[:PORT], e.g. docker.io=localhost:5001",
            )
        mirrors[registry] = mirror
    return mirrors


def parse_platforms(values: tuple[str, ...]) -> tuple[Platform, ...] | None:
    out = []
    for value in values:
        out += [Platform.parse(p) for p in value.split(",") if p.strip()]
    return tuple(out) or None


def open_bundle(path: str) -> BundleReader:
    return BundleReader(open_input(path), path)


# The commands live in their own module; importing it registers them.
from airgap import commands  # noqa: E402, F401
