"""Start-up cost: `infer --help`, `infer list`, a completion request, next to bare Python.

    python benchmarks/startup.py [-r 15]

Medians of interleaved runs, whole processes. Writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from common import infer_bin, save, summary, table, timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-r", "--repeat", type=int, default=15)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="infer-startup-")
    env = {**os.environ, "INFER_HOME": home}
    complete_env = {**env, "_INFER_COMPLETE": "complete_bash", "COMP_WORDS": "infer run -m sm", "COMP_CWORD": "3"}
    cases = {
        "python -c pass": ([sys.executable, "-c", "pass"], env),
        "python -c 'import typer, rich'": ([sys.executable, "-c", "import typer, rich"], env),
        "infer --help": ([infer_bin(), "--help"], env),
        "infer list": ([infer_bin(), "list"], env),
        "completion request (infer run -m sm<TAB>)": ([infer_bin()], complete_env),
    }
    times = {name: [] for name in cases}
    for _ in range(args.repeat):
        for name, (cmd, e) in cases.items():
            times[name].append(timed(cmd, env=e)[0])
    rows = [(name, f"{summary(t)['median'] * 1000:.0f}", f"{summary(t)['min'] * 1000:.0f}") for name, t in times.items()]
    print(table(rows, ("whole process", "median ms", "min ms")))
    print(f"\n{args.repeat} interleaved runs each")
    print("saved", save("startup", {name: summary(t) for name, t in times.items()}))


if __name__ == "__main__":
    main()
