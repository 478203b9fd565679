"""`infer batch` throughput against native llama.cpp, same model, threads, lengths and parallel counts.

    python benchmarks/native.py build        # once: llama-batched-bench and llama-server among the tools
    python benchmarks/batch.py [-P 1 -P 4 -P 8] [-N 64] [--pp 128] [--tg 128] [-r 1]

Three measures for each parallel count P:
  * `infer batch --parallel P` on N requests of `pp` prompt + `tg` generated tokens (raw completions of a
    counting prompt, greedy, max_tokens=tg: the model keeps counting, so each line usually generates
    all tg tokens; what was really generated is counted from the output). End to end: generated
    tokens / the batch's wall time (model load excluded, as the others exclude theirs).
  * `llama-batched-bench -npp pp -ntg tg -npl P`: the ceiling without sampling. Its S_TG is the decode
    phase; N/P rounds of its whole T give the end-to-end equivalent (P x tg / T generated tok/s).
    Against S_TG we set the engine's decode phase: P requests admitted together (one round, as
    batched-bench runs), generated tokens after the first / the longest generation time.
  * native `llama-server -np P` fed the same N requests concurrently over loopback (/v1/completions):
    what a user would run instead. Generated tokens / wall time from the first request to the last answer.

Ratios: infer/native for each, and the speedup of P=max over P=1 for infer next to native's own.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import infer_bin, save, summary, table, test_model
from native import tool

CTX_SLACK = 16  # tokens per sequence beyond pp + tg


def prompts(model_path: Path, n: int, pp: int) -> list[str]:
    """n different counting prompts of exactly pp tokens (distinct, so no request reuses another's KV)."""
    from infer.engine import LoadOptions, Model

    model = Model(model_path, LoadOptions(n_threads=1))
    out = []
    try:
        for i in range(n):
            start, text = 1000 * (i + 1), ""
            k = start
            while len(model.tokenize(text)) < pp:
                text += f"{k}, "
                k += 1
            while len(model.tokenize(text)) > pp:
                text = text[:-1]
            if len(model.tokenize(text)) != pp:  # a cut landed inside a token pair: pad with a space
                text += " "
            out.append(text)
    finally:
        model.close()
    return out


def run_infer(model: Path, texts: list[str], p: int, tg: int, threads: int, ctx: int, work: Path, gpu: bool) -> dict:
    src, out = work / "in.jsonl", work / f"out-{p}.jsonl"
    src.write_text("".join(json.dumps({"custom_id": f"r{i}", "prompt": t, "raw": True, "max_tokens": tg,
                                       "temperature": 0}) + "\n" for i, t in enumerate(texts)))
    for stale in (out, out.with_name(out.name + ".infer.json")):
        stale.unlink(missing_ok=True)
    cmd = [infer_bin(), "batch", str(src), "-o", str(out), "-m", str(model), "--parallel", str(p), "--ctx-size", str(ctx),
           "-t", str(threads), "--gpu-layers", "-1" if gpu else "0", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    whole = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"infer batch failed ({proc.returncode}): {proc.stderr[-800:]}")
    s = json.loads(proc.stdout)
    return {"gen_tokens": s["completion_tokens"], "wall_s": s["wall_s"], "tps": s["completion_tokens"] / s["wall_s"],
            "process_s": whole, "ok": s["ok"]}


def engine_decode(model: Path, texts: list[str], p: int, tg: int, threads: int, ctx: int, gpu: bool) -> float:
    """The scheduler's decode phase with P sequences generating together, as batched-bench's S_TG."""
    import queue

    from infer.engine import Done, LoadOptions, Model, Sampling
    from infer.engine.scheduler import Request

    m = Model(model, LoadOptions(n_threads=threads, n_gpu_layers=-1 if gpu else 0))
    try:
        sched = m.scheduler(n_seq=p, n_ctx_seq=ctx)
        sink: queue.SimpleQueue = queue.SimpleQueue()
        for i, text in enumerate(texts[:p]):
            sched.submit(Request(tokens=m.tokenize(text), sampling=Sampling(temperature=0, max_tokens=tg), id=str(i)),
                         sink=sink)
        dones = []
        while len(dones) < p:
            _, event = sink.get()
            if isinstance(event, Done):
                dones.append(event)
        sched.close()
    finally:
        m.close()
    return sum(d.usage.completion_tokens - 1 for d in dones) / max(d.timings.gen_s for d in dones)


def run_batched_bench(model: Path, p: int, pp: int, tg: int, threads: int, ctx: int, gpu: bool) -> dict:
    cmd = [str(tool("llama-batched-bench")), "-m", str(model), "-c", str(p * ctx), "-b", "2048", "-ub", "512",
           "-npp", str(pp), "-ntg", str(tg), "-npl", str(p), "-t", str(threads), "-ngl", "99" if gpu else "0",
           "--output-format", "jsonl"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"llama-batched-bench failed ({proc.returncode}): {proc.stderr[-800:]}")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    row = next(r for r in rows if r.get("pl") == p)
    return {"s_tg": row["speed_tg"], "t": row["t"], "e2e_tps": p * tg / row["t"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_server(model: Path, texts: list[str], p: int, tg: int, threads: int, ctx: int, gpu: bool) -> dict:
    port = free_port()
    cmd = [str(tool("llama-server")), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-np", str(p),
           "-c", str(p * ctx), "-t", str(threads), "-tb", str(threads), "-ngl", "99" if gpu else "0"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("llama-server did not start")
            time.sleep(0.2)

        def ask(text: str) -> int:
            body = json.dumps({"prompt": text, "max_tokens": tg, "temperature": 0}).encode()
            req = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=3600) as r:
                return json.loads(r.read())["usage"]["completion_tokens"]

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
        urllib.request.install_opener(opener)
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(texts)) as pool:
            generated = sum(pool.map(ask, texts))
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"gen_tokens": generated, "wall_s": wall, "tps": generated / wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-P", "--parallel", type=int, action="append", help="parallel counts (repeatable; default 1 4 8)")
    ap.add_argument("-N", "--requests", type=int, default=64)
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("-r", "--repeat", type=int, default=1, help="interleaved rounds (medians are reported)")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-m", "--model", type=Path, default=None, help="a GGUF file (default: the SmolLM2 test model)")
    ap.add_argument("--gpu", action="store_true", help="offload every layer (all three sides)")
    ap.add_argument("--skip-server", action="store_true")
    args = ap.parse_args()
    for name in ("llama-batched-bench", "llama-server"):
        if not tool(name).exists():
            raise SystemExit(f"{name} is missing: run `python benchmarks/native.py build` first")
    from infer.hardware import physical_cores

    threads = args.threads or physical_cores()
    model = args.model or test_model()
    counts = args.parallel or [1, 4, 8]
    ctx = args.pp + args.tg + CTX_SLACK
    texts = prompts(model, args.requests, args.pp)
    results: dict = {p: {"infer": [], "decode": [], "bench_tg": [], "bench_e2e": [], "server": [], "gen": []}
                     for p in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.repeat):
            for p in counts:
                print(f"round {rnd + 1}/{args.repeat}, P={p} ...", file=sys.stderr, flush=True)
                r = results[p]
                i = run_infer(model, texts, p, args.tg, threads, ctx, Path(tmp), args.gpu)
                r["infer"].append(i["tps"])
                r["gen"].append(i["gen_tokens"])
                r["decode"].append(engine_decode(model, texts, p, args.tg, threads, ctx, args.gpu))
                b = run_batched_bench(model, p, args.pp, args.tg, threads, ctx, args.gpu)
                r["bench_tg"].append(b["s_tg"])
                r["bench_e2e"].append(b["e2e_tps"])
                if not args.skip_server:
                    r["server"].append(run_server(model, texts, p, args.tg, threads, ctx, args.gpu)["tps"])
    med = {p: {k: summary(v)["median"] for k, v in r.items() if v} for p, r in results.items()}
    rows = []
    for p in counts:
        m = med[p]
        server = m.get("server")
        rows.append((p, f"{m['infer']:.1f}", f"{m['bench_e2e']:.1f}", f"{m['infer'] / m['bench_e2e']:.3f}",
                     f"{m['decode']:.1f}", f"{m['bench_tg']:.1f}", f"{m['decode'] / m['bench_tg']:.3f}",
                     f"{server:.1f}" if server else "-", f"{m['infer'] / server:.3f}" if server else "-"))
    print(table(rows, ("P", "infer batch", "native e2e", "ratio", "engine decode", "S_TG", "ratio",
                       "llama-server", "ratio")))
    lo, hi = min(counts), max(counts)
    speedup = {"infer": med[hi]["infer"] / med[lo]["infer"], "batched_bench": med[hi]["bench_e2e"] / med[lo]["bench_e2e"]}
    if med[lo].get("server"):
        speedup["llama_server"] = med[hi]["server"] / med[lo]["server"]
    speedup["infer_vs_native_ratio"] = speedup["infer"] / speedup["batched_bench"]
    print(f"\nP={hi} over P={lo}: infer {speedup['infer']:.2f}x, llama-batched-bench {speedup['batched_bench']:.2f}x"
          + (f", llama-server {speedup['llama_server']:.2f}x" if "llama_server" in speedup else "")
          + f" (infer's speedup / native's: {speedup['infer_vs_native_ratio']:.3f})")
    gen = {p: med[p]["gen"] for p in counts}
    print(f"{args.requests} requests of {args.pp} prompt + {args.tg} tokens, {threads} threads, {args.repeat} round(s); "
          f"tokens infer generated (median per run): {gen}; generated tok/s everywhere")
    print("saved", save("batch", {"threads": threads, "requests": args.requests, "pp": args.pp, "tg": args.tg,
                                  "gpu": args.gpu, "cpu_count": os.cpu_count(), "rounds": args.repeat,
                                  "median": {str(p): med[p] for p in counts}, "raw": {str(p): results[p] for p in counts},
                                  "speedup": speedup}))


if __name__ == "__main__":
    main()
