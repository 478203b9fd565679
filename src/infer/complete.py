"""One-shot completion: resolve the model, build the prompt, stream the answer.

The CLI's `run` is a thin adapter over this module (and `chat` reuses its pieces)."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from infer import resolve
from infer.engine import Done, LoadOptions, Model, Sampling, Text, Vocab, json_grammar
from infer.errors import BadModel, ContextOverflow, NoSpace, UsageError

__all__ = ["prepare", "grammar_for", "run", "Text", "Done", "Material", "join_prompt", "read_bounded"]

READ_CHUNK = 64 * 1024  # bytes of piped input read (and tokenized) at a time


def prepare(model: str | None, *, quant: str | None = None, reporter=None) -> resolve.Resolved:
    """Choose and resolve the model; pull it first if missing, as `ollama run` does (never when offline)."""
    def auto_pull(text: str, quant: str | None):
        from infer import pull  # the network stack (ssl, http, the Hub client): only for a model not pulled yet

        return pull.pull(text, quant=quant, auto=True, reporter=reporter)

    text, origin = resolve.choose(model)
    return resolve.resolve(text, quant=quant, origin=origin, pull=auto_pull)


def grammar_for(schema: dict | None, json_mode: bool) -> str | None:
    if schema is not None:
        return json_grammar(schema)
    return json_grammar(None) if json_mode else None


def model_files_size(path) -> int:
    """Bytes of the model's files (every part of a split GGUF)."""
    from infer.sources.quants import split_part, split_prefix

    if not split_part(path.name):
        return path.stat().st_size
    prefix = split_prefix(path.name)
    return sum(p.stat().st_size for p in path.parent.glob("*.gguf") if split_part(p.name) and split_prefix(p.name) == prefix)


def plan(path, options: LoadOptions, notice: Callable[[str], None]) -> tuple[LoadOptions, str]:
    """Decide where the model runs (GPU layers) before loading it; refuse what cannot fit anywhere."""
    from infer import engine, hardware
    from infer.units import human_bytes

    if options.rpc:
        return plan_rpc(path, options, notice)
    size = model_files_size(path)
    ram = hardware.available_memory()
    if not engine.supports_gpu_offload():
        if options.n_gpu_layers > 0 or options.n_gpu_layers == -1:
            notice("this llama.cpp build has no GPU backend: running on the CPU (`infer doctor` says how to get one)")
        if size > hardware.total_memory() > 0:
            raise NoSpace(f"the model's weights are {human_bytes(size)} but this machine has "
                          f"{human_bytes(hardware.total_memory())} of RAM", hint="pick a smaller quant or model")
        return replace(options, n_gpu_layers=0), "CPU (this llama.cpp build has no GPU backend)"
    gpus = [d for d in engine.devices() if d.kind in ("gpu", "igpu")]
    if not gpus and options.n_gpu_layers != 0:
        notice("this llama.cpp build supports GPUs but none was found: running on the CPU")
    from infer.gguf_meta import read_info

    info = read_info(path)
    n_ctx = options.n_ctx or min(info.context_length or 4096, 4096)
    est = hardware.estimate(info, size, n_ctx, options.kv_type, options.n_ubatch)
    requested = None if options.n_gpu_layers == -2 else options.n_gpu_layers
    if requested is not None and requested > est.n_layers + 1:
        notice(f"--gpu-layers {requested} is more than the model's {est.n_layers + 1} layers: offloading all of them")
        requested = -1
    p = hardware.plan_offload(est, sum(d.free for d in gpus), ram, requested)
    if not p.fits:
        raise NoSpace(f"the model needs about {human_bytes(est.total)} (weights {human_bytes(est.weights)}, "
                      f"KV cache {human_bytes(est.kv_cache)} at {n_ctx} tokens) but only "
                      f"{human_bytes(ram + sum(d.free for d in gpus))} of RAM and VRAM is free",
                      hint="pick a smaller quant, a smaller --ctx-size, or --kv-type q8_0")
    return replace(options, n_gpu_layers=p.gpu_layers if p.gpu_layers <= est.n_layers else -1), p.where


def plan_rpc(path, options: LoadOptions, notice: Callable[[str], None]) -> tuple[LoadOptions, str]:
    """Split the model over RPC workers: probe each (one clear error for any that cannot serve), predict the
    split's speed against this machine alone, and run locally instead where the model fits here and the split
    is predicted slower (unless --force-rpc). Then register the workers for the load."""
    from infer import engine, hardware, rpc
    from infer.engine import rpc as engine_rpc
    from infer.gguf_meta import read_info
    from infer.units import human_bytes

    rpc.ensure_supported()
    endpoints = rpc.parse_endpoints(",".join(options.rpc))
    workers = rpc.probe_all(endpoints, engine_rpc.added())
    info = read_info(path)
    size = model_files_size(path)
    n_ctx = options.n_ctx or min(info.context_length or 4096, 4096)
    est = hardware.estimate(info, size, n_ctx, options.kv_type, options.n_ubatch)
    local_free = hardware.available_memory() + sum(d.free for d in engine.devices() if d.kind in ("gpu", "igpu"))
    pooled = local_free + sum(w.free for w in workers)
    if est.total > pooled:
        raise NoSpace(f"the model needs about {human_bytes(est.total)} but this machine and the workers have "
                      f"{human_bytes(pooled)} free together", hint="add a worker, or pick a smaller quant")
    prediction = rpc.predict(hardware.decode_estimate(size), workers, info.embedding_length or 4096,
                             info.block_count or 32)
    notice(prediction.line(workers))
    if est.total <= local_free and prediction.split_tps < prediction.local_tps and not options.force_rpc:
        notice("the model fits here and the split is predicted slower: running on this machine alone "
               "(--force-rpc splits anyway)")
        return plan(path, replace(options, rpc=()), notice)
    n_devices = sum(len(w.memory) for w in workers) + len([d for d in engine.devices() if d.kind in ("gpu", "igpu")])
    if options.tensor_split and len(options.tensor_split) > n_devices:
        raise UsageError(f"--tensor-split has {len(options.tensor_split)} shares but there are only {n_devices} "
                         "devices (the workers', then the local GPUs)")
    engine_rpc.on_abort(rpc.lost_worker_handler(endpoints))  # first: registering connects, and may abort too
    engine_rpc.add_workers([str(e) for e in endpoints])
    layers = -1 if options.n_gpu_layers == -2 else options.n_gpu_layers
    where = f"split over {len(workers)} RPC worker(s) ({', '.join(map(str, endpoints))})"
    return replace(options, n_gpu_layers=layers), where


def load(resolved: resolve.Resolved, options: LoadOptions, notice: Callable[[str], None] = lambda m: None) -> Model:
    """Plan, then load; a GPU load that fails (out of memory) is retried with fewer layers, down to the CPU."""
    from infer import store

    options, where = plan(resolved.path, options, notice)
    while True:
        try:
            model = Model(resolved.path, options)
            break
        except BadModel as e:
            if options.n_gpu_layers == 0 or options.rpc:  # a split is not retried on this machine alone
                raise
            fewer = 0 if options.n_gpu_layers < 0 else options.n_gpu_layers // 2
            notice(f"loading with {'all' if options.n_gpu_layers < 0 else options.n_gpu_layers} GPU layers failed "
                   f"({e.message}); retrying with {fewer}")
            options = replace(options, n_gpu_layers=fewer)
            where = f"{fewer} layers on the GPU (after a failed load)" if fewer else "CPU (after a failed GPU load)"
    model.where = where
    store.Manifest().touch(resolved.name)
    return model


def join_prompt(instruction: str, material: str) -> str:
    """The documented joining: piped material first, then a blank line, then the instruction."""
    instruction = instruction.strip()
    material = material.strip("\n")
    if material.strip() and instruction:
        return f"{material}\n\n{instruction}"
    return instruction or (material if material.strip() else "")


class Material:
    """Piped input, read lazily: only its first chunk before the model is loaded (to know whether
    there is any), the rest in chunks once the model's tokenizer can count it (`read_bounded`)."""

    def __init__(self, stream: BinaryIO | None, chunk: int = READ_CHUNK):
        self.stream = stream
        self.chunk = chunk
        self.head = stream.read(chunk) if stream is not None else b""
        self.eof = len(self.head) < chunk  # a buffered read returns less only at the end

    @property
    def empty(self) -> bool:
        """Nothing but whitespace so far and nothing more to come."""
        return self.eof and not self.head.strip()

    def chunks(self) -> Iterator[bytes]:
        if self.head:
            yield self.head
        try:
            while self.stream is not None and (data := self.stream.read(self.chunk)):
                yield data
        except OSError as e:  # never answer a prompt that silently lost its end
            raise UsageError(f"cannot read stdin: {e.strerror or e}") from e


class _Undecodable:
    """A codecs error handler that replaces like 'replace' and counts what it replaced."""

    def __init__(self):
        self.count = 0
        self.name = f"infer-count-{id(self)}"
        codecs.register_error(self.name, self)

    def __call__(self, err: UnicodeDecodeError):
        self.count += 1
        return "\ufffd", err.end


def _split_point(text: str) -> int:
    """Where to cut text so that counting the two sides apart is (nearly) counting it whole:
    after the last newline, else the last space; 0 (keep it all for later) when neither."""
    cut = text.rfind("\n") + 1
    return cut or text.rfind(" ") + 1


def read_bounded(material: Material, count: Callable[[str], int], limit: int,
                 notice: Callable[[str], None] = lambda m: None) -> str:
    """Read the material chunk by chunk, counting its tokens as it comes, and stop (InputTooLong) as
    soon as it is more than `limit` tokens; never more than about one chunk is read past the limit.

    Chunks are cut at line (or word) ends so the tokenizer sees whole words. The sum of the pieces'
    counts is close to the count of the whole, but not equal (a piece may gain a prefix token, or
    miss a merge across the cut): it only decides when to look; the verdict is always one exact
    count of everything read, so an input that fits is never refused, nor one that does not let by."""
    handler = _Undecodable()
    decoder = codecs.getincrementaldecoder("utf-8")(handler.name)
    parts: list[str] = []
    pending = ""  # decoded, not yet counted: the tail after the last cut
    counted = 0
    for data in material.chunks():
        text = pending + decoder.decode(data)
        cut = _split_point(text)
        if not cut and len(text) > 4 * material.chunk:  # one endless line: cut it anyway, to stay bounded
            cut = len(text)
        pending = text[cut:]
        if cut:
            parts.append(text[:cut])
            counted += count(text[:cut])
        if counted > limit:
            counted = count("".join(parts))  # the exact count, once the estimate says too many
            if counted > limit:
                raise InputTooLong(counted, limit)
    text = "".join(parts) + pending + decoder.decode(b"", final=True)
    if (exact := count(text)) > limit:
        raise InputTooLong(exact, limit)
    if handler.count:
        notice(f"stdin is not valid UTF-8: {handler.count} undecodable byte sequence(s) replaced")
    return text


class InputTooLong(Exception):
    """Raised by read_bounded; `run` turns it into a ContextOverflow that says what helps."""

    def __init__(self, at_least: int, limit: int):
        super().__init__(f"at least {at_least} tokens against a limit of {limit}")
        self.at_least = at_least
        self.limit = limit


UNKNOWN_TRAINED_CTX = 1 << 17  # a model that does not say its trained context: read at most this much


def context_limit(model: Model, options: LoadOptions) -> int:
    """The largest context this run may have: --ctx-size when given, else the model's trained one."""
    if options.n_ctx:
        return options.n_ctx
    return model.n_ctx_train if model.n_ctx_train > 0 else UNKNOWN_TRAINED_CTX


def overflow_hint(model: Model, options: LoadOptions, n_prompt: int, max_tokens: int | None) -> str:
    """What actually helps when the prompt (at least n_prompt tokens) and the answer do not fit:
    a larger --ctx-size only where the model allows one."""
    trained = model.n_ctx_train
    ctx = context_limit(model, options)
    need = n_prompt + (max_tokens or 1)
    lower_n = f"lower --max-tokens to at most {ctx - n_prompt}" if max_tokens and n_prompt < ctx else ""
    if options.n_ctx and need <= trained:
        return f"raise --ctx-size to at least {need}: this model allows up to {trained}" + (
            f", or {lower_n}" if lower_n else "")
    most = f": this model's context is {trained} tokens at most" if 0 < trained and ctx <= trained else ""
    return (f"{lower_n}, or " if lower_n else "") + \
        f"split or shorten the input, or use a model with a longer context{most}"


def check_fits(model: Model, options: LoadOptions, n_prompt: int, max_tokens: int | None) -> None:
    ctx = context_limit(model, options)
    if n_prompt + (max_tokens or 1) > ctx:
        raise ContextOverflow(f"the prompt is {n_prompt} tokens and {max_tokens or 1} more were asked for, "
                              f"but the context holds {ctx}", hint=overflow_hint(model, options, n_prompt, max_tokens))


@dataclass(frozen=True)
class CacheOptions:
    """The prompt cache for `run` (see prompt_cache): on or off, its size cap, its directory."""

    enabled: bool = False
    max_bytes: int = 0
    root: Path | None = None


def run(resolved: resolve.Resolved, options: LoadOptions, sampling: Sampling, prompt: str, *, system: str | None = None,
        raw: bool = False, material: Material | None = None, notice: Callable[[str], None] = lambda m: None,
        on_load: Callable[[Model], None] = lambda m: None, cache: CacheOptions = CacheOptions(),
        speculation=None) -> Iterator[Text | Done]:
    """Load the model, then read the piped material (bounded by what the context can hold), then stream
    the answer to the material joined with the instruction `prompt`. With the prompt cache, a saved state of
    the prompt's longest cached prefix is restored first, and the prefix up to the end of the material (the
    part the next question will share) is saved afterwards."""
    text = None
    if material is not None and not material.eof:
        # More than one chunk is piped: count it with the tokenizer alone, so that an input too long is refused
        # before the weights (and any CPU-repacked copy of them) are in memory.
        vocab = Vocab(resolved.path)
        try:
            text = _read_material(vocab, options, sampling, material, prompt, system, notice)
        finally:
            vocab.close()
    model = load(resolved, options, notice)
    try:
        if speculation is not None and speculation.draft:
            model.attach_draft(Path(speculation.draft), notice)
    except BaseException:
        model.close()
        raise
    on_load(model)
    try:
        if material is not None:
            if text is None:
                text = _read_material(model, options, sampling, material, prompt, system, notice)
            prompt = join_prompt(prompt, text)
        text = text or ""
        if not prompt.strip():
            raise UsageError("no prompt: give one as arguments or pipe text on stdin", hint='infer run "Why is the sky blue?"')
        if raw:
            rendered, tokens = prompt, model.tokenize(prompt)
        else:
            if not model.chat_template:
                notice("this model has no chat template: using a generic ChatML template "
                       "(--raw sends the prompt as plain text)")
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            rendered, tokens = model.format_chat(messages)
        check_fits(model, options, len(tokens), sampling.max_tokens)
        if not cache.enabled:
            yield from model.generate(tokens, sampling, speculation)
            return
        yield from _cached_generate(model, resolved.name, cache, sampling, tokens,
                                    _cut(model, rendered, tokens, text), notice, speculation)
    finally:
        model.close()


def _cut(model: Model, rendered: str, tokens: list[int], material: str) -> int:
    """Where the shareable prefix ends: after the piped material (the instruction that follows changes from run to
    run), else before the prompt's last token."""
    end = rendered.find(material) + len(material) if material.strip() else -1
    if end <= 0:
        return len(tokens) - 1
    head = model.tokenize(rendered[:end], add_bos=tokens[0] == model.bos_token)
    n = 0
    for a, b in zip(head, tokens):
        if a != b:
            break
        n += 1
    return min(n, len(tokens) - 1)


def _cached_generate(model: Model, name: str, opts: CacheOptions, sampling: Sampling, tokens: list[int], cut: int,
                     notice: Callable[[str], None], speculation=None) -> Iterator[Text | Done]:
    import time

    from infer import prompt_cache

    cache = prompt_cache.PromptCache(opts.root, model.cache_key(), name, opts.max_bytes, warn=notice)
    t0 = time.perf_counter()
    restored = 0
    hit = cache.lookup(tokens)
    if hit is not None and model.restore_prefix(tokens[:hit[0]], hit[1], model.plan_ctx(len(tokens), sampling.max_tokens)):
        restored = hit[0]
    restore_s = time.perf_counter() - t0
    for event in model.generate(tokens, sampling, speculation):
        if isinstance(event, Done):  # the time to first token includes reading the cache
            t = event.timings
            event = replace(event, timings=replace(t, ttft_s=t.ttft_s + restore_s, prompt_s=t.prompt_s + restore_s))
        yield event
    if cut >= prompt_cache.MIN_TOKENS and cut > restored:
        prefix, state = model.snapshot_prefix(cut)
        cache.store(prefix, state)


def _read_material(model: Model | Vocab, options: LoadOptions, sampling: Sampling, material: Material, instruction: str,
                   system: str | None, notice: Callable[[str], None]) -> str:
    """The piped text, read only as far as it can fit beside the instruction, system prompt and answer."""
    count = lambda text: len(model.tokenize(text, add_bos=False, special=True))  # noqa: E731
    room = sampling.max_tokens or 1
    beside = count(instruction) + (count(system) if system else 0)
    ctx = context_limit(model, options)
    limit = max(0, ctx - room - beside)
    try:
        text = read_bounded(material, count, limit, notice)
    except InputTooLong as e:
        less = " and ".join(f"{n} for {w}" for n, w in ((room, "the answer"), (beside, "the instruction")) if n)
        raise ContextOverflow(f"the input is at least {e.at_least} tokens against a limit of {e.limit} "
                              f"(the {ctx}-token context less {less})",
                              hint=overflow_hint(model, options, e.at_least + beside, sampling.max_tokens)) from None
    return text
