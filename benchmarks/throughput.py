"""Continuous batching: the engine's scheduler against native llama.cpp, same model, same lengths.

    python benchmarks/throughput.py [-m MODEL] [--parallel 1 4 8] [--requests 64] [-p 128] [-n 128]
                                    [--bin DIR] [--ngl 99] [-t THREADS]

For each parallel count k it measures, interleaved:
  - infer's scheduler (engine API, no CLI or HTTP): `--requests` requests of P random prompt tokens and
    N generated tokens (ignore_eos), k decoding together; aggregate generated tok/s end to end, and the
    decode-phase rate of one full wave of k sequences (what llama-batched-bench calls S_TG);
  - native `llama-batched-bench -npp P -ntg N -npl k`: S_TG (decode only, no sampling: the ceiling) and
    its end-to-end generated tok/s (k*N / T);
  - native `llama-server -np k` fed the same requests concurrently over loopback (token-id prompts,
    n_predict N, ignore_eos): generated tok/s end to end, what a user would run instead.
Native tools: `--bin` (default: what benchmarks/native.py builds; add llama-batched-bench and llama-server).
Results: a table and benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import same_weights, save, table  # noqa: E402


def infer_waves(model, k: int, requests: int, p: int, n: int, seed: int) -> dict:
    from infer.engine import Done, Sampling
    from infer.engine.scheduler import Request

    rng = random.Random(seed)
    n_vocab = model._lib.llama_vocab_n_tokens(model.vocab)
    prompts = [[rng.randrange(100, n_vocab) for _ in range(p)] for _ in range(requests)]
    sched = model.scheduler(k, -(-(p + n + 8) // 256) * 256, prefill_chunk=None)  # as `infer batch` runs it
    sampling = Sampling(temperature=0, max_tokens=n, ignore_eos=True)
    warm = sched.submit(Request(prompts[0][:8], Sampling(temperature=0, max_tokens=4)))
    list(warm)

    def run(batch: list[list[int]]) -> tuple[float, list[Done], float]:
        q: queue.SimpleQueue = queue.SimpleQueue()
        t0 = time.perf_counter()
        for i, tokens in enumerate(batch):
            sched.submit(Request(tokens, sampling, id=str(i), stream=False), sink=q)
        dones = []
        while len(dones) < len(batch):
            _, event = q.get()
            if isinstance(event, Done):
                dones.append(event)
        return time.perf_counter() - t0, dones, t0

    # decode phase of one full wave: from the last sequence's first token to the end
    _, wave, _ = run(prompts[:k])
    first = max(d.timings.ttft_s for d in wave)
    end = max(d.timings.ttft_s + d.timings.gen_s for d in wave)
    decode_tps = sum(d.usage.completion_tokens - 1 for d in wave) / max(end - first, 1e-9)
    wall, dones, _ = run(prompts)
    gen = sum(d.usage.completion_tokens for d in dones)
    assert gen == requests * n, f"generated {gen}, expected {requests * n}"
    return {"e2e_tps": gen / wall, "decode_tps": decode_tps, "wall_s": wall}


def batched_bench(bin_dir: Path, model: Path, k: int, p: int, n: int, threads: int, ngl: int) -> dict:
    out = subprocess.run([str(bin_dir / "llama-batched-bench"), "-m", str(model), *same_weights("llama-batched-bench"), "-c", str(k * (p + n) + 256),
                          "-b", "2048", "-ub", "512", "-npp", str(p), "-ntg", str(n), "-npl", str(k), "-t", str(threads),
                          "-ngl", str(ngl), "--output-format", "jsonl"], capture_output=True, text=True, check=True)
    row = [json.loads(line) for line in (out.stdout + out.stderr).splitlines() if line.startswith("{")][-1]
    return {"s_tg": row["speed_tg"], "e2e_tps": k * n / row["t"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_server(bin_dir: Path, model: Path, k: int, requests: int, p: int, n: int, threads: int, ngl: int,
                 seed: int) -> dict:
    port = free_port()
    ctx = k * (-(-(p + n + 8) // 256) * 256)
    proc = subprocess.Popen([str(bin_dir / "llama-server"), "-m", str(model), *same_weights("llama-server"), "-np", str(k), "-c", str(ctx),
                             "-t", str(threads), "-ngl", str(ngl), "--port", str(port), "--host", "127.0.0.1",
                             "-b", "2048", "-ub", "512"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        rng = random.Random(seed)
        prompts = [[rng.randrange(100, 40000) for _ in range(p)] for _ in range(requests)]

        def one(tokens: list[int]) -> int:
            body = json.dumps({"prompt": tokens, "n_predict": n, "ignore_eos": True, "temperature": 0,
                               "cache_prompt": False}).encode()
            req = urllib.request.Request(url + "/completion", body, {"Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(req, timeout=600).read())["tokens_predicted"]

        one(prompts[0][:8])
        t0 = time.perf_counter()
        counts: list[int] = []
        threads_ = [threading.Thread(target=lambda t=t: counts.append(one(t))) for t in prompts]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        wall = time.perf_counter() - t0
        return {"e2e_tps": sum(counts) / wall, "wall_s": wall}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", type=Path)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int)
    ap.add_argument("--ngl", type=int, default=0)
    ap.add_argument("--bin", type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-server", action="store_true")
    args = ap.parse_args()
    from infer.engine import LoadOptions, Model
    from infer.hardware import physical_cores

    threads = args.threads or physical_cores()
    if args.model is None:
        from common import test_model

        args.model = test_model()
    if args.bin is None:
        from native import native_dir

        args.bin = native_dir() / "build" / "bin"
    model = Model(args.model, LoadOptions(n_threads=threads, n_gpu_layers=-1 if args.ngl else 0, flash_attn="auto"))
    results, rows = {}, []
    for k in args.parallel:
        ours, native, server = [], [], []
        for r in range(args.rounds):
            native.append(batched_bench(args.bin, args.model, k, args.p, args.n, threads, args.ngl))
            ours.append(infer_waves(model, k, args.requests, args.p, args.n, seed=r))
            if not args.skip_server:
                server.append(llama_server(args.bin, args.model, k, args.requests, args.p, args.n, threads, args.ngl, r))
        best = lambda xs, key: max(x[key] for x in xs) if xs else float("nan")  # noqa: E731
        res = {"infer_e2e": best(ours, "e2e_tps"), "infer_decode": best(ours, "decode_tps"),
               "native_s_tg": best(native, "s_tg"), "native_e2e": best(native, "e2e_tps"),
               "server_e2e": best(server, "e2e_tps")}
        res["decode_ratio"] = res["infer_decode"] / res["native_s_tg"]
        res["e2e_ratio_batched_bench"] = res["infer_e2e"] / res["native_e2e"]
        res["e2e_ratio_server"] = res["infer_e2e"] / res["server_e2e"] if server else None
        results[k] = res
        rows.append((k, f"{res['infer_decode']:.1f}", f"{res['native_s_tg']:.1f}", f"{res['decode_ratio']:.3f}",
                     f"{res['infer_e2e']:.1f}", f"{res['native_e2e']:.1f}", f"{res['e2e_ratio_batched_bench']:.3f}",
                     f"{res['server_e2e']:.1f}", f"{res['e2e_ratio_server']:.3f}" if server else "-"))
        print(table(rows[-1:], ("k", "infer S_TG", "native S_TG", "ratio", "infer e2e", "bb e2e", "ratio",
                                "server e2e", "ratio")), flush=True)
    ks = args.parallel
    if len(ks) > 1:
        lo, hi = results[ks[0]], results[ks[-1]]
        results["speedup"] = {"infer": hi["infer_e2e"] / lo["infer_e2e"], "batched_bench": hi["native_e2e"] / lo["native_e2e"],
                              "server": hi["server_e2e"] / lo["server_e2e"] if not args.skip_server else None}
    print(table(rows, ("k", "infer S_TG", "native S_TG", "ratio", "infer e2e", "bb e2e", "ratio", "server e2e", "ratio")))
    print(f"{args.requests} requests of {args.p} prompt + {args.n} generated tokens, {threads} threads, ngl {args.ngl}; "
          f"speedup {ks[-1]} vs {ks[0]}: {json.dumps(results.get('speedup'))}")
    print("saved", save("throughput", {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}))
    model.close()


if __name__ == "__main__":
    main()
