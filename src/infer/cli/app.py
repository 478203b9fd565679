"""The root command: registers the commands and owns the one error boundary."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from infer import __version__, settings
from infer.errors import EXIT_CODE_DOCS, ExitCode, InferError

EPILOG = "Exit codes: " + "; ".join(f"{int(c)} {d.split(':')[0].split(' (')[0]}" for c, d in EXIT_CODE_DOCS.items())

app = typer.Typer(
    name="infer",
    help="Run language models on your own machine, offline: pull a GGUF model once, then run and chat.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: Typer's Rich help costs ~0.2 s of start-up (rich.markdown et al.)
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from infer.versions import llama_cpp_version

        typer.echo(f"infer {__version__} (llama-cpp-python {llama_cpp_version()})")
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


def examples(*lines: str) -> str:
    """An epilog of example commands, kept as written (Click's \\b: no re-wrapping)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


def with_env(command: str, epilog: str) -> str:
    """Append the environment variables the command reads, from the one registry in settings."""
    names = ", ".join(v.name for v in settings.env_for(command) if not v.name.startswith("INFER_TEST_"))
    return f"{epilog.rstrip()}\n\nEnvironment: {names}."


def completion(shell: Annotated[str, typer.Argument(help="bash, zsh or fish.", show_default=False,
                                                    autocompletion=lambda: ["bash", "zsh", "fish"])]) -> None:
    """Print the shell completion script (see the README to install it)."""
    from infer.cli.docs import SHELLS, completion_script
    from infer.errors import UsageError

    if shell not in SHELLS:
        raise UsageError(f"no completion for {shell!r}", hint="choose bash, zsh or fish")
    sys.stdout.write(completion_script(shell))


def _register() -> None:
    from infer.cli import batch, bench, cache, chat, doctor, models, run

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
        ("doctor", doctor.doctor, doctor.EPILOG),
        ("cache", cache.cache, cache.EPILOG),
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
    # stdout's reader went away (`| head`): end quietly, and keep Python from complaining at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    raise SystemExit(0)


def _click_exceptions():
    """Typer >= 0.29 vendors click as typer._click; older Typer uses click itself."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - depends on the installed Typer
        from click import exceptions
    return exceptions


COMPLETE_VAR = "_INFER_COMPLETE"


def main(argv: list[str] | None = None) -> None:
    click = _click_exceptions()
    if COMPLETE_VAR in os.environ:  # a shell asks for completions: answer fast, nothing else
        from typer.completion import completion_init

        completion_init()
    try:
        # Typer answers a KeyboardInterrupt, and typer.Exit, by returning the exit code here.
        code = app(args=argv, prog_name="infer", standalone_mode=False)
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
    except Exception as e:  # the boundary: a bug still gets one line and a documented code
        if settings.debug():
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (INFER_DEBUG=1 shows the traceback; please report it)",
              int(ExitCode.INTERNAL))
