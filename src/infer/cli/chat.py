"""`infer chat`: an interactive conversation in the terminal, or a scripted one from piped stdin."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Iterator

import typer

from infer.cli import console, options as o
from infer.errors import InferError, UsageError

EPILOG = """\
Examples:

\b
  infer chat
  infer chat -m qwen2.5:1.5b -s "You are a terse assistant."
  infer chat --resume
  printf 'Hi!\\nName a colour.\\n' | infer chat --quiet

In the chat, /help lists the commands. Type \"\"\" to start and end a multi-line message.
Piped stdin is a script: one message per line, \"\"\" blocks for several lines, /commands too.
"""

PROMPT, MORE = ">>> ", "... "
FENCE = '"""'


class View:
    """Shows answers: live-rendered Markdown on a terminal, raw text otherwise; notes on stderr."""

    def __init__(self, plain: bool, quiet: bool):
        self.markdown = not plain and console.is_tty(sys.stdout) and console.color_allowed(sys.stdout)
        self.quiet = quiet

    def stream(self, events: Iterator) -> Iterator:
        """Render Text events as they come; pass every event on."""
        if not self.markdown:
            wrote = ""
            try:
                for event in events:
                    if hasattr(event, "text"):
                        sys.stdout.write(event.text)
                        sys.stdout.flush()
                        wrote = event.text or wrote
                    yield event
            finally:
                if not wrote.endswith("\n"):
                    sys.stdout.write("\n")
                sys.stdout.flush()
            return
        from infer.cli.markdown import LiveMarkdown

        # Finished blocks are printed once; only the growing one is redrawn (see cli/markdown.py).
        with LiveMarkdown(console.out()) as live:
            for event in events:
                if hasattr(event, "text"):
                    live.feed(event.text)
                yield event

    def note(self, message: str) -> None:
        console.dim(message)

    def error(self, e: InferError) -> None:
        console.err().print(f"[red]error:[/red] {console.escape(e.message)}" + (f" ({console.escape(e.hint)})" if e.hint else ""))

    def stats(self, done) -> None:
        if self.quiet or done is None:
            return
        t, u = done.timings, done.usage
        self.note(f"{u.completion_tokens} tokens · {t.ttft_s:.2f} s to first token · {t.gen_tps:.1f} tok/s")


@o.shared_options
def chat(
    model_opts: o.ModelArgs = o.ModelArgs(),
    system: o.System = None,
    sampling_opts: o.SamplingArgs = o.SamplingArgs(),
    load_opts: o.LoadArgs = o.LoadArgs(),
    plain: Annotated[bool, typer.Option("--plain", help="Raw text, no Markdown rendering (the default off a terminal).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No stats line after each answer.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the last conversation.")] = False,
    verbose: o.Verbose = False,
    speculation_opts: o.SpeculationArgs = o.SpeculationArgs(),
    host: o.Host = None,
    api_key: o.ApiKey = None,
) -> None:
    """Talk with a model: streaming, rendered Markdown, history kept safe across Ctrl-C."""
    from infer import chat as core, complete
    from infer.cli.progress import CliReporter
    from infer.session import Conversation

    model = model_opts.model
    conv = Conversation()
    if resume:
        last = core.latest_chat()
        if last is None:
            raise UsageError("there is no saved conversation to resume", hint="start one with `infer chat`")
        conv = core.read_conversation(last)
        model = model or conv.model or None
    load_opts.check()
    given = sampling_opts.given()
    view = View(plain, quiet)
    speculation = speculation_opts.build()
    server = o.remote_server(host, api_key)
    if server is not None and (load_opts.rpc or load_opts.tensor_split or load_opts.force_rpc):
        raise UsageError("--rpc splits the model where it runs: give it to `infer serve`, not with --host")
    if server is not None and speculation is not None:
        raise UsageError("--lookup and --draft run where the model is: they cannot be combined with --host")
    if server is not None:  # the server holds the model warm: nothing is loaded here
        from infer.client import RemoteModel, model_name

        name, defaults = model_name(model, model_opts.quant)
        load = None
        session = core.Chat(RemoteModel(server, name, load_opts.ctx_size), name, conv, o.build_sampling(given, defaults))
    else:
        resolved = complete.prepare(model, quant=model_opts.quant, reporter=CliReporter())
        if verbose:
            console.info(f"model: {resolved.name} ({resolved.path}) from {resolved.origin}")
        load = load_opts.build(verbose, resolved.defaults)
        loaded = core.load_model(resolved, load, console.warn)
        if speculation is not None and speculation.draft:
            try:
                loaded.attach_draft(Path(speculation.draft), console.warn)
            except BaseException:
                loaded.close()
                raise
        defaults = resolved.defaults
        session = core.Chat(loaded, resolved.name, conv, o.build_sampling(given, defaults))
    session.speculation = speculation
    if verbose:
        console.info(f"running on: {session.model.where}")
    if system is not None:
        session.conv.system = system
    elif session.conv.system is None:
        session.conv.system = defaults.get("system")
    if resume:
        view.note(f"resumed {len(session.conv.messages)} messages from {session.path}")
    if not session.model.chat_template:
        view.note("this model has no chat template: using a generic ChatML template")
    try:
        if console.is_tty(sys.stdin):
            _interactive(session, view, load, given)
        else:
            _scripted(session, view, load, given)
    finally:
        if session.conv.messages:
            session.save()


class _Interrupts:
    """Ctrl-C at the prompt raises KeyboardInterrupt (input() returns); at any other instant — before the
    first token, during prefill, between tokens, while rendering or saving — it only sets a flag and cancels
    the generation, so a turn is never cut in the middle of its bookkeeping. The turn then ends as interrupted
    and the chat returns to the prompt."""

    def __init__(self, session):
        self.session = session
        self.at_prompt = True
        self.hit = False

    def __call__(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.at_prompt:
            raise KeyboardInterrupt
        self.hit = True
        self.session.model.cancel_all()

    def __enter__(self):
        import signal

        self._previous = signal.signal(signal.SIGINT, self)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        signal.signal(signal.SIGINT, self._previous)


def _interactive(session, view, *load_args) -> None:
    history = _readline_history()
    view.note(f"chatting with {session.model_name} · /help for commands · Ctrl-D or /bye to leave")
    armed = False  # Ctrl-C once at an empty prompt arms; twice leaves
    with _Interrupts(session) as interrupts:
        while True:
            try:
                interrupts.hit, interrupts.at_prompt = False, True
                text = _read_message(input)
                interrupts.at_prompt = False  # from here on, Ctrl-C cancels this turn only
            except EOFError:
                sys.stderr.write("\n")
                return
            except KeyboardInterrupt:  # at the prompt (or before the message was taken: it is dropped)
                if armed:
                    sys.stderr.write("\n")
                    return
                armed = True
                sys.stderr.write("\n")
                view.note("(Ctrl-C again, Ctrl-D or /bye to leave)")
                continue
            armed = False
            history()
            if not _handle(session, view, text, load_args, interrupts):
                return


def _scripted(session, view, *load_args) -> None:
    lines = iter(sys.stdin.read().splitlines())

    def next_line(prompt: str = "") -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    while True:
        try:
            text = _read_message(next_line)
        except EOFError:
            return
        if not _handle(session, view, text, load_args, None):
            return


def _read_message(read) -> str:
    """One message: a line, or the lines between two \"\"\" fences."""
    line = read(PROMPT)
    if line.strip() != FENCE and not line.lstrip().startswith(FENCE):
        return line
    first = line.strip()[len(FENCE):]
    parts = [first] if first else []
    while True:
        more = read(MORE)
        if more.rstrip().endswith(FENCE):
            tail = more.rstrip()[: -len(FENCE)]
            if tail:
                parts.append(tail)
            return "\n".join(parts)
        parts.append(more)


def _readline_history():
    """Line editing and a persistent history file (platformdirs state dir); returns a saver."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline
        return lambda: None
    from infer import settings

    path = settings.state_dir() / "chat_history"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            readline.read_history_file(path)
        readline.set_history_length(2000)
        if "libedit" not in (readline.__doc__ or ""):  # pasted lines stay one message (GNU readline 7-8.0 need it)
            readline.parse_and_bind("set enable-bracketed-paste on")
    except OSError:
        pass

    def save() -> None:
        try:
            readline.write_history_file(path)
        except OSError:
            pass

    return save


def _handle(session, view, text: str, load_args, interrupts) -> bool:
    """Act on one message or command; False means leave."""
    if not text.strip():
        return True
    try:
        if text.startswith("/") and not text.startswith("//"):
            return _command(session, view, text, load_args, interrupts)
        _turn(session, view, session.ask(text.removeprefix("/") if text.startswith("//") else text), interrupts)
    except InferError as e:
        view.error(e)
    except KeyboardInterrupt:  # Ctrl-C while a command loads a model: the chat goes on
        view.note("(interrupted)")
    return True


def _turn(session, view, events, interrupts) -> None:
    from infer.chat import TurnInfo

    done = None
    try:
        for event in view.stream(_until_interrupted(events, interrupts)):
            if isinstance(event, TurnInfo):
                if event.dropped:
                    view.note(f"({event.dropped} oldest turn{'s' if event.dropped > 1 else ''} dropped to fit the "
                              f"{session.n_ctx}-token context)")
            elif not hasattr(event, "text"):
                done = event
    except KeyboardInterrupt:  # scripted mode keeps Python's default Ctrl-C
        view.note("(interrupted: the partial answer is kept)")
        return
    if (interrupts is not None and interrupts.hit) or (done is not None and done.finish_reason == "cancelled"):
        view.note("(interrupted: the partial answer is kept)")
        return
    view.stats(done)


def _until_interrupted(events, interrupts):
    """Pass the turn's events on; once Ctrl-C was pressed, close the turn (it keeps its partial answer)."""
    try:
        for event in events:
            yield event
            if interrupts is not None and interrupts.hit:
                return
    finally:
        events.close()


def _command(session, view, text: str, load_args, interrupts) -> bool:
    from infer import chat as core
    from infer.session import COMMANDS, Conversation, parse_command, parse_set

    cmd = parse_command(text)
    if cmd.name == "/bye":
        return False
    if cmd.name == "/help":
        for name, doc in COMMANDS.items():
            console.info(f"  {name:<8} {doc}")
        console.info('  """      start and end a multi-line message')
    elif cmd.name == "/system":
        if cmd.arg:
            session.conv.system = cmd.arg
            view.note("system prompt set")
        else:
            console.info(session.conv.system or "(no system prompt)")
    elif cmd.name == "/set":
        if not cmd.arg:
            current = {**{k: getattr(session.base, k) for k in ("temperature", "top_p", "top_k", "min_p",
                                                                 "repeat_penalty", "seed", "max_tokens")},
                       **session.conv.options}
            console.info("  " + "  ".join(f"{k}={v}" for k, v in current.items()))
            return True
        key, value = parse_set(cmd.arg)
        session.conv.options[key] = value
        view.note(f"{key} = {value}")
    elif cmd.name == "/clear":
        session.save()
        session.conv = Conversation(model=session.model_name, system=session.conv.system, options=session.conv.options)
        session.path = core.chats_dir() / f"{session.conv.created.replace(':', '-')}.json"
        view.note("new conversation")
    elif cmd.name == "/save":
        if not cmd.arg:
            raise UsageError("usage: /save FILE")
        view.note(f"saved to {session.save(Path(cmd.arg).expanduser())}")
    elif cmd.name == "/load":
        if not cmd.arg:
            raise UsageError("usage: /load FILE")
        conv = core.read_conversation(Path(cmd.arg))
        session.conv = conv
        view.note(f"loaded {len(conv.messages)} messages"
                  + (f" (saved with {conv.model}; /model {conv.model} to switch)" if conv.model and conv.model != session.model_name else ""))
    elif cmd.name == "/model":
        _switch_model(session, view, cmd.arg, load_args)
    elif cmd.name == "/stats":
        used = session.context_used()
        line = f"context: {used} of {session.n_ctx} tokens used · {len(session.conv.messages)} messages"
        if session.last:
            t = session.last.timings
            line += f" · last answer: {t.ttft_s:.2f} s to first token, {t.gen_tps:.1f} tok/s"
        console.info(line)
    elif cmd.name == "/retry":
        _turn(session, view, session.retry(), interrupts)
    elif cmd.name == "/undo":
        view.note(f"removed {session.undo()} message(s)")
    return True


def _switch_model(session, view, name: str, load_args) -> None:
    from infer import complete
    from infer.chat import load_model
    from infer.cli.progress import CliReporter

    if not name:
        raise UsageError("usage: /model NAME", hint="e.g. /model qwen2.5:0.5b")
    load, given = load_args
    if load is None:  # --host: the server loads it
        from infer.client import model_name

        session.model.name, defaults = model_name(name)
        session.model_name = session.model.name
        session.base = o.build_sampling(given, defaults)
        view.note(f"now chatting with {session.model_name} on {session.model.where} (history kept)")
        return
    resolved = complete.prepare(name, reporter=CliReporter())
    started = time.perf_counter()
    new = load_model(resolved, load, console.warn)
    if session.speculation is not None and session.speculation.draft:
        try:
            new.attach_draft(Path(session.speculation.draft), console.warn)
        except UsageError as e:
            view.note(f"{e.message}: speculative decoding is off for {resolved.name}")
            session.speculation = None
        except BaseException:
            new.close()
            raise
    session.model.close()
    session.model, session.model_name = new, resolved.name
    session.base = o.build_sampling(given, resolved.defaults)
    view.note(f"now chatting with {resolved.name} (loaded in {time.perf_counter() - started:.1f} s; history kept)")
