"""`infer batch`: a JSONL file of requests through the scheduler, results to a JSONL file, resumable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from infer.cli import console, options as o, render
from infer.errors import UsageError

EPILOG = """\
Examples:

\b
  infer batch requests.jsonl -o results.jsonl
  infer batch requests.jsonl -o results.jsonl --parallel 8 --seed 1
  printf '{"prompt": "Name a colour."}\\n' | infer batch - -o out.jsonl
  infer batch requests.jsonl -o results.jsonl --json | jq .failed
  infer batch requests.jsonl -o results.jsonl --host http://127.0.0.1:11435 --parallel 16
"""

DEFAULT_PARALLEL = 4
DEFAULT_CTX = 4096


@o.shared_options
def batch(
    input_path: Annotated[str, typer.Argument(
        metavar="INPUT", help="Requests, one JSON object a line (OpenAI Batch format, or {\"prompt\"|\"messages\": ...}); "
        "'-' reads stdin.", show_default=False)],
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Results file (JSONL), appended to and resumed. '-' writes to stdout (no resume). "
        "(default: INPUT with .output.jsonl; stdout when INPUT is '-')", show_default=False)] = None,
    model: o.Model = None,
    quant: o.Quant = None,
    parallel: Annotated[int, typer.Option(
        "--parallel", min=1, max=256, help="Sequences decoded together (continuous batching); with --host, "
        "requests in flight.")] = DEFAULT_PARALLEL,
    ctx_size: Annotated[Optional[int], typer.Option(
        "--ctx-size", "-c", min=16, help=f"Context per sequence in tokens; the KV cache holds parallel x this. "
        f"A line that does not fit is an error line. (default: {DEFAULT_CTX}, capped by the model's)",
        rich_help_panel=o.CONTEXT, show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", min=0, help="Base seed: a line without its own seed gets one derived from this and its custom_id.",
        rich_help_panel=o.SAMPLING, show_default=False)] = None,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", "-n", min=1, help="Most tokens per answer, for lines that set no max_tokens. "
        "(default: until the model stops or the sequence's context is full)",
        rich_help_panel=o.SAMPLING, show_default=False)] = None,
    load_opts: o.HardwareArgs = o.LoadArgs(),
    speculation_opts: o.SpeculationArgs = o.SpeculationArgs(),
    host: o.Host = None,
    api_key: o.ApiKey = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite an output file that holds results of another input, model or server.")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the summary as one JSON object on stdout.", rich_help_panel=o.OUTPUT)] = False,
    verbose: o.Verbose = False,
) -> None:
    """Run every request of a JSONL file; write one result line per request as it finishes.

    Rerunning the same command after a crash, kill or Ctrl-C finishes what is left: every input line
    ends up exactly once in the output. Exit 0 only when every line succeeded (10: some lines failed;
    their error lines are in the output)."""
    from infer import batch as core
    from infer.errors import PartialFailure

    load_opts.check()
    server = o.remote_server(host, api_key)
    if server is not None and (load_opts.rpc or load_opts.tensor_split or load_opts.force_rpc):
        raise UsageError("--rpc splits the model where it runs: give it to `infer serve`, not with --host")
    if server is not None and speculation_opts.given:
        raise UsageError("--lookup and --draft speculate where the model runs: not with --host",
                         hint="drop them, or run the batch on the server's machine (`infer serve --lookup`)")
    speculation = speculation_opts.build()
    to_stdout = output == "-" or (output is None and input_path == "-")
    if to_stdout and json_out:
        raise UsageError("--json prints the summary on stdout, where the results would go", hint="give -o FILE")
    src = core.spool_stdin(sys.stdin.buffer) if input_path == "-" else Path(input_path)
    try:
        if src.is_dir():
            raise UsageError(f"{src} is a directory, not a JSONL file")
        out = None if to_stdout else Path(output) if output else src.with_name(src.stem + ".output.jsonl")
        if out is not None and out.is_dir():
            raise UsageError(f"{out} is a directory", hint="give -o a file name")
        if out is not None and src.exists() and out.exists() and out.resolve() == src.resolve():
            raise UsageError("the output file is the input file", hint="give another -o")
        scan = core.scan(src)  # duplicate custom_ids are refused here, before anything else
        if server is not None:
            name, summary = _remote(server, src, out, scan, model=model, quant=quant, parallel=parallel, seed=seed,
                                    max_tokens=max_tokens, force=force, quiet=json_out, verbose=verbose)
        else:
            name, summary = _local(src, out, scan, model=model, quant=quant, parallel=parallel, ctx_size=ctx_size,
                                   seed=seed, max_tokens=max_tokens, load=load_opts, speculation=speculation, force=force,
                                   quiet=json_out, verbose=verbose)
    finally:
        if input_path == "-":
            src.unlink(missing_ok=True)
    where = "stdout" if out is None else str(out)
    console.info(_summary_line(summary, where))
    if json_out:
        render.print_json({"input": input_path, "output": where, "model": name, **summary.as_dict()})
    if summary.interrupted:
        raise KeyboardInterrupt
    if summary.failed:
        raise PartialFailure(f"{summary.failed} of {summary.requests} lines failed: their error lines are in {where}")


def _existing(out: Path | None, scan, identity: dict, force: bool):
    """The output made ready to append to (see batch.open_output); nothing to resume on stdout."""
    from infer import batch as core

    if out is None:
        return core.Existing()
    existing = core.open_output(out, core.fingerprint(scan, identity), force=force)
    if existing.repaired:
        console.warn(f"{out}: cut a torn last line ({existing.repaired} bytes) left by an interrupted run")
    return existing


def _local(src: Path, out: Path | None, scan, *, model, quant, parallel, ctx_size, seed, max_tokens, load,
           speculation, force: bool, quiet: bool, verbose: bool):
    """The batch through a model loaded here: (model name, summary)."""
    from infer import batch as core, complete
    from infer.cli.progress import CliReporter

    resolved = complete.prepare(model, quant=quant, reporter=CliReporter())
    identity = {"name": resolved.name, "file": resolved.path.name, "size": resolved.path.stat().st_size}
    existing = _existing(out, scan, identity, force)
    per_seq = ctx_size or resolved.defaults.get("ctx_size") or DEFAULT_CTX
    parallel = max(1, min(parallel, scan.requests - existing.done))  # no KV cells for sequences never used
    options = load.build(verbose, resolved.defaults, ctx_size=per_seq * parallel)
    writer = core.Writer(out)
    try:
        if existing.done >= scan.requests:
            return resolved.name, _nothing_left(scan, existing)
        loaded = complete.load(resolved, options, console.warn)
        try:
            if speculation is not None and speculation.draft:
                loaded.attach_draft(Path(speculation.draft), console.warn)
            if not ctx_size and loaded.n_ctx_train > 0:
                per_seq = min(per_seq, loaded.n_ctx_train)
            settings = core.Settings(parallel=parallel, ctx_size=per_seq, seed=seed, max_tokens=max_tokens,
                                     defaults=resolved.defaults, model_name=resolved.name, speculation=speculation)
            if verbose:
                console.info(f"model: {resolved.name} on {loaded.where}; {parallel} sequences of {per_seq} tokens")
            with _progress(scan.requests, existing.done, quiet=quiet) as progress:
                return resolved.name, core.execute(src, writer, existing, loaded, settings, scan.requests, progress)
        finally:
            loaded.close()
    finally:
        writer.close()


def _remote(server, src: Path, out: Path | None, scan, *, model, quant, parallel, seed, max_tokens, force: bool,
            quiet: bool, verbose: bool):
    """The batch through a running server (`--host`): nothing is loaded here. (model name, summary)."""
    from infer import batch as core, batch_remote
    from infer.client import model_name

    name, _ = model_name(model, quant)
    batch_remote.probe(server)  # an unreachable server is refused before the output is touched
    existing = _existing(out, scan, {"host": str(server.endpoint), "name": name}, force)
    writer = core.Writer(out)
    try:
        if existing.done >= scan.requests:
            return name, _nothing_left(scan, existing)
        parallel = min(parallel, scan.requests - existing.done)
        if verbose:
            console.info(f"model: {name} on the server at {server.endpoint}; {parallel} requests in flight")
        defaults = batch_remote.Defaults(model=name, seed=seed, max_tokens=max_tokens)
        with _progress(scan.requests, existing.done, quiet=quiet) as progress:
            return name, batch_remote.execute(src, writer, existing, server, defaults, parallel, scan.requests, progress)
    finally:
        writer.close()


def _nothing_left(scan, existing):
    from infer import batch as core

    return core.Summary(requests=scan.requests, done_before=existing.done, ok=len(existing.ok),
                        failed=len(existing.failed))


def _summary_line(s, where: str) -> str:
    head = "interrupted" if s.interrupted else "done"
    parts = [f"batch {head}: {s.ok + s.failed}/{s.requests} lines", f"{s.ok} ok", f"{s.failed} failed"]
    if s.done_before:
        parts.append(f"{s.done_before} from an earlier run")
    parts.append(f"{s.completion_tokens} tokens in {s.wall_s:.1f} s ({s.tokens_per_s:.1f} tok/s)")
    if s.drafted_tokens:
        parts.append(f"speculation kept {s.accepted_tokens}/{s.drafted_tokens} drafted tokens")
    line = " · ".join(parts) + f" -> {where}"
    return line + ("; rerun the same command to finish" if s.interrupted else "")


class _progress:
    """A Rich bar on stderr on a TTY (lines done/total, tok/s, ETA); nothing otherwise."""

    def __init__(self, total: int, done: int, quiet: bool):
        self.total, self.done = total, done
        self.on = not quiet and console.is_tty(sys.stderr)
        self.bar = None

    def __enter__(self):
        if not self.on:
            return lambda s: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[tps]}"),
                            TimeRemainingColumn(), console=console.err(), transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("batch", total=self.total, completed=self.done, tps="")

        def update(s) -> None:
            self.bar.update(task, completed=s.ok + s.failed, tps=f"{s.tokens_per_s:.1f} tok/s")

        return update

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
