"""`infer bench`: speed of a model here, measured like llama-bench."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Optional

import typer

from infer.cli import console, options as o, render
from infer.errors import UsageError

EPILOG = """\
Examples:

\b
  infer bench
  infer bench -m qwen2.5:0.5b -p 128 -p 512 -n 64 -r 3
  infer bench --json | jq '.tg.tps.median'
"""


@o.shared_options
def bench(
    model_opts: o.ModelArgs = o.ModelArgs(),
    prompt_sizes: Annotated[Optional[list[int]], typer.Option("-p", "--prompt", min=1,
                                                              help="Prompt size(s) for pp (repeatable). (default: 512)",
                                                              show_default=False)] = None,
    gen_tokens: Annotated[int, typer.Option("-n", "--gen", min=1, help="Tokens for tg.")] = 128,
    repeat: Annotated[int, typer.Option("-r", "--repeat", min=1, help="Repetitions of each measure.")] = 5,
    load_opts: o.HardwareArgs = o.LoadArgs(),
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")] = False,
    verbose: o.Verbose = False,
) -> None:
    """Measure prompt processing (pp), generation (tg), time to first token and load time."""
    from infer import bench as core, complete
    from infer.cli.progress import CliReporter

    load_opts.check()
    sizes = prompt_sizes or [512]
    if len(set(sizes)) != len(sizes):
        raise UsageError("each -p size may be given once")
    resolved = complete.prepare(model_opts.model, quant=model_opts.quant, reporter=CliReporter())
    load = load_opts.build(verbose, resolved.defaults)
    load, where = complete.plan(resolved.path, load, console.warn)
    quiet = json_out or not console.is_tty(__import__("sys").stderr)
    result = core.run(resolved.path, resolved.name, load, sizes, gen_tokens, repeat,
                      progress=(lambda m: None) if quiet else (lambda m: console.dim(f"measuring {m}...")))
    if json_out:
        data = {"model": result.model, "threads": result.threads, "gpu_layers": result.gpu_layers, "where": where,
                "repeat": repeat, "load_s": asdict(result.load_s), "ttft_s": asdict(result.ttft_s),
                "pp": [{"n": n, "tps": asdict(s)} for n, s in result.pp.items()],
                "tg": {"n": result.tg[0], "tps": asdict(result.tg[1])}}
        render.print_json(data)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("TEST", "MEDIAN", "MIN", "MAX", "UNIT"):
        table.add_column(col, justify="left" if col in ("TEST", "UNIT") else "right")
    for n, s in result.pp.items():
        table.add_row(f"pp{n}", f"{s.median:.1f}", f"{s.min:.1f}", f"{s.max:.1f}", "tok/s")
    n, s = result.tg
    table.add_row(f"tg{n}", f"{s.median:.1f}", f"{s.min:.1f}", f"{s.max:.1f}", "tok/s")
    for label, s in (("ttft (chat)", result.ttft_s), ("load", result.load_s)):
        table.add_row(label, f"{s.median * 1000:.0f}", f"{s.min * 1000:.0f}", f"{s.max * 1000:.0f}", "ms")
    console.out().print(table)
    console.out().print(f"{result.model} · {result.threads} threads · {where} · {repeat} runs each")
