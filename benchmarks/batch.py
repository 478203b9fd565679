"""`infer batch`, the whole command, against native llama.cpp: same model, threads, prompts and lengths.

    python benchmarks/native.py build        # once: llama-batched-bench and llama-server are among its tools
    python benchmarks/batch.py [--parallel 1 4 8] [--requests 64] [-p 128] [-n 128] [--rounds 2] [--ngl 99]

For each parallel count k, interleaved, `--rounds` times (the best round is reported, as throughput.py does):
  - `infer batch --parallel k` on a JSONL file of `--requests` OpenAI Batch lines (/v1/completions, a prompt
    of P random token ids, max_tokens N, temperature 0, ignore_eos): generated tokens / the batch's wall time
    from its --json summary (model load excluded, as the native tools exclude theirs). JSONL parsing, the
    fsynced output and the result lines are all inside that time;
  - native `llama-batched-bench -npp P -ntg N -npl k`: its end-to-end generated tok/s (k*N / T) and its S_TG
    (decode only, no sampling: the ceiling; the engine's own decode phase is measured by throughput.py);
  - native `llama-server -np k` fed the same requests (the same token ids) concurrently over loopback.
Ratios infer/native, and the speedup of the largest k over the smallest next to native's own.
Results: a table and benchmarks/results/batch.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import infer_bin, save, table  # noqa: E402
from throughput import batched_bench, llama_server  # noqa: E402


def token_prompts(requests: int, p: int, seed: int) -> list[list[int]]:
    """The prompts throughput.llama_server sends for this seed, so both sides read the same tokens."""
    rng = random.Random(seed)
    return [[rng.randrange(100, 40000) for _ in range(p)] for _ in range(requests)]


def infer_batch(model: Path, k: int, requests: int, p: int, n: int, threads: int, ngl: int, seed: int,
                work: Path) -> dict:
    src, out = work / f"in-{k}-{seed}.jsonl", work / f"out-{k}-{seed}.jsonl"
    with open(src, "w") as f:
        for i, tokens in enumerate(token_prompts(requests, p, seed)):
            body = {"prompt": tokens, "max_tokens": n, "temperature": 0, "ignore_eos": True}
            f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": body}) + "\n")
    per_seq = -(-(p + n + 8) // 256) * 256  # as throughput.py sizes each sequence
    cmd = [infer_bin(), "batch", str(src), "-o", str(out), "-m", str(model), "--parallel", str(k),
           "--ctx-size", str(per_seq), "-t", str(threads), "--gpu-layers", str(ngl), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"infer batch failed ({proc.returncode}): {proc.stderr[-800:]}")
    s = json.loads(proc.stdout)
    if s["completion_tokens"] != requests * n or s["ok"] != requests:
        raise SystemExit(f"infer batch generated {s['completion_tokens']} tokens in {s['ok']} lines, "
                         f"expected {requests * n} in {requests}")
    return {"e2e_tps": s["completion_tokens"] / s["wall_s"], "wall_s": s["wall_s"], "process_s": process_s}


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
    from infer.hardware import physical_cores

    threads = args.threads or physical_cores()
    if args.model is None:
        from common import test_model

        args.model = test_model()
    if args.bin is None:
        from native import native_dir

        args.bin = native_dir() / "build" / "bin"
    for tool in ("llama-batched-bench", *(() if args.skip_server else ("llama-server",))):
        if not (args.bin / tool).exists():
            raise SystemExit(f"{args.bin / tool} is missing: run `python benchmarks/native.py build` first")
    head = ("k", "infer batch", "bb e2e", "ratio", "bb S_TG", "server e2e", "ratio", "infer wall s")
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.parallel:
            ours, native, server = [], [], []
            for r in range(args.rounds):
                native.append(batched_bench(args.bin, args.model, k, args.p, args.n, threads, args.ngl))
                ours.append(infer_batch(args.model, k, args.requests, args.p, args.n, threads, args.ngl, r, Path(tmp)))
                if not args.skip_server:
                    server.append(llama_server(args.bin, args.model, k, args.requests, args.p, args.n, threads,
                                               args.ngl, r))
            best = lambda xs, key: max(x[key] for x in xs) if xs else float("nan")  # noqa: E731
            res = {"infer_e2e": best(ours, "e2e_tps"), "native_e2e": best(native, "e2e_tps"),
                   "native_s_tg": best(native, "s_tg"), "server_e2e": best(server, "e2e_tps"),
                   "infer_wall_s": min(x["wall_s"] for x in ours), "infer_process_s": min(x["process_s"] for x in ours)}
            res["ratio_batched_bench"] = res["infer_e2e"] / res["native_e2e"]
            res["ratio_server"] = res["infer_e2e"] / res["server_e2e"] if server else None
            results[k] = res
            rows.append((k, f"{res['infer_e2e']:.1f}", f"{res['native_e2e']:.1f}", f"{res['ratio_batched_bench']:.3f}",
                         f"{res['native_s_tg']:.1f}", f"{res['server_e2e']:.1f}" if server else "-",
                         f"{res['ratio_server']:.3f}" if server else "-", f"{res['infer_wall_s']:.1f}"))
            print(table(rows[-1:], head), flush=True)
    ks = args.parallel
    if len(ks) > 1:
        lo, hi = results[ks[0]], results[ks[-1]]
        results["speedup"] = {"infer": hi["infer_e2e"] / lo["infer_e2e"],
                              "batched_bench": hi["native_e2e"] / lo["native_e2e"],
                              "server": hi["server_e2e"] / lo["server_e2e"] if not args.skip_server else None}
        results["speedup"]["infer_over_native"] = results["speedup"]["infer"] / results["speedup"]["batched_bench"]
    print(table(rows, head))
    print(f"{args.requests} requests of {args.p} prompt + {args.n} generated tokens, {threads} threads, ngl {args.ngl}, "
          f"best of {args.rounds}; generated tok/s; speedup {ks[-1]} vs {ks[0]}: {json.dumps(results.get('speedup'))}")
    print("saved", save("batch", {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}))


if __name__ == "__main__":
    main()
