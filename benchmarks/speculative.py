"""Speculative decoding: generated tok/s with --lookup against plain decoding, the same run, interleaved.

    python benchmarks/speculative.py [-r 3] [-t THREADS]          # CPU, SmolLM2, whole `infer run` processes
    python benchmarks/speculative.py verify -m MODEL [--ngl 99]   # the cost of verifying k tokens vs 1

The rewriting task gives the model a ~500-token code file and asks for it back with one small change
(text that copies its input: where prompt lookup wins); the free-form task asks for an essay (lookup
rarely hits: speculation must cost nothing there). Both at temperature 0, so the two sides produce the
same text (checked). `verify` times one decode of k tokens (k = 1..16) after a 512-token context, which
bounds what any speculation can win on that hardware.
Results: a table and benchmarks/results/speculative.json (or speculative_verify.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import infer_bin, save, table, test_model  # noqa: E402

CODE = "\n".join(
    f"def compute_{name}(values):\n    \"\"\"Return the {name} of the values.\"\"\"\n    total = 0\n"
    f"    for value in values:\n        total += value * {i}\n    return total / max(len(values), 1)\n"
    for i, name in enumerate(["mean", "spread", "score", "weight", "scale", "level", "ratio", "index", "rank",
                              "share", "trend", "delta"], 1))
TASKS = {
    "rewrite": ("Return this code unchanged except that compute_score is renamed to compute_points. "
                "Output only the code.", CODE),
    "free-form": ("Write an essay about the history of sailing ships.", ""),
}


def env() -> dict:
    cache = Path(os.environ.get("INFER_TEST_CACHE", Path.home() / ".cache" / "infer-tests"))
    home = Path(tempfile.mkdtemp())
    (home / "data").mkdir(parents=True)
    (home / "data" / "manifest.json").write_text((cache / "home" / "data" / "manifest.json").read_text())
    return {**os.environ, "INFER_HOME": str(home), "INFER_MODELS": str(cache / "models"), "HF_ENDPOINT": "http://127.0.0.1:9"}


def run(e: dict, threads: int, question: str, material: str, *args: str) -> dict:
    out = subprocess.run([infer_bin(), "run", "-m", "smollm2", "-t", str(threads), "--temperature", "0", "-n", "400",
                          "--json", *args, question], input=material, capture_output=True, text=True, env=e, check=True)
    return json.loads(out.stdout)


def cpu(args) -> None:
    test_model()
    e = env()
    rows, result = [], {"threads": args.threads}
    for task, (question, material) in TASKS.items():
        plain, fast, acc = [], [], []
        for _ in range(args.repeat):
            p = run(e, args.threads, question, material)
            f = run(e, args.threads, question, material, "--lookup")
            assert p["text"] == f["text"], f"{task}: --lookup changed the text"
            plain.append(p["timings"]["gen_tps"])
            fast.append(f["timings"]["gen_tps"])
            u = f["usage"]
            acc.append((u["accepted_tokens"], u["drafted_tokens"], u["completion_tokens"]))
        ratio = statistics.median(fast) / statistics.median(plain)
        a, d, n = acc[-1]
        rows.append((task, f"{statistics.median(plain):.1f}", f"{statistics.median(fast):.1f}", f"{ratio:.2f}x",
                     f"{a}/{d}", str(n)))
        result[task] = {"plain_tps": plain, "lookup_tps": fast, "ratio": ratio, "accepted_drafted_tokens": acc[-1]}
    print(table(rows, ("task", "plain tok/s", "--lookup tok/s", "ratio", "accepted/drafted", "tokens")))
    print("goals: rewrite >= 1.5x, free-form >= 0.97x; identical text checked on every pair")
    print("saved", save("speculative", result))


def verify(args) -> None:
    from infer.engine import LoadOptions, Model

    model = Model(args.model, LoadOptions(n_threads=args.threads, n_gpu_layers=-1 if args.ngl else 0))
    b = model.scheduler(1, 1024).backend
    rows, result = [], {}
    for k in range(1, 17):
        times = []
        for r in range(args.repeat * 4):
            b.forget(0, 0)
            for start in range(0, 512, b.n_batch):
                for i in range(start, min(512, start + b.n_batch)):
                    b.add(7 + i % 50, i, 0, i == 511)
                b.decode()
            b.synchronize()
            t0 = time.perf_counter()
            for i in range(k):
                b.add(11 + i, 512 + i, 0, True)
            b.decode()
            b.synchronize()
            times.append(time.perf_counter() - t0)
        result[k] = statistics.median(times)
        rows.append((k, f"{result[k] * 1000:.2f}", f"{result[k] / result[1]:.2f}"))
    print(table(rows, ("k tokens", "ms per decode", "vs 1 token")))
    print("saved", save("speculative_verify", {"model": str(args.model), "ngl": args.ngl, "ms": result}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="?", default="cpu", choices=["cpu", "verify"])
    ap.add_argument("-r", "--repeat", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-m", "--model", type=Path)
    ap.add_argument("--ngl", type=int, default=0)
    args = ap.parse_args()
    verify(args) if args.what == "verify" else cpu(args)


if __name__ == "__main__":
    main()
