"""`infer embed`: embeddings as JSON lines, one per input."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from infer.cli import console, options as o
from infer.errors import UsageError

EPILOG = """\
Examples:

\b
  infer embed "The cat sat on the mat." "A dog slept on the rug."
  cat sentences.txt | infer embed -m smollm2 > vectors.jsonl
  infer embed "hello" | jq '.embedding | length'

Each output line: {"index": N, "tokens": N, "embedding": [...]} (L2-normalised, in input order).
"""


def embed(
    texts: Annotated[Optional[list[str]], typer.Argument(
        metavar="[TEXT]...", help="Texts to embed, one input each. Piped stdin adds one input per non-blank line.",
        show_default=False)] = None,
    model: o.Model = None,
    quant: o.Quant = None,
    ctx_size: Annotated[Optional[int], typer.Option(
        "--ctx-size", "-c", min=16, help="Longest input in tokens; longer ones are refused. (default: the model's)",
        rich_help_panel=o.CONTEXT, show_default=False)] = None,
    threads: o.Threads = None,
    gpu_layers: o.GpuLayers = None,
    verbose: o.Verbose = False,
) -> None:
    """Embed texts: one JSON line per input on stdout (index, tokens, embedding), inputs pooled in batches."""
    from infer import complete
    from infer.cli.progress import CliReporter

    inputs = list(texts or []) + [line for line in _stdin_text().splitlines() if line.strip()]
    if not inputs:
        raise UsageError("nothing to embed: give texts as arguments or pipe lines on stdin", hint='infer embed "hello"')
    resolved = complete.prepare(model, quant=quant, reporter=CliReporter())
    if verbose:
        console.info(f"model: {resolved.name} ({resolved.path}) from {resolved.origin}")
    load = o.build_load(ctx_size, threads, gpu_layers, verbose, resolved.defaults)
    loaded = complete.load(resolved, load, console.warn)
    try:
        for index, e in enumerate(loaded.embeddings(inputs)):
            # nine significant digits give back the float32 llama.cpp computed
            vector = [float(f"{v:.9g}") for v in e.vector]
            sys.stdout.write(json.dumps({"index": index, "tokens": e.tokens, "embedding": vector}) + "\n")
            sys.stdout.flush()
    finally:
        loaded.close()


def _stdin_text() -> str:
    """Piped stdin, whole (undecodable bytes replaced, with a warning); "" on a terminal."""
    material = o.stdin_material()
    if material is None:
        return ""
    from infer.complete import read_bounded

    return read_bounded(material, lambda text: 0, 0, console.warn)  # no token bound: each line is checked later
