"""Start-up cost: `infer --help`, `--version`, `infer list`, a completion request, next to bare Python.

    python benchmarks/startup.py [-r 15]

Medians of interleaved runs, whole processes: wall time, and CPU time (user + system of the child),
which a busy machine inflates less. Goals: `infer --help` <= 1.15x `python -c "import typer"`,
`infer --version` <= 0.08 s. Writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from common import infer_bin, save, summary, table, timed_cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-r", "--repeat", type=int, default=15)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="infer-startup-")
    env = {**os.environ, "INFER_HOME": home}
    complete_env = {**env, "_INFER_COMPLETE": "complete_bash", "COMP_WORDS": "infer run -m sm", "COMP_CWORD": "3"}
    cases = {
        "python -c pass": ([sys.executable, "-c", "pass"], env),
        "python -c 'import typer'": ([sys.executable, "-c", "import typer"], env),
        "infer --help": ([infer_bin(), "--help"], env),
        "infer --help, 60 columns (through Typer)": ([infer_bin(), "--help"], {**env, "COLUMNS": "60"}),
        "infer --version": ([infer_bin(), "--version"], env),
        "infer run --help": ([infer_bin(), "run", "--help"], env),
        "infer list": ([infer_bin(), "list"], env),
        "completion request (infer run -m sm<TAB>)": ([infer_bin()], complete_env),
    }
    times = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    for _ in range(args.repeat):
        for name, (cmd, e) in cases.items():
            wall, used = timed_cpu(cmd, env=e)
            times[name].append(wall)
            cpu[name].append(used)
    typer = "python -c 'import typer'"
    rows = []
    for name in cases:
        w, c = summary(times[name]), summary(cpu[name])
        rows.append((name, f"{w['median'] * 1000:.0f}", f"{w['min'] * 1000:.0f}", f"{c['median'] * 1000:.0f}",
                     f"{w['median'] / summary(times[typer])['median']:.2f}",
                     f"{c['median'] / summary(cpu[typer])['median']:.2f}"))
    print(table(rows, ("whole process", "median ms", "min ms", "CPU ms", "/ import typer", "CPU / import typer")))
    print(f"\n{args.repeat} interleaved runs each; goals: --help <= 1.15x import typer, --version <= 80 ms")
    print("saved", save("startup", {name: {"wall": summary(times[name]), "cpu": summary(cpu[name])} for name in cases}))


if __name__ == "__main__":
    main()
