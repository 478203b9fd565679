"""Decoding on a busy machine: tok/s idle and with CPU-bound processes beside it.

    python benchmarks/busy.py [-r 3] [-n 64] [--busy 0 1 2] [--late]

For each load (0, 1, 2 processes running `python -c "while True: pass"`, started before the
measured one, so that infer's default thread count sees them), interleaved: `infer run` with its
default thread count, with -t 1 and with -t <physical cores>, and native llama-bench (tg) with
-t <physical cores> and -t 1 when `native.py build` was run. infer's rate is --json's gen_tps
(decode only, as llama-bench's tg). A run that outlasts --timeout counts as n/timeout (shown "<").

--late starts the busy processes 1 s after each measured process instead (after infer chose its
threads, as when another program starts in the middle of an answer), with 4x the tokens.

Prints tok/s medians and each one's ratio to the same command idle; writes results/busy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

from common import infer_bin, same_weights, save, summary, table, test_model

PROMPT = "Once upon a time"
SPIN = "while True: pass"


class Busy:
    """n CPU-bound processes beside the measured one, started now or `delay` seconds later."""

    def __init__(self, n: int, delay: float = 0.0):
        self.n, self.delay, self.procs = n, delay, []
        self._timer = None

    def __enter__(self):
        if self.delay:
            self._timer = threading.Timer(self.delay, self._start)
            self._timer.start()
        else:
            self._start()
            time.sleep(0.3)  # running before the measured process starts
        return self

    def _start(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(self.n)]

    def __exit__(self, *exc):
        if self._timer:
            self._timer.cancel()
            self._timer.join()
        for p in self.procs:
            p.kill()
            p.wait()


def run_rate(cmd: list[str], tokens: int, timeout: float, env: dict, parse) -> tuple[float, bool]:
    """(tok/s, finished): a run past the timeout counts as tokens/timeout."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return tokens / timeout, False
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}... failed ({out.returncode}): {out.stderr[-500:]}")
    return parse(out.stdout), True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-r", "--repeat", type=int, default=3)
    ap.add_argument("-n", "--tokens", type=int, default=64)
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--late", action="store_true", help="start the busy processes 1 s into each run")
    ap.add_argument("--timeout", type=float, default=40.0)
    args = ap.parse_args()
    from infer.hardware import physical_cores
    from native import tool

    cores = physical_cores()
    model = str(test_model())
    tokens = args.tokens * (4 if args.late else 1)
    env = {k: v for k, v in os.environ.items() if k != "INFER_THREADS"}
    gen_tps = lambda out: json.loads(out)["timings"]["gen_tps"]  # noqa: E731
    bench_tps = lambda out: next(r["avg_ts"] for r in json.loads(out) if r["n_gen"])  # noqa: E731
    infer = [infer_bin(), "run", "-m", model, "--raw", "--temperature", "0", "-n", str(tokens), "--json"]
    cmds = {"infer run (default threads)": (infer + [PROMPT], gen_tps),
            "infer run -t 1": (infer + ["-t", "1", PROMPT], gen_tps),
            f"infer run -t {cores}": (infer + ["-t", str(cores), PROMPT], gen_tps)}
    if tool("llama-bench").exists():
        for t in dict.fromkeys((cores, 1)):
            cmds[f"llama-bench tg -t {t}"] = ([str(tool("llama-bench")), "-m", model, *same_weights("llama-bench"), "-t", str(t), "-p", "0", "-n",
                                               str(tokens), "-r", "1", "-o", "json"], bench_tps)
    rates = {(name, n): [] for name in cmds for n in args.busy}
    cut = {key: False for key in rates}
    for _ in range(args.repeat):
        for n in args.busy:
            for name, (cmd, parse) in cmds.items():
                with Busy(n, delay=1.0 if args.late else 0.0):
                    rate, finished = run_rate(cmd, tokens, args.timeout, env, parse)
                rates[(name, n)].append(rate)
                cut[(name, n)] |= not finished
    med = {key: summary(v)["median"] for key, v in rates.items()}
    header = ["command"] + [f"{n} busy tok/s" for n in args.busy] + [f"{n} busy / idle" for n in args.busy if n]
    rows = []
    for name in cmds:
        cells = [f"{'<' if cut[(name, n)] else ''}{med[(name, n)]:.1f}" for n in args.busy]
        if 0 in args.busy:
            cells += [f"{med[(name, n)] / med[(name, 0)]:.2f}" for n in args.busy if n]
        rows.append((name, *cells))
    print(table(rows, tuple(header[:len(rows[0])])))
    print(f"\n{cores} physical cores, {tokens} tokens, {args.repeat} interleaved rounds"
          + (", busy processes started 1 s into each run" if args.late else ""))
    result = {"cores": cores, "tokens": tokens, "late": args.late,
              "rates": {f"{name} | {n} busy": summary(v) for (name, n), v in rates.items()}}
    print("saved", save("busy-late" if args.late else "busy", result))


if __name__ == "__main__":
    main()
