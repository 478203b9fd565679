"""One-shot completion: resolve the model, build the prompt, stream the answer.

The CLI's `run` is a thin adapter over this module (and `chat` reuses its pieces)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator

from infer import resolve
from infer.engine import Done, LoadOptions, Model, Sampling, Text, json_grammar
from infer.errors import BadModel, NoSpace

__all__ = ["prepare", "grammar_for", "run", "Text", "Done"]


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


def load(resolved: resolve.Resolved, options: LoadOptions, notice: Callable[[str], None] = lambda m: None) -> Model:
    """Plan, then load; a GPU load that fails (out of memory) is retried with fewer layers, down to the CPU."""
    from infer import store

    options, where = plan(resolved.path, options, notice)
    while True:
        try:
            model = Model(resolved.path, options)
            break
        except BadModel as e:
            if options.n_gpu_layers == 0:
                raise
            fewer = 0 if options.n_gpu_layers < 0 else options.n_gpu_layers // 2
            notice(f"loading with {'all' if options.n_gpu_layers < 0 else options.n_gpu_layers} GPU layers failed "
                   f"({e.message}); retrying with {fewer}")
            options = replace(options, n_gpu_layers=fewer)
            where = f"{fewer} layers on the GPU (after a failed load)" if fewer else "CPU (after a failed GPU load)"
    model.where = where
    store.Manifest().touch(resolved.name)
    return model


def run(resolved: resolve.Resolved, options: LoadOptions, sampling: Sampling, prompt: str, *, system: str | None = None,
        raw: bool = False, notice: Callable[[str], None] = lambda m: None,
        on_load: Callable[[Model], None] = lambda m: None) -> Iterator[Text | Done]:
    model = load(resolved, options, notice)
    on_load(model)
    try:
        if raw:
            tokens = model.tokenize(prompt)
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            _, tokens = model.format_chat(messages)
        yield from model.generate(tokens, sampling)
    finally:
        model.close()
