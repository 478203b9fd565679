"""The model store commands: pull, list, show, rm, verify, catalog."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from infer.cli import console, options as o, render
from infer.errors import ModelNotFound, UsageError, VerifyError
from infer.units import human_bytes

PULL_EPILOG = """\
Examples:

\b
  infer pull smollm2
  infer pull bartowski/Llama-3.2-1B-Instruct-GGUF:Q8_0
  infer pull llama3.2:1b --quant Q5_K_M
  infer pull Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf
"""

ModelArg = Annotated[str, typer.Argument(help="Alias, owner/repo[:QUANT] or owner/repo/file.gguf[@revision].",
                                         autocompletion=o.complete_model, show_default=False)]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def pull(
    model: ModelArg,
    quant: o.Quant = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Download and verify again even if present; pull even a model too big to run here.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Download a model once: resumable, sha256-verified, into the shared Hugging Face cache."""
    from infer import pull as core
    from infer.cli.progress import CliReporter

    result = core.pull(model, quant=quant, force=force, reporter=CliReporter(quiet=quiet))
    p = result.pulled
    if result.already:
        msg = f"{p.name} is already pulled ({human_bytes(p.size)}); nothing to do (--force to fetch again)"
    else:
        msg = f"pulled {p.name}: {len(p.files)} file(s), {human_bytes(p.size)}, sha256 verified"
    if not quiet:
        console.info(msg)


def _pulled_or_fail(name: str):
    from infer import catalog, refs, resolve, store

    manifest = store.Manifest()
    ref = refs.parse(name)
    key = resolve.store_name(ref, None, catalog.load())[0] if ref.kind != "local" else name
    pulled = manifest.get(key) or manifest.get(name)
    if pulled is None:
        from infer.catalog import suggest

        raise ModelNotFound(f"{name} is not pulled", hint=suggest(name, manifest.all()) if manifest.all() else "`infer list` shows pulled models")
    return pulled


def list_models(json_out: JsonOut = False) -> None:
    """List pulled models: name, quant, size, parameters, context, last used; and the disk they use."""
    from infer import store
    from infer.gguf_meta import human_params

    models = store.Manifest().all()
    total = store.disk_usage(models)
    rows = [
        {"name": p.name, "repo": p.repo, "quant": p.quant, "size": p.size, "params": p.params, "context": p.context,
         "pulled_at": p.pulled_at, "last_used": p.last_used or None, "path": str(p.path),
         "present": p.present}
        for p in models.values()
    ]
    if json_out:
        render.print_json({"models": rows, "total_size": total, "store": str(store.settings.models_dir())})
        return
    if not rows:
        console.info("no models pulled yet: try `infer pull smollm2`, or `infer catalog` for more")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("NAME", "QUANT", "SIZE", "PARAMS", "CONTEXT", "LAST USED"):
        table.add_column(col, justify="right" if col in ("SIZE", "PARAMS", "CONTEXT") else "left")
    for r in rows:
        name = r["name"] if r["present"] else f"{r['name']} (missing files: `infer pull {r['name']}`)"
        table.add_row(name, r["quant"] or "-", human_bytes(r["size"]), human_params(r["params"]) if r["params"] else "-",
                      str(r["context"] or "-"), (r["last_used"] or "never")[:16].replace("T", " "))
    console.out().print(table)
    console.out().print(f"{len(rows)} model(s), {human_bytes(total)} on disk in {store.settings.models_dir()}")


def show(
    model: ModelArg,
    template: Annotated[bool, typer.Option("--template", help="Print only the chat template.")] = False,
    json_out: JsonOut = False,
) -> None:
    """Show a model's GGUF metadata (no weights loaded): architecture, parameters, quant, context, template."""
    from infer import resolve, store
    from infer.gguf_meta import human_params, read_info, tensor_mix

    found = resolve.find_local(model)
    if found is None:
        raise ModelNotFound(f"{model} is not pulled", hint=f"run `infer pull {model}` first")
    info = read_info(found.path)
    pulled = store.Manifest().get(found.name)
    if template:
        if not info.chat_template:
            raise UsageError(f"{found.name} has no chat template", hint="infer uses a generic ChatML template for it")
        sys.stdout.write(info.chat_template.rstrip("\n") + "\n")
        return
    data = {
        "name": found.name, "path": str(found.path), "architecture": info.architecture, "model_name": info.name,
        "parameters": info.parameters, "quantization": info.quantization, "file_type": info.file_type,
        "tensor_types": info.tensor_types,
        "context_length": info.context_length, "layers": info.block_count, "embedding_length": info.embedding_length,
        "heads": info.head_count, "kv_heads": info.head_count_kv, "chat_template": bool(info.chat_template),
        "license": info.license, "size": found.path.stat().st_size,
        "sha256": pulled.files[0].sha256 if pulled else None, "repo": pulled.repo if pulled else None,
        "commit": pulled.commit if pulled else None, "files": [f.name for f in pulled.files] if pulled else None,
    }
    if json_out:
        render.print_json(data)
        return
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    pretty = dict(data, parameters=human_params(info.parameters), size=human_bytes(data["size"]), file_type=None,
                  quantization=info.quantization if info.file_type else f"{info.quantization} (the file declares no type)",
                  tensor_types=tensor_mix(info.tensor_types),
                  chat_template="present (--template prints it)" if info.chat_template else "none (generic ChatML used)")
    for key, value in pretty.items():
        if value not in (None, "", []):
            table.add_row(key.replace("_", " "), ", ".join(value) if isinstance(value, list) else str(value))
    console.out().print(table)


def rm(
    models: Annotated[list[str], typer.Argument(help="Pulled models to remove.", autocompletion=o.complete_model,
                                                show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove pulled models, freeing the files no other pulled model uses."""
    from infer import store

    doomed = [_pulled_or_fail(m) for m in models]
    size = sum(p.size for p in doomed)
    if not yes and console.is_tty(sys.stdin):
        names = ", ".join(p.name for p in doomed)
        if not typer.confirm(f"Remove {names} ({human_bytes(size)})?", default=False, err=True):
            console.info("nothing removed")
            raise typer.Exit(1)
    freed = store.remove([p.name for p in doomed])
    console.info(f"removed {', '.join(p.name for p in doomed)}; freed {human_bytes(freed)}")


def verify(
    model: Annotated[Optional[str], typer.Argument(help="A pulled model (default: all).", autocompletion=o.complete_model,
                                                   show_default=False)] = None,
    json_out: JsonOut = False,
) -> None:
    """Re-hash pulled files against the manifest and report any damage."""
    from infer import store

    targets = [_pulled_or_fail(model)] if model else list(store.Manifest().all().values())
    report = []
    for p in targets:
        for f in p.files:
            try:
                store.verify_file(Path(f.path), f.sha256, f.size)
                status = "ok"
            except VerifyError as e:
                status = e.message
            report.append({"model": p.name, "file": f.name, "ok": status == "ok", "status": status})
            if not json_out:
                console.info(f"{p.name}: {f.name}: {status}")
    if json_out:
        render.print_json({"files": report})
    damaged = [r for r in report if not r["ok"]]
    if damaged:
        raise VerifyError(f"{len(damaged)} damaged file(s)", hint=f"pull again with --force: infer pull {damaged[0]['model']} --force")


def catalog_cmd(json_out: JsonOut = False) -> None:
    """Show the catalog's aliases: parameters, default quant, whether pulled, description."""
    from infer import catalog, store

    cat = catalog.load()
    pulled = store.Manifest().all()
    rows = [{"alias": e.alias, "repo": e.repo, "quant": e.quant, "params": e.params, "size": e.size,
             "license": e.license, "pulled": e.alias in pulled, "default": e.alias == cat.default,
             "description": e.description} for e in cat.entries.values()]
    if json_out:
        render.print_json({"models": rows})
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("ALIAS", "PARAMS", "QUANT", "SIZE", "PULLED", "DESCRIPTION"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["alias"] + (" (default)" if r["default"] else ""), r["params"], r["quant"],
                      human_bytes(r["size"]) if r["size"] else "-", "yes" if r["pulled"] else "", r["description"])
    console.out().print(table)
