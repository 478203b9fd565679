"""A huge piped input (a log file piped by mistake): how long until exit 5, and the peak memory,
next to a normal one-shot run of the same model.

    python benchmarks/big_input.py [--mb 67] [-r 5]

Goals (the issue's item 4): the exit-5 message within 2 s; peak RSS below the model's own footprint
(a normal `infer run -n 1`) + 100 MB. Interleaved whole-process runs. Writes results/big_input.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import infer_bin, save, summary, table, test_model


def measured(cmd: list[str], stdin_path: Path | None) -> tuple[float, int, int]:
    """(seconds, exit code, peak RSS in bytes) of one whole process."""
    with (stdin_path.open("rb") if stdin_path else open(os.devnull, "rb")) as stdin:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(p.pid, 0)
        elapsed = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, p.returncode, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=67)
    ap.add_argument("-r", "--repeat", type=int, default=5)
    args = ap.parse_args()
    model = test_model()
    line = b"2026-11-23 12:00:00 INFO worker-7 request handled in 12 ms path=/api/v1/items status=200\n"
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "app.log"
        with big.open("wb") as f:
            for _ in range(args.mb):
                f.write(line * (1_000_000 // len(line)))
        cases = {
            f"infer run < {args.mb} MB (exit 5)": ([infer_bin(), "run", "-m", str(model), "Summarize"], big, 5),
            "infer run -n 1 hi (the model's footprint)": ([infer_bin(), "run", "-m", str(model), "-n", "1", "hi"], None, 0),
        }
        times = {name: [] for name in cases}
        rss = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, (cmd, stdin, code) in cases.items():
                t, rc, peak = measured(cmd, stdin)
                if rc != code:
                    raise SystemExit(f"{name}: exit {rc}, expected {code}")
                times[name].append(t)
                rss[name].append(peak)
    rows = [(name, f"{summary(times[name])['median']:.2f}", f"{summary(times[name])['max']:.2f}",
             f"{max(rss[name]) / 1e6:.0f}") for name in cases]
    print(table(rows, ("whole process", "median s", "max s", "peak RSS MB")))
    big_name, base_name = list(cases)
    extra = (max(rss[big_name]) - max(rss[base_name])) / 1e6
    print(f"\nmodel file {model.stat().st_size / 1e6:.0f} MB; huge input peak RSS vs normal run: {extra:+.0f} MB "
          f"(goal < +100 MB); time to exit 5: median {summary(times[big_name])['median']:.2f} s (goal <= 2 s)")
    print("saved", save("big_input", {"times": {k: summary(v) for k, v in times.items()},
                                      "peak_rss": {k: max(v) for k, v in rss.items()}, "mb": args.mb}))


if __name__ == "__main__":
    main()
