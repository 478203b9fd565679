"""`infer serve` against native `llama-server -np N`: the same model, threads, prompts and answer lengths.

    python benchmarks/native.py build          # once: llama-server from the same vendored llama.cpp
    python benchmarks/serve.py [-m MODEL] [--parallel 1 4 8] [--requests 32] [-p 128] [-n 64]
                               [--ngl 0] [-t THREADS] [--rounds 2] [--bin DIR]

For each N, both servers are started with N sequences of the same per-sequence context and driven by
the same client: N concurrent clients, each sending streaming `/v1/completions` requests one after
another (fixed text prompts that differ from their first token, `max_tokens` n with `ignore_eos`,
temperature 0) until `--requests` are done. Reported per server: aggregate generated tok/s (end to end,
wall clock), p50/p99 time to first token and p50/p99 inter-token latency as the client sees them. Rounds
are interleaved (native, then infer) and the best round of each is kept.
Goals (README of the issue): tok/s >= 0.95x llama-server at each N; p50 TTFT <= 1.1x llama-server.

    python benchmarks/serve.py --oneshot       # also: `infer run --host` (warm server) vs a cold `infer run`
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import infer_bin, same_weights, save, table  # noqa: E402

WORDS = ("river stone cloud lamp garden window paper orange music forest bridge candle winter market silver "
         "harbor engine letter meadow planet").split()


def prompts(count: int, p: int) -> list[str]:
    """Distinct texts of about p tokens, each starting differently (no prefix cache helps either side)."""
    out = []
    for i in range(count):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(max(p - 8, 1))]
        out.append(f"Request {i}: " + " ".join(words))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_request(port: int, prompt: str, n: int) -> dict:
    """One streaming completion; client-side TTFT and gaps between content events."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"prompt": prompt, "max_tokens": n, "ignore_eos": True, "temperature": 0, "stream": True})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    first, last, gaps, events = None, None, [], 0
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        data = json.loads(line[6:])
        if not data.get("choices") or not data["choices"][0].get("text"):
            continue
        now = time.perf_counter()
        events += 1
        if first is None:
            first = now
        else:
            gaps.append(now - last)
        last = now
    conn.close()
    return {"ttft": (first or time.perf_counter()) - t0, "gaps": gaps, "events": events}


def drive(port: int, clients: int, texts: list[str], n: int) -> dict:
    todo = list(enumerate(texts))
    lock = threading.Lock()
    results: list[dict] = []

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                _, text = todo.pop(0)
            r = one_request(port, text, n)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = sorted(r["ttft"] for r in results)
    gaps = sorted(g for r in results for g in r["gaps"])
    pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")  # noqa: E731
    return {"tps": len(texts) * n / wall, "wall_s": wall, "ttft_p50": statistics.median(ttfts), "ttft_p99": pct(ttfts, 0.99),
            "itl_p50": pct(gaps, 0.5), "itl_p99": pct(gaps, 0.99), "events": sum(r["events"] for r in results)}


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def start_native(bin_dir: Path, model: Path, k: int, ctx: int, threads: int, ngl: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([str(bin_dir / "llama-server"), "-m", str(model), *same_weights("llama-server"), "-np", str(k), "-c", str(k * ctx),
                             "-t", str(threads), "-tb", str(threads), "-ngl", str(ngl), "--port", str(port),
                             "--host", "127.0.0.1", "-b", "2048", "-ub", "512", "--no-webui"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}", proc)
    return proc, port


def start_infer(model: Path, k: int, ctx: int, threads: int, ngl: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([infer_bin(), "serve", "-m", str(model), "--port", "0", "--parallel", str(k), "-c", str(ctx),
                             "-t", str(threads), "-ngl", str(ngl if ngl else 0), "--max-queue", "4096"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        found = re.search(r"listening on http://[^:]+:(\d+)", line)
        if found:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain the access log
            return proc, int(found.group(1))
    raise RuntimeError(f"infer serve exited with {proc.wait()}: {''.join(seen[-5:])}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(start, k: int, texts: list[str], n: int) -> dict:
    proc, port = start()
    try:
        one_request(port, "warm up", 4)
        return drive(port, k, texts, n)
    finally:
        stop(proc)


def oneshot(model: Path, threads: int, rounds: int) -> dict:
    """`infer run --host` against a warm `infer serve`, and a cold `infer run`, same prompt and length."""
    help_text = subprocess.run([infer_bin(), "run", "--help"], capture_output=True, text=True).stdout
    if "--host" not in help_text:
        return {"skipped": "infer run has no --host yet"}
    args = ["run", "-m", str(model), "-t", str(threads), "--temperature", "0", "-n", "16", "Name a colour."]
    proc, port = start_infer(model, 1, 1024, threads, 0)
    try:
        warm, cold = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            subprocess.run([infer_bin(), *args, "--host", f"http://127.0.0.1:{port}"], check=True, capture_output=True)
            warm.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run([infer_bin(), *args], check=True, capture_output=True)
            cold.append(time.perf_counter() - t0)
    finally:
        stop(proc)
    w, c = statistics.median(warm), statistics.median(cold)
    return {"warm_s": w, "cold_s": c, "ratio": w / c}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", type=Path)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--requests", type=int, default=32, help="requests per N (at least N)")
    ap.add_argument("-p", type=int, default=128, help="prompt length, about, in tokens")
    ap.add_argument("-n", type=int, default=64, help="generated tokens per request")
    ap.add_argument("-t", "--threads", type=int)
    ap.add_argument("--ngl", type=int, default=0)
    ap.add_argument("--bin", type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--oneshot", action="store_true")
    args = ap.parse_args()
    from infer.hardware import physical_cores

    threads = args.threads or physical_cores()
    if args.model is None:
        from common import test_model

        args.model = test_model()
    if args.bin is None:
        from native import native_dir

        args.bin = native_dir() / "build" / "bin"
    if not (args.bin / "llama-server").exists():
        raise SystemExit(f"no llama-server in {args.bin}: run `python benchmarks/native.py build` first")
    ctx = -(-(args.p + args.n + 64) // 256) * 256
    results, rows = {}, []
    header = ("N", "server tok/s", "infer tok/s", "ratio", "TTFT p50 server/infer", "ratio", "TTFT p99 s/i",
              "ITL p50 s/i", "ITL p99 s/i")
    for k in args.parallel:
        texts = prompts(max(args.requests, k), args.p)
        native, ours = [], []
        for _ in range(args.rounds):
            native.append(measure(lambda: start_native(args.bin, args.model, k, ctx, threads, args.ngl), k, texts, args.n))
            ours.append(measure(lambda: start_infer(args.model, k, ctx, threads, args.ngl), k, texts, args.n))
        nb, ob = max(native, key=lambda r: r["tps"]), max(ours, key=lambda r: r["tps"])
        res = {"native": nb, "infer": ob, "tps_ratio": ob["tps"] / nb["tps"], "ttft_p50_ratio": ob["ttft_p50"] / nb["ttft_p50"]}
        results[k] = res
        ms = lambda x: f"{x * 1000:.0f}"  # noqa: E731
        rows.append((k, f"{nb['tps']:.1f}", f"{ob['tps']:.1f}", f"{res['tps_ratio']:.3f}",
                     f"{ms(nb['ttft_p50'])}/{ms(ob['ttft_p50'])} ms", f"{res['ttft_p50_ratio']:.2f}",
                     f"{ms(nb['ttft_p99'])}/{ms(ob['ttft_p99'])}", f"{ms(nb['itl_p50'])}/{ms(ob['itl_p50'])}",
                     f"{ms(nb['itl_p99'])}/{ms(ob['itl_p99'])}"))
        print(table(rows[-1:], header), flush=True)
    print()
    print(table(rows, header))
    print(f"{args.requests} requests per N, ~{args.p} prompt + {args.n} generated tokens (ignore_eos), "
          f"{threads} threads, ngl {args.ngl}, best of {args.rounds} interleaved rounds")
    if args.oneshot:
        results["oneshot"] = oneshot(args.model, threads, args.rounds)
        print("one-shot:", json.dumps(results["oneshot"]))
    print("saved", save("serve", {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}))


if __name__ == "__main__":
    main()
