"""The command line. Errors are caught in exactly one place, ``_Group``: those
of the commands in ``invoke``, click's own usage errors in ``main``. Each is
one line on stderr, a hint, and the exit code of the error's class."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import click

from airgap import __version__
from airgap import log as airgap_log
from airgap.bundle import BundleReader
from airgap.credentials import Credentials, CredentialSource
from airgap.descriptor import Platform
from airgap.errors import AirgapError, ExitCode, UsageError
from airgap.media import open_input
from airgap.parts import StreamClosed
from airgap.progress import Progress
from airgap.reference import parse_registry_host
from airgap.transport import check_ca_bundle, redact

F = Callable[..., Any]


@dataclasses.dataclass
class Settings:
    verbose: int = 0
    quiet: int = 0
    json: bool = False
    debug: bool = False
    # the command line, for errors raised before the options are applied
    argv: list[str] = dataclasses.field(default_factory=list)

    @property
    def progress(self) -> Progress:
        return Progress(enabled=None if not self.quiet else False)


SETTINGS = Settings()


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so that the same cleanup runs."""


class _Group(click.Group):
    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """click without its own error report, so that its usage errors are
        reported as every other error is."""
        argv = list(sys.argv[1:] if args is None else args)
        # one process may run several commands (tests do): start from scratch
        vars(SETTINGS).update(vars(Settings(argv=argv)))
        if not standalone_mode:
            return super().main(argv, prog_name, complete_var, False, **extra)
        with _sigterm_interrupts():
            code = self._run(argv, prog_name, complete_var, extra)
        sys.exit(code)

    def _run(
        self,
        argv: list[str],
        prog_name: str | None,
        complete_var: str | None,
        extra: dict[str, Any],
    ) -> int:
        try:
            done = super().main(
                argv, prog_name, complete_var, standalone_mode=False, **extra
            )
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # the help, not an error
            return exc.exit_code
        except click.ClickException as exc:
            return _report(exc.format_message(), _help_hint(exc), exc.exit_code, exc)
        except (click.Abort, KeyboardInterrupt) as exc:
            return _report(_interruption(exc), None, ExitCode.INTERRUPTED, exc)
        return done if isinstance(done, int) else 0

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AirgapError as exc:
            ctx.exit(_report(exc.message, exc.hint, exc.exit_code, exc))
        except KeyboardInterrupt as exc:
            ctx.exit(_report(_interruption(exc), None, ExitCode.INTERRUPTED, exc))
        except OSError as exc:
            ctx.exit(_report(redact(str(exc)), None, ExitCode.ERROR, exc))


def _interruption(exc: BaseException) -> str:
    # click turns an interrupt while it parses into Abort
    stopped = exc.__cause__ if isinstance(exc, click.Abort) else exc
    return "terminated" if isinstance(stopped, _Terminated) else "interrupted"


def _help_hint(exc: click.ClickException) -> str | None:
    ctx = getattr(exc, "ctx", None)
    return f"see '{ctx.command_path} --help'" if ctx is not None else None


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (kill, systemd, docker stop) cleans up as Ctrl-C does: a split
    pack removes its parts instead of leaving them half written."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def _asked(flag: str) -> bool:
    """Whether the command line holds ``flag``: an error in parsing the
    options comes before they are applied."""
    argv = SETTINGS.argv
    return flag in (argv[: argv.index("--")] if "--" in argv else argv)


def _report(
    message: str, hint: str | None, code: int, exc: BaseException | None
) -> int:
    """The error on stderr, and with --json as a document on stdout; returns
    the exit code."""
    if (SETTINGS.debug or _asked("--debug")) and exc is not None:
        traceback.print_exception(exc, file=sys.stderr)
    stdout_gone = isinstance(exc, StreamClosed)
    if stdout_gone:
        _detach_stdout()
    click.echo(f"airgap: error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    if SETTINGS.json or _asked("--json"):
        error = {"message": message, "hint": hint, "exitCode": int(code)}
        partial = getattr(exc, "partial", None) or {}
        document = json.dumps({"ok": False, "error": error, **partial}, indent=2)
        click.echo(document, err=stdout_gone)
    return int(code)


def _detach_stdout() -> None:
    """The reader of stdout is gone: point it at /dev/null, or the bytes still
    buffered for it fail once more at exit, with a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass  # not a file descriptor (a test runner's capture)


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
        callback=registry_host,
        help="Plain HTTP or unverified TLS for this registry (repeatable).",
    )
    @click.option(
        "--ca-cert",
        type=click.Path(exists=True, dir_okay=False),
        callback=_ca_bundle,
        help="CA bundle (PEM) to trust for registries.",
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


def registry_host(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Option callback: ``--registry`` and its kin name a HOST[:PORT], checked
    before any request is sent."""
    what = param.opts[0]
    if isinstance(value, tuple):
        return tuple(parse_registry_host(v, what) for v in value)
    return parse_registry_host(value, what) if value is not None else None


def _ca_bundle(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    return check_ca_bundle(value) if value is not None else None


def output_file(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Option callback: a file to write (or ``-``), checked before the work
    that fills it."""
    if value is None or value == "-":
        return value
    what, path = max(param.opts, key=len), Path(value)
    if path.is_dir():
        raise UsageError(
            f"{what} {value} is a directory",
            f"name the file to write, e.g. {what} {path / 'NAME'}",
        )
    if not path.parent.is_dir():
        raise UsageError(
            f"{what} {value}: there is no directory {path.parent}",
            f"create {path.parent} first, or name a file in a directory that exists",
        )
    return value


def mirror_values(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Option callback: ``--mirror`` values checked as the options are read."""
    parse_mirrors(value)
    return value


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


@click.group(
    "airgap", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="airgap")
@_output_options
def main(verbose: int, quiet: int, as_json: bool, debug: bool) -> None:
    """Carry container images into networks with no internet, digest for digest.

    On the connected host, `airgap pack` writes one bundle; on the isolated host,
    `airgap unpack` verifies it and pushes every image into a registry.
    """
    _apply(verbose, quiet, as_json, debug)


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def parse_mirrors(values: tuple[str, ...]) -> dict[str, str]:
    mirrors = {}
    hint = "write REGISTRY=HOST[:PORT], e.g. docker.io=localhost:5001"
    for value in values:
        registry, sep, mirror = value.partition("=")
        if not sep or not registry or not mirror:
            raise UsageError(f"invalid --mirror {value!r}", hint)
        try:
            registry = parse_registry_host(registry, "--mirror registry")
            mirrors[registry] = parse_registry_host(mirror, "--mirror host")
        except UsageError as exc:
            raise UsageError(exc.message, hint) from None
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
