"""`infer cache`: the prompt cache's entries, and `infer cache clear [MODEL]`."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from infer.cli import console, render
from infer.errors import UsageError

EPILOG = """\
Examples:

\b
  infer cache
  infer cache --json
  infer cache clear
  infer cache clear smollm2
"""


def cache(
    action: Annotated[Optional[str], typer.Argument(help="Nothing to list the entries; `clear` to remove them.",
                                                    show_default=False, autocompletion=lambda: ["clear"])] = None,
    model: Annotated[Optional[str], typer.Argument(help="With clear: only this model's entries.", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List the prompt cache (saved KV states of prompt prefixes), or clear it."""
    from infer import prompt_cache, settings

    root = settings.prompt_cache_dir()
    if action == "clear":
        files, size = prompt_cache.clear(root, model)
        if json_out:
            render.print_json({"removed": files, "bytes": size})
        else:
            console.info(f"removed {files} entr{'y' if files == 1 else 'ies'} ({render.human_bytes(size)})"
                         + (f" of {model}" if model else ""))
        return
    if action is not None:
        raise UsageError(f"unknown action {action!r}", hint="`infer cache` lists, `infer cache clear [MODEL]` removes")
    entries = sorted(prompt_cache.list_entries(root), key=lambda e: e.last_used, reverse=True)
    if json_out:
        render.print_json({"path": str(root), "total": sum(e.size for e in entries),
                           "entries": [{"model": e.model, "tokens": e.n_tokens, "size": e.size,
                                        "last_used": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(e.last_used)),
                                        "file": e.path.name} for e in entries]})
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("MODEL", "TOKENS", "SIZE", "LAST USED"):
        table.add_column(col, justify="right" if col in ("TOKENS", "SIZE") else "left")
    for e in entries:
        table.add_row(e.model, str(e.n_tokens), render.human_bytes(e.size),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used)))
    if entries:
        console.out().print(table)
    console.info(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
                 f"{render.human_bytes(sum(e.size for e in entries))} in {root}")
