"""`bench`: prompt processing, generation, time to first token and load time, repeated.

pp and tg follow llama.cpp's llama-bench (pp = batch prompt evaluation from an empty cache;
tg = single-token decodes from an empty cache; random tokens, no sampling), so the numbers sit
beside llama-bench's. ttft is the whole path a chat pays: template, tokenize, prompt, first token."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from infer.engine import Done, LoadOptions, Model, Sampling


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float
    stdev: float
    values: tuple[float, ...]

    @staticmethod
    def of(values: list[float]) -> "Spread":
        return Spread(statistics.median(values), min(values), max(values),
                      statistics.stdev(values) if len(values) > 1 else 0.0, tuple(values))


@dataclass
class BenchResult:
    model: str
    threads: int
    gpu_layers: int
    load_s: Spread
    ttft_s: Spread
    pp: dict[int, Spread]  # prompt size -> tokens/s
    tg: tuple[int, Spread]  # tokens -> tokens/s


def run(path: Path, name: str, options: LoadOptions, pp_sizes: list[int], tg: int, repeat: int,
        progress: Callable[[str], None] = lambda msg: None) -> BenchResult:
    n_ctx = max(pp_sizes + [tg, 256]) + 16
    options = replace(options, n_ctx=n_ctx, n_batch=max(options.n_batch, max(pp_sizes)))
    loads = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        m = Model(path, options)
        m.scheduler(1, n_ctx)
        loads.append(time.perf_counter() - t0)
        m.close()
    model = Model(path, options)
    try:
        progress("warming up")
        model.bench_pp(min(32, min(pp_sizes)), n_ctx)
        model.bench_tg(2, n_ctx)
        pp = {}
        for n in pp_sizes:
            progress(f"pp{n}")
            pp[n] = Spread.of([n / model.bench_pp(n, n_ctx) for _ in range(repeat)])
        progress(f"tg{tg}")
        tgs = Spread.of([tg / model.bench_tg(tg, n_ctx) for _ in range(repeat)])
        progress("ttft")
        _, prompt = model.format_chat([{"role": "user", "content": "Hi! How are you today?"}])
        ttfts = []
        for _ in range(repeat):
            model._fresh(n_ctx)
            done = [e for e in model.generate(prompt, Sampling(temperature=0, max_tokens=1)) if isinstance(e, Done)][0]
            ttfts.append(done.timings.ttft_s)
        from infer.hardware import physical_cores

        return BenchResult(model=name, threads=options.n_threads or physical_cores(), gpu_layers=options.n_gpu_layers,
                           load_s=Spread.of(loads), ttft_s=Spread.of(ttfts), pp=pp, tg=(tg, tgs))
    finally:
        model.close()
