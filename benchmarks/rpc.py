"""RPC splits: infer against native llama.cpp on the same splits, and infer's prediction against what it measured.

    python benchmarks/native.py build         # once: the native tools, ggml-rpc-server included (GGML_RPC=ON)
    python benchmarks/rpc.py [-r 3] [-t 1]

Three setups, each run with both stacks, interleaved: local only; one loopback worker holding every layer; two
loopback workers sharing them. infer: `infer worker` processes and `infer bench --rpc ... --force-rpc`.
Native: `ggml-rpc-server` processes and `llama-bench --rpc ... -ngl 99`, built from the llama.cpp vendored in
the installed llama-cpp-python, so both run the same code over the same protocol. Each side's prediction is the
line `infer` printed before loading (it probes the workers; the local figure is estimated from memory bandwidth).

Loopback workers share this machine's cores with the main process: give every process the same -t (default 1)
and keep threads x processes within the cores. Results: a table and benchmarks/results/rpc.json.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import infer_bin, same_weights, save, table, test_model  # noqa: E402
from native import tool  # noqa: E402

PREDICTED = re.compile(r"predicted ([\d.]+) tok/s against ([\d.]+) tok/s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_infer_worker(threads: int) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([infer_bin(), "worker", "--port", "0", "-t", str(threads)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    return p, p.stdout.readline().split()[-1]


def start_native_worker(threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    p = subprocess.Popen([str(tool("ggml-rpc-server")), "-H", "127.0.0.1", "-p", str(port), "-t", str(threads)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):  # ready when it accepts (the connection is a client it then drops)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.2)
    return p, f"127.0.0.1:{port}"


def infer_run(model: Path, threads: int, endpoints: list[str], pp: int, tg: int) -> dict:
    args = [infer_bin(), "bench", "-m", str(model), "-t", str(threads), "-p", str(pp), "-n", str(tg), "-r", "3",
            "--json"]
    if endpoints:
        args += ["--rpc", ",".join(endpoints), "--force-rpc"]
    p = subprocess.run(args, capture_output=True, text=True, check=True)
    data = json.loads(p.stdout)
    m = PREDICTED.search(p.stderr)
    return {"tg": data["tg"]["tps"]["median"], "pp": data["pp"][0]["tps"]["median"],
            "ttft": data["ttft_s"]["median"], "predicted": float(m.group(1)) if m else None,
            "local_estimate": float(m.group(2)) if m else None}


def native_run(model: Path, threads: int, endpoints: list[str], pp: int, tg: int) -> dict:
    args = [str(tool("llama-bench")), "-m", str(model), *same_weights("llama-bench"), "-t", str(threads), "-p", str(pp), "-n", str(tg), "-r", "3",
            "-o", "json"]
    if endpoints:
        args += ["--rpc", ",".join(endpoints), "-ngl", "99"]
    rows = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    got = {("pp" if r["n_prompt"] else "tg"): r["avg_ts"] for r in rows}
    return {"tg": got["tg"], "pp": got["pp"]}


def measure(model: Path, threads: int, n_workers: int, pp: int, tg: int) -> tuple[dict, dict]:
    procs = []
    try:
        infer_eps, native_eps = [], []
        for _ in range(n_workers):
            p, ep = start_infer_worker(threads)
            procs.append(p)
            infer_eps.append(ep)
        ours = infer_run(model, threads, infer_eps, pp, tg)
        for p in procs:
            p.kill()
            p.wait()
        procs.clear()
        for _ in range(n_workers):
            p, ep = start_native_worker(threads)
            procs.append(p)
            native_eps.append(ep)
        native = native_run(model, threads, native_eps, pp, tg)
        return ours, native
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-r", "--repeat", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("-p", "--pp", type=int, default=128)
    ap.add_argument("-n", "--tg", type=int, default=64)
    args = ap.parse_args()
    for name in ("llama-bench", "ggml-rpc-server"):
        if not tool(name).exists():
            raise SystemExit(f"{tool(name)} is missing: run `python benchmarks/native.py build` first")
    model = test_model()
    setups = {"local": 0, "1 worker": 1, "2 workers": 2}
    runs: dict[str, list] = {k: [] for k in setups}
    for _ in range(args.repeat):
        for name, n in setups.items():
            runs[name].append(measure(model, args.threads, n, args.pp, args.tg))
    rows, result = [], {"threads": args.threads, "pp": args.pp, "tg": args.tg, "setups": {}}
    local_tg = statistics.median(o["tg"] for o, _ in runs["local"])
    for name, pairs in runs.items():
        med = lambda key, side: statistics.median(pair[side][key] for pair in pairs)  # noqa: E731
        ours_tg, native_tg, ours_pp, native_pp = med("tg", 0), med("tg", 1), med("pp", 0), med("pp", 1)
        predicted = [p[0]["predicted"] for p in pairs if p[0]["predicted"]]
        pred = statistics.median(predicted) if predicted else None
        estimate = [p[0]["local_estimate"] for p in pairs if p[0]["local_estimate"]]
        entry = {"infer_tg": ours_tg, "native_tg": native_tg, "tg_ratio": ours_tg / native_tg,
                 "infer_pp": ours_pp, "native_pp": native_pp, "pp_ratio": ours_pp / native_pp,
                 "infer_ttft_s": med("ttft", 0), "predicted_tg": pred,
                 "prediction_error": (pred / ours_tg - 1) if pred else None,
                 "local_estimate": statistics.median(estimate) if estimate else None, "local_measured": local_tg}
        result["setups"][name] = entry
        rows.append((name, f"{ours_tg:.1f}", f"{native_tg:.1f}", f"{entry['tg_ratio']:.3f}", f"{entry['pp_ratio']:.3f}",
                     f"{entry['infer_ttft_s'] * 1e3:.0f}", f"{pred:.1f}" if pred else "-",
                     f"{entry['prediction_error']:+.0%}" if pred else "-"))
    print(table(rows, ("setup", "infer tg", "native tg", "tg ratio", "pp ratio", "ttft ms", "predicted tg",
                       "pred error")))
    print(f"\n{args.threads} thread(s) per process, pp{args.pp}/tg{args.tg}, {args.repeat} interleaved rounds")
    print("saved", save("rpc", result))


if __name__ == "__main__":
    main()
