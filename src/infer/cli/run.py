"""`infer run`: one-shot completion for shells and scripts."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from infer.cli import console, options as o, render
from infer.errors import UsageError

EPILOG = """\
Examples:

\b
  infer run "Why is the sky blue?"
  cat notes.md | infer run "Summarize in three bullets"
  infer run -m qwen2.5:0.5b --temperature 0 --seed 1 -n 64 "Write a haiku"
  infer run --schema person.json "Invent a person" | jq .name
  infer run --json -n 32 "hi" | jq .timings
  infer run --raw -n 20 "Once upon a time"
"""


@o.shared_options
def run(
    prompt: Annotated[Optional[list[str]], typer.Argument(
        help="The instruction. Piped stdin is the material: the model sees STDIN, a blank line, then the instruction.",
        show_default=False)] = None,
    model_opts: o.ModelArgs = o.ModelArgs(),
    system: o.System = None,
    raw: Annotated[bool, typer.Option("--raw", help="Plain text completion: no chat template.")] = False,
    sampling_opts: o.SamplingArgs = o.SamplingArgs(),
    load_opts: o.LoadArgs = o.LoadArgs(),
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object: model, text, finish_reason, usage, timings.",
                                           rich_help_panel=o.OUTPUT)] = False,
    schema: Annotated[Optional[str], typer.Option("--schema", help="Constrain the output to this JSON schema (a file or inline JSON).",
                                                  rich_help_panel=o.OUTPUT, show_default=False)] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="'json': constrain the output to valid JSON.",
                                               rich_help_panel=o.OUTPUT, show_default=False)] = None,
    stats: Annotated[bool, typer.Option("--stats", help="After the answer, one line of timings on stderr.",
                                        rich_help_panel=o.OUTPUT)] = False,
    speculation_opts: o.SpeculationArgs = o.SpeculationArgs(),
    cache: Annotated[Optional[bool], typer.Option(
        "--cache/--no-cache", help="Reuse the saved KV state of a prompt's prefix, and save it for next time "
        "(default: off, or `cache = true` in config.toml).", rich_help_panel=o.CONTEXT, show_default=False)] = None,
    cache_size: Annotated[Optional[str], typer.Option(
        "--cache-size", help="Size cap of the prompt cache, e.g. 4G (default: 4G, or `cache_size` in config.toml).",
        rich_help_panel=o.CONTEXT, show_default=False)] = None,
    verbose: o.Verbose = False,
    host: o.Host = None,
    api_key: o.ApiKey = None,
) -> None:
    """Answer one prompt and exit: text streams to stdout, nothing else does."""
    from infer import complete

    if fmt is not None and fmt.lower() != "json":
        raise UsageError(f"--format {fmt!r} is not supported", hint="use --format json, or --schema for a JSON schema")
    schema_obj = o.load_schema(schema) if schema else None
    instruction = " ".join(prompt or []).strip()
    material = o.stdin_material()  # read after the model loads, as far as its context can hold
    if not instruction and (material is None or material.empty):
        raise UsageError("no prompt: give one as arguments or pipe text on stdin", hint='infer run "Why is the sky blue?"')
    load_opts.check()
    given = sampling_opts.given()
    load = None
    server = o.remote_server(host, api_key)
    if server is not None and speculation_opts.given:
        raise UsageError("--lookup and --draft run where the model is: they cannot be combined with --host")
    if server is not None and (load_opts.rpc or load_opts.tensor_split or load_opts.force_rpc):
        raise UsageError("--rpc splits the model where it runs: give it to `infer serve`, not with --host")
    if server is not None:  # a warm model on a server: nothing is loaded here
        from infer.client import model_name, read_material

        name, defaults = model_name(model_opts.model, model_opts.quant)
        sampling = o.build_sampling(given, defaults)
        system = system if system is not None else defaults.get("system")
        text = complete.join_prompt(instruction, read_material(material, console.warn) if material else "")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        fmt_args = {"schema": schema_obj, "json_mode": fmt is not None}
        events = server.complete(name, text, sampling, **fmt_args) if raw else server.chat(name, messages, sampling, **fmt_args)
        if verbose or stats:
            console.info(f"running on: {events.server.endpoint}")
        grammar = schema_obj is not None or fmt is not None
    else:
        from infer.cli.progress import CliReporter

        resolved = complete.prepare(model_opts.model, quant=model_opts.quant, reporter=CliReporter())
        if verbose:
            console.info(f"model: {resolved.name} ({resolved.path}) from {resolved.origin}")
        grammar = complete.grammar_for(schema_obj, json_mode=fmt is not None)
        sampling = o.build_sampling(given, resolved.defaults, grammar=grammar)
        load = load_opts.build(verbose, resolved.defaults)
        system = system if system is not None else resolved.defaults.get("system")
        show_where = (lambda m: console.info(f"running on: {m.where}")) if verbose or stats else (lambda m: None)
        events = complete.run(resolved, load, sampling, instruction, system=system, raw=raw, material=material,
                              cache=o.cache_options(cache, cache_size),
                              speculation=speculation_opts.build(),
                              notice=console.warn, on_load=show_where)
        name = resolved.name
    chunks: list[str] = []
    done = None
    stream = not json_out
    try:
        for event in events:
            if isinstance(event, complete.Text):
                chunks.append(event.text)
                if stream:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
            else:
                done = event
    except KeyboardInterrupt:
        if stream and chunks and not chunks[-1].endswith("\n"):
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    answer = "".join(chunks)
    if json_out:
        render.print_json(render.result_json(getattr(events, "model", name), answer, done))
    elif not answer.endswith("\n"):
        sys.stdout.write("\n")
        sys.stdout.flush()
    if grammar and done is not None and done.finish_reason == "length":
        console.warn("the output stopped at the token limit, so the JSON is incomplete: raise --max-tokens")
    if stats and done is not None:
        console.info(render.stats_line(done))
    if verbose and done is not None and load is not None:
        from infer import hardware

        console.info(f"threads: {hardware.threads_note(load.n_threads)}")
