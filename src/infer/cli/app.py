"""The root command: registers the commands and owns the one error boundary.

Nothing imports this module but the console script: help text lives in helptext.py and the
completion scripts in completion.py, so docs.py and the commands import those, never the root."""

from __future__ import annotations

import errno
import os
import sys
from typing import Annotated, Optional

import typer

from infer import settings
from infer.cli.completion import COMPLETE_VAR
from infer.cli.helptext import EXIT_CODES, examples, with_env
from infer.errors import ExitCode, InferError

app = typer.Typer(
    name="infer",
    help="Run language models on your own machine, offline: pull a GGUF model once, then run and chat.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: Typer's Rich help costs ~0.2 s of start-up (rich.markdown et al.)
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from infer.versions import version_line  # also answered without Typer: cli/fast.py

        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[Optional[bool], typer.Option("--version", "-V", callback=_version, is_eager=True,
                                                    help="Print infer's and llama.cpp's versions.")] = None,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colour in any output (also: NO_COLOR).")] = False,
) -> None:
    if no_color:
        from infer.cli import console

        console.set_no_color(True)


def _register() -> None:
    from infer.cli import batch, bench, cache, chat, doctor, embed, models, run, serve, worker
    from infer.cli.completion import completion

    commands = [
        ("run", run.run, run.EPILOG),
        ("chat", chat.chat, chat.EPILOG),
        ("batch", batch.batch, batch.EPILOG),
        ("pull", models.pull, models.PULL_EPILOG),
        ("list", models.list_models, examples("infer list", "infer list --json | jq '.models[].name'")),
        ("show", models.show, examples("infer show smollm2", "infer show smollm2 --template",
                                       "infer show ./model.gguf --json")),
        ("rm", models.rm, examples("infer rm smollm2", "infer rm -y acme/tiny-GGUF:Q8_0")),
        ("verify", models.verify, examples("infer verify", "infer verify smollm2 --json")),
        ("catalog", models.catalog_cmd, examples("infer catalog", "infer catalog --json")),
        ("bench", bench.bench, bench.EPILOG),
        ("embed", embed.embed, embed.EPILOG),
        ("doctor", doctor.doctor, doctor.EPILOG),
        ("cache", cache.cache, cache.EPILOG),
        ("serve", serve.serve, serve.SERVE_EPILOG),
        ("ps", serve.ps, serve.PS_EPILOG),
        ("worker", worker.worker, worker.EPILOG),
        ("completion", completion, examples("infer completion bash > ~/.local/share/bash-completion/completions/infer")),
    ]
    for name, fn, epilog in commands:
        app.command(name, epilog=with_env(name, epilog))(fn)
    app.command("ls", hidden=True, help="Alias of list.")(models.list_models)


_register()


def _fail(message: str, code: int) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"infer: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def quiet_broken_pipe() -> None:
    """stdout's reader went away (`| head`): end quietly with 0, and keep Python from complaining at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    raise SystemExit(0)


class _StdoutWatch:
    """Whether stdout's reader went away. Typer and Click answer EPIPE (in a command or in --help) with
    exit(1) after swapping sys.stdout for a wrapper that hides the error; Rich, with exit(1) after
    pointing fd 1 at /dev/null. Neither is a failure: `infer list | head -1` must end with 0."""

    def __init__(self) -> None:
        self.stream = sys.stdout
        self.ident = self._ident()

    @staticmethod
    def _ident():
        try:
            st = os.fstat(1)
            return st.st_dev, st.st_ino
        except OSError:
            return None

    def reader_gone(self) -> bool:
        if sys.stdout is not self.stream or self._ident() != self.ident:
            return True
        try:  # still our pipe: Linux and macOS report POLLERR once its reader closed it
            import select

            poller = select.poll()
            poller.register(1, select.POLLOUT)
            return any(ev & select.POLLERR for _fd, ev in poller.poll(0))
        except (OSError, AttributeError, ValueError):
            return False


def _click_exceptions():
    """Typer >= 0.29 vendors click as typer._click; older Typer uses click itself."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - depends on the installed Typer
        from click import exceptions
    return exceptions


def exit_now() -> None:
    """The console script ends a command that succeeded here (main() itself returns): without the
    interpreter's teardown, which frees every module (numpy, llama_cpp, Typer) and cost a one-shot
    `infer run` ~16% of its CPU time. Exit handlers still run; with another thread alive, the
    normal exit waits for it instead."""
    import threading

    if threading.active_count() > 1:
        return
    import atexit

    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        quiet_broken_pipe()
    if "ctypes" in sys.modules:  # native code may have written through C's stdio buffers
        import ctypes

        ctypes.CDLL(None).fflush(None)
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    click = _click_exceptions()
    if COMPLETE_VAR in os.environ:  # a shell asks for completions: answer fast, nothing else
        from typer.completion import completion_init

        completion_init()
    stdout = _StdoutWatch()
    try:
        try:
            # Typer answers a KeyboardInterrupt, and typer.Exit, by returning the exit code here.
            code = app(args=argv, prog_name="infer", standalone_mode=False)
            sys.stdout.flush()  # a closed pipe shows here, inside the boundary, not at interpreter exit
        except SystemExit as e:
            if e.code == 1 and stdout.reader_gone():
                quiet_broken_pipe()  # the libraries' way of saying EPIPE: see _StdoutWatch
            raise
        if code == ExitCode.INTERRUPTED:
            _fail("interrupted", int(ExitCode.INTERRUPTED))
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except InferError as e:
        if settings.debug():
            import traceback

            traceback.print_exc()
        _fail(e.message + (f" ({e.hint})" if e.hint else ""), int(e.exit_code))
    except (typer.Exit, getattr(click, "Exit", typer.Exit)) as e:
        raise SystemExit(e.exit_code) from None
    except click.UsageError as e:
        if not e.format_message().strip():  # bare `infer`: the help was shown
            raise SystemExit(0) from None
        cmd = e.ctx.command_path if e.ctx else "infer"
        _fail(f"{e.format_message()} (see `{cmd} --help`)", int(ExitCode.USAGE))
    except (KeyboardInterrupt, typer.Abort, getattr(click, "Abort", typer.Abort)):
        _fail("interrupted", int(ExitCode.INTERRUPTED))
    except BrokenPipeError:
        quiet_broken_pipe()
    except click.ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            _internal(e)
        from infer.errors import disk_error

        error = disk_error(e, "use")
        _fail(error.message + (f" ({error.hint})" if error.hint else ""), int(error.exit_code))
    except Exception as e:  # the boundary: a bug still gets one line and a documented code
        _internal(e)


# A local file the core did not wrap in DiskError: still "disk", with the path, and the disk's exit code.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _internal(e: Exception) -> None:
    if settings.debug():
        raise e
    _fail(f"internal error: {type(e).__name__}: {e} (INFER_DEBUG=1 shows the traceback; please report it)",
          int(ExitCode.INTERNAL))
