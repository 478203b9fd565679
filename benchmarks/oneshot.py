"""One-shot wall time: `infer run` vs a minimal llama-cpp-python script, same model, prompt, tokens.

    python benchmarks/oneshot.py [-r 7] [-n 32]

Both are whole processes started from scratch (what a shell script pays), interleaved, greedy,
with the same thread count. Prints a table and writes benchmarks/results/oneshot.json.
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
    args = ap.parse_args()
    from infer.hardware import physical_cores

    threads = args.threads or physical_cores()
    model = str(test_model())
    infer_cmd = [infer_bin(), "run", "-m", model, "--temperature", "0", "-n",
                 str(args.tokens), "-t", str(threads), "--json", PROMPT]
    script_cmd = [sys.executable, "-c", MINIMAL, model, PROMPT, str(threads), str(args.tokens)]
    infer_s, script_s, gen = [], [], []
    for _ in range(args.repeat):
        t, proc = timed(infer_cmd)
        infer_s.append(t)
        gen.append(json.loads(proc.stdout)["timings"]["gen_tps"])
        t, _ = timed(script_cmd)
        script_s.append(t)
    a, b = summary(infer_s), summary(script_s)
    rows = [("infer run", f"{a['median']:.3f}", f"{a['min']:.3f}-{a['max']:.3f}"),
            ("llama-cpp-python script", f"{b['median']:.3f}", f"{b['min']:.3f}-{b['max']:.3f}")]
    print(table(rows, ("one-shot, whole process", "median s", "range s")))
    ratio = a["median"] / b["median"]
    print(f"\ninfer / minimal script = {ratio:.2f}x   (infer decode: median {summary(gen)['median']:.1f} tok/s, "
          f"{threads} threads, {args.tokens} tokens, {args.repeat} interleaved runs)")
    print("saved", save("oneshot", {"infer_s": a, "script_s": b, "ratio": ratio, "gen_tps": summary(gen),
                                    "threads": threads, "tokens": args.tokens}))


if __name__ == "__main__":
    main()
