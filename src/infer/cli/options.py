"""Options shared by run, chat and bench, declared once.

Each option is an Annotated alias below; the ones that travel together form a group (ModelArgs,
SamplingArgs, LoadArgs), a dataclass whose fields are those aliases. A command names a group as
one parameter and is wrapped in @shared_options, which puts the group's options into the
command's signature in that place (so --help lists them as before) and hands the function one
filled-in group. A new shared option is one field here; every command with its group gets it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from infer import settings
from infer.errors import UsageError

SAMPLING = "Sampling"
CONTEXT = "Context and hardware"
OUTPUT = "Output"


def complete_model(incomplete: str) -> list[str]:
    from infer.cli.completion import model_names

    return [n for n in model_names() if n.startswith(incomplete)]


Model = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Model: an alias (smollm2), owner/repo[:QUANT], owner/repo/file.gguf or a path. "
    "Default: INFER_MODEL, then config.toml, then the catalog default.",
    autocompletion=complete_model, show_default=False)]
Quant = Annotated[Optional[str], typer.Option(
    "--quant", "-q", help="Quant to use for an alias or repo (e.g. Q8_0), instead of its default.", show_default=False)]
System = Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.", show_default=False)]
Temperature = Annotated[Optional[float], typer.Option(
    "--temperature", "--temp", min=0.0, help="Sampling temperature; 0 = greedy. (default: 0.8, or the model's)",
    rich_help_panel=SAMPLING, show_default=False)]
TopP = Annotated[Optional[float], typer.Option(
    "--top-p", min=0.0, max=1.0, help="Nucleus sampling. (default: 0.95)", rich_help_panel=SAMPLING, show_default=False)]
TopK = Annotated[Optional[int], typer.Option(
    "--top-k", min=0, help="Top-k sampling; 0 = off. (default: 40)", rich_help_panel=SAMPLING, show_default=False)]
MinP = Annotated[Optional[float], typer.Option(
    "--min-p", min=0.0, max=1.0, help="Min-p sampling. (default: 0.05)", rich_help_panel=SAMPLING, show_default=False)]
def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise typer.BadParameter(f"{value} must be greater than 0")
    return value


RepeatPenalty = Annotated[Optional[float], typer.Option(
    "--repeat-penalty", callback=_positive, help="Penalty for repeated tokens; 1 = off. (default: 1.0)",
    rich_help_panel=SAMPLING, show_default=False)]
Seed = Annotated[Optional[int], typer.Option(
    "--seed", min=0, help="Random seed: the same seed, options and model give the same output.",
    rich_help_panel=SAMPLING, show_default=False)]
MaxTokens = Annotated[Optional[int], typer.Option(
    "--max-tokens", "-n", min=1, help="Most tokens to generate. (default: until the model stops or the context is full)",
    rich_help_panel=SAMPLING, show_default=False)]
Stop = Annotated[Optional[list[str]], typer.Option(
    "--stop", help="Stop when this text is generated (repeatable).", rich_help_panel=SAMPLING, show_default=False)]
CtxSize = Annotated[Optional[int], typer.Option(
    "--ctx-size", "-c", min=16, help="Context window in tokens. (default: prompt + answer, capped by the model's)",
    rich_help_panel=CONTEXT, show_default=False)]
Threads = Annotated[Optional[int], typer.Option(
    "--threads", "-t", min=1, help="CPU threads. (default: physical cores)", rich_help_panel=CONTEXT, show_default=False)]
def _gpu_layers(value: str | None) -> str | None:
    if value is None or value == "auto":
        return value
    try:
        if int(value) >= -1:
            return value
    except ValueError:
        pass
    raise typer.BadParameter(f"{value!r} is not auto, -1 (all) or a layer count >= 0")


GpuLayers = Annotated[Optional[str], typer.Option(
    "--gpu-layers", "-ngl", callback=_gpu_layers, metavar="auto|N",
    help="Layers to offload to the GPU: auto (all that fit), -1 (all), 0 (CPU only) or a count. (default: auto)",
    rich_help_panel=CONTEXT, show_default=False)]
KvType = Annotated[str, typer.Option(
    "--kv-type", help="KV cache type: f16, q8_0 (half the memory) or q4_0.", rich_help_panel=CONTEXT,
    autocompletion=lambda: ["f16", "q8_0", "q4_0"])]
FlashAttn = Annotated[str, typer.Option(
    "--flash-attn", help="Flash attention: auto, on or off.", rich_help_panel=CONTEXT,
    autocompletion=lambda: ["auto", "on", "off"])]
Mlock = Annotated[bool, typer.Option("--mlock", help="Lock the model in RAM (no swapping).", rich_help_panel=CONTEXT)]
NoMmap = Annotated[bool, typer.Option("--no-mmap", help="Read the model into memory instead of mapping it.",
                                      rich_help_panel=CONTEXT)]
RPC = "RPC workers"
Rpc = Annotated[Optional[str], typer.Option(
    "--rpc", metavar="HOST:PORT,...", help="Split the model's layers across these `infer worker`s (and the local GPU), "
    "as llama.cpp does. (default: INFER_RPC)", rich_help_panel=RPC, show_default=False)]
TensorSplit = Annotated[Optional[str], typer.Option(
    "--tensor-split", metavar="A,B,...", help="Share of the layers per device, RPC workers first, then local GPUs "
    "(e.g. 3,1). (default: by free memory)", rich_help_panel=RPC, show_default=False)]
ForceRpc = Annotated[bool, typer.Option(
    "--force-rpc", help="Split over the workers even where the split is predicted slower than this machine alone.",
    rich_help_panel=RPC)]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Say which model is used and show llama.cpp's logs.")]
SPECULATION = "Speculative decoding"
Lookup = Annotated[bool, typer.Option(
    "--lookup", help="Prompt-lookup speculative decoding: draft tokens from n-grams of the prompt and answer, kept only "
    "when the model agrees (the same output, faster on text that repeats its input).", rich_help_panel=SPECULATION)]
Draft = Annotated[Optional[str], typer.Option(
    "--draft", metavar="MODEL", help="Speculative decoding with a small draft model of the same family (same "
    "vocabulary; any model -m accepts): it proposes tokens, the model keeps those it would have produced itself.",
    rich_help_panel=SPECULATION, show_default=False)]
DraftMax = Annotated[Optional[int], typer.Option(
    "--draft-max", help="Most tokens drafted per step (1-64). (default: 8)", rich_help_panel=SPECULATION, show_default=False)]
DraftMin = Annotated[Optional[int], typer.Option(
    "--draft-min", help="Fewest tokens worth a draft. (default: 2)", rich_help_panel=SPECULATION, show_default=False)]
Ngram = Annotated[Optional[int], typer.Option(
    "--ngram", help="Shortest n-gram that counts as a match (1-8). (default: 3)", rich_help_panel=SPECULATION,
    show_default=False)]


class OptionGroup:
    """Base of the option groups: dataclasses whose fields are the shared Typer options."""


class Omit(tuple):
    """Annotated[Group, Omit(("field",))]: a command that offers the group without these options."""


@dataclasses.dataclass(frozen=True)
class ModelArgs(OptionGroup):
    model: Model = None
    quant: Quant = None


@dataclasses.dataclass(frozen=True)
class SamplingArgs(OptionGroup):
    temperature: Temperature = None
    top_p: TopP = None
    top_k: TopK = None
    min_p: MinP = None
    repeat_penalty: RepeatPenalty = None
    seed: Seed = None
    max_tokens: MaxTokens = None
    stop: Stop = None

    def given(self) -> dict:
        """The sampling options the user actually gave."""
        return sampling_values(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


@dataclasses.dataclass(frozen=True)
class LoadArgs(OptionGroup):
    ctx_size: CtxSize = None
    threads: Threads = None
    gpu_layers: GpuLayers = None
    kv_type: KvType = "f16"
    flash_attn: FlashAttn = "auto"
    mlock: Mlock = False
    no_mmap: NoMmap = False
    rpc: Rpc = None
    tensor_split: TensorSplit = None
    force_rpc: ForceRpc = False

    def check(self) -> None:
        """Refuse bad --rpc/--tensor-split/--force-rpc before anything is resolved or loaded."""
        rpc_options(self.rpc, self.tensor_split, self.force_rpc)

    def build(self, verbose: bool, model_defaults: dict | None = None, ctx_size: int | None = None):
        """The engine's LoadOptions (see build_load); `ctx_size` for a command that sizes its own context."""
        return build_load(ctx_size or self.ctx_size, self.threads, self.gpu_layers, verbose, model_defaults, kv_type=self.kv_type,
                          flash_attn=self.flash_attn, mlock=self.mlock, no_mmap=self.no_mmap, rpc=self.rpc,
                          tensor_split=self.tensor_split, force_rpc=self.force_rpc)


HardwareArgs = Annotated[LoadArgs, Omit(("ctx_size",))]  # bench sizes its own contexts


@dataclasses.dataclass(frozen=True)
class SpeculationArgs(OptionGroup):
    lookup: Lookup = False
    draft: Draft = None
    draft_max: DraftMax = None
    draft_min: DraftMin = None
    ngram: Ngram = None

    @property
    def given(self) -> bool:
        return self.lookup or self.draft is not None

    def build(self):
        """The engine's Speculation, or None (see build_speculation)."""
        return build_speculation(self.lookup, self.draft_max, self.draft_min, self.ngram, self.draft)


def shared_options(command):
    """Expand each parameter annotated with an option group into the group's options, in its place,
    and call `command` with one group object built from them."""
    hints = typing.get_type_hints(command, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[type, list[str]]] = {}
    for p in inspect.signature(command).parameters.values():
        annotation = hints.get(p.name, p.annotation)
        group, omitted = _group_of(annotation)
        if group is None:
            params.append(p.replace(annotation=annotation))
            continue
        fields = typing.get_type_hints(group, include_extras=True)
        names = [f.name for f in dataclasses.fields(group) if f.name not in omitted]
        groups[p.name] = (group, names)
        params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=fields[n],
                                     default=group.__dataclass_fields__[n].default) for n in names]

    @functools.wraps(command)
    def expanded(**values):
        for name, (group, names) in groups.items():
            values[name] = group(**{n: values.pop(n) for n in names})
        return command(**values)

    del expanded.__wrapped__  # Typer must read the expanded signature below, not the command's own
    expanded.__signature__ = inspect.Signature(params)
    expanded.__annotations__ = {p.name: p.annotation for p in params}
    return expanded


def _group_of(annotation) -> tuple[type | None, tuple]:
    omitted: tuple = ()
    if typing.get_origin(annotation) is Annotated:
        annotation, *extras = typing.get_args(annotation)
        omitted = tuple(name for extra in extras if isinstance(extra, Omit) for name in extra)
    if isinstance(annotation, type) and issubclass(annotation, OptionGroup):
        return annotation, omitted
    return None, ()


def sampling_values(**values) -> dict:
    """The sampling options the user actually gave (None means: not given)."""
    return {k: v for k, v in values.items() if v is not None}


def build_sampling(given: dict, model_defaults: dict, **extra):
    from infer.engine import Sampling

    merged = {k: v for k, v in model_defaults.items() if k in Sampling.__dataclass_fields__}
    merged.update(given)
    if "stop" in merged:
        merged["stop"] = tuple(merged["stop"])
    merged.update(extra)
    return Sampling(**merged)


def rpc_options(rpc: str | None, tensor_split: str | None, force_rpc: bool) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """--rpc (else INFER_RPC), --tensor-split and --force-rpc, checked: (workers, shares)."""
    from infer import rpc as rpc_mod

    what = "--rpc" if rpc is not None else "INFER_RPC"
    rpc = rpc if rpc is not None else settings.INFER_RPC.get()
    workers = tuple(str(e) for e in rpc_mod.parse_endpoints(rpc, what)) if rpc else ()
    shares: tuple[float, ...] = ()
    if tensor_split is not None:
        try:
            shares = tuple(float(x) for x in tensor_split.split(","))
        except ValueError:
            shares = ()
        if not shares or any(x < 0 or x != x for x in shares) or not sum(shares) > 0:
            raise UsageError(f"--tensor-split {tensor_split!r} is not a list of shares", hint="for example --tensor-split 3,1")
        if not workers:
            raise UsageError("--tensor-split needs --rpc (or INFER_RPC): it splits across RPC workers and local GPUs")
    if force_rpc and not workers:
        raise UsageError("--force-rpc needs --rpc (or INFER_RPC)")
    return workers, shares


def build_load(ctx_size, threads, gpu_layers, verbose, model_defaults: dict | None = None, *, kv_type: str = "f16",
               flash_attn: str = "auto", mlock: bool = False, no_mmap: bool = False, rpc: str | None = None,
               tensor_split: str | None = None, force_rpc: bool = False):
    """Load options as the user gave them; the GPU layer count is decided later (complete.plan)."""
    from infer.engine import KV_TYPES, LoadOptions

    workers, shares = rpc_options(rpc, tensor_split, force_rpc)

    if kv_type not in ("f16", "q8_0", "q4_0"):
        raise UsageError(f"--kv-type {kv_type!r} is not f16, q8_0 or q4_0")
    if flash_attn not in ("auto", "on", "off"):
        raise UsageError(f"--flash-attn {flash_attn!r} is not auto, on or off")
    if kv_type != "f16" and flash_attn == "off":
        raise UsageError("a quantized --kv-type needs flash attention", hint="use --flash-attn auto or on")
    assert kv_type in KV_TYPES
    defaults = model_defaults or {}
    requested = None if gpu_layers in (None, "auto") else int(gpu_layers)
    return LoadOptions(n_ctx=ctx_size or defaults.get("ctx_size"), n_threads=threads,
                       n_gpu_layers=-2 if requested is None else requested, verbose=verbose, kv_type=kv_type,
                       flash_attn=flash_attn, mlock=mlock, mmap=not no_mmap, rpc=workers, tensor_split=shares,
                       force_rpc=force_rpc)


def stdin_material():
    """Piped stdin as material for the prompt, read lazily (complete.Material); None on a terminal."""
    if sys.stdin is None or sys.stdin.closed:
        return None
    try:
        if sys.stdin.isatty():
            return None
        from infer.complete import Material

        return Material(sys.stdin.buffer)
    except (OSError, ValueError):
        return None


SCHEMA_MAX_BYTES = 1 << 20  # a JSON schema is small; a bigger file is a mistake, not a schema


def load_schema(value: str) -> dict:
    text = value
    if not value.lstrip().startswith(("{", "[")):
        path = Path(value).expanduser()
        if not path.is_file():
            raise UsageError(f"--schema: {value!r} is neither JSON nor a readable file")
        try:
            with path.open("rb") as f:  # read at most the limit: the path may be a pipe or a huge file
                data = f.read(SCHEMA_MAX_BYTES + 1)
        except OSError as e:
            raise UsageError(f"--schema: cannot read {value}: {e.strerror}") from e
        if len(data) > SCHEMA_MAX_BYTES:
            raise UsageError(f"--schema: {value} is larger than {SCHEMA_MAX_BYTES >> 20} MiB: not a JSON schema")
        text = data.decode("utf-8", "replace")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--schema: invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    if not isinstance(schema, dict):
        raise UsageError("--schema: a JSON schema must be a JSON object")
    _check_schema(schema)
    return schema


_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


def _check_schema(node, where: str = "schema") -> None:
    """The mistakes the grammar converter would otherwise accept silently or crash on."""
    if isinstance(node, dict):
        t = node.get("type")
        for name in (t if isinstance(t, list) else [t] if t is not None else []):
            if name not in _TYPES:
                raise UsageError(f"--schema: {where}.type is {name!r}, not one of {', '.join(sorted(_TYPES))}")
        if "properties" in node and not isinstance(node["properties"], dict):
            raise UsageError(f"--schema: {where}.properties must be an object")
        if "required" in node and not (isinstance(node["required"], list)
                                       and all(isinstance(r, str) for r in node["required"])):
            raise UsageError(f"--schema: {where}.required must be a list of property names")
        for key, sub in (node.get("properties") or {}).items():
            _check_schema(sub, f"{where}.properties.{key}")
        if isinstance(node.get("items"), dict):
            _check_schema(node["items"], f"{where}.items")
    elif not isinstance(node, bool):
        raise UsageError(f"--schema: {where} must be an object")


def cache_options(flag: bool | None, size: str | None):
    """The prompt cache as the user asked: the flag, else config.toml's `cache`; the cap likewise."""
    from infer import config, settings
    from infer.complete import CacheOptions
    from infer.prompt_cache import DEFAULT_MAX_BYTES, parse_size

    conf = config.load()
    enabled = flag if flag is not None else bool(conf.get("cache", False))
    text = size if size is not None else conf.get("cache_size")
    try:
        max_bytes = parse_size(text) if text else DEFAULT_MAX_BYTES
    except ValueError:
        raise UsageError(f"--cache-size {text!r} is not a size", hint="e.g. 4G, 512M or a number of bytes") from None
    return CacheOptions(enabled=enabled, max_bytes=max_bytes, root=settings.prompt_cache_dir())


def build_speculation(lookup: bool, draft_max: int | None, draft_min: int | None, ngram: int | None,
                      draft: str | None = None):
    """The speculation the user asked for (None: off); impossible values are refused, not clamped. A --draft
    model is resolved (pulled if need be) here; the caller attaches it to the loaded model (Model.attach_draft)."""
    from infer.engine import Speculation

    if lookup and draft:
        raise UsageError("--lookup and --draft are two ways to propose tokens: give one")
    if not lookup and not draft:
        if any(v is not None for v in (draft_max, draft_min, ngram)):
            raise UsageError("--draft-max, --draft-min and --ngram tune --lookup or --draft", hint="add --lookup")
        return None
    if draft and ngram is not None:
        raise UsageError("--ngram tunes --lookup, not --draft")
    d = Speculation(lookup=True)
    dmax = d.draft_max if draft_max is None else draft_max
    dmin = d.draft_min if draft_min is None else draft_min
    n = d.ngram if ngram is None else ngram
    if not 1 <= dmax <= 64:
        raise UsageError(f"--draft-max {dmax} is out of range", hint="use 1 to 64")
    if not 1 <= dmin <= dmax:
        raise UsageError(f"--draft-min {dmin} must be between 1 and --draft-max ({dmax})")
    if not 1 <= n <= 8:
        raise UsageError(f"--ngram {n} is out of range", hint="use 1 to 8")
    path = None
    if draft:
        from infer import complete
        from infer.cli.progress import CliReporter

        path = str(complete.prepare(draft, reporter=CliReporter()).path)
    return Speculation(lookup=bool(lookup), draft=path, draft_max=dmax, draft_min=dmin, ngram=n)


REMOTE = "Remote server"
Host = Annotated[Optional[str], typer.Option(
    "--host", metavar="URL", help="Use a running OpenAI-compatible server (infer serve, llama-server) instead of "
    "loading the model. (default: INFER_HOST)", rich_help_panel=REMOTE, show_default=False)]
ApiKey = Annotated[Optional[str], typer.Option(
    "--api-key", help="API key for --host, sent as a Bearer token. (default: INFER_API_KEY)", rich_help_panel=REMOTE,
    show_default=False)]


def remote_server(host: str | None, api_key: str | None):
    """The server named by --host or INFER_HOST (None: run locally), with its key."""
    from infer import settings

    url = host or settings.INFER_HOST.get()
    if not url:
        return None
    from infer.client import Server

    return Server(url, api_key or settings.INFER_API_KEY.get())
