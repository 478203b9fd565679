"""Prompt cache: time to first token for a ~2,000-token shared prefix, with and without a hit.

    python benchmarks/prompt_cache.py [-r 3] [-t THREADS]

  - disk: whole-process `infer run --cache --json` (ttft_s, which includes reading the entry) with a
    hit, against `--no-cache` on the same document and question, interleaved;
  - memory: the engine's scheduler, a request sharing the prefix with the slot's last one (what chat,
    batch and the server get), against the same request on an emptied slot;
  - the cost of writing an entry: seconds and bytes per token;
  - chat: a 6-turn conversation through `infer serve` (the OpenAI way: each turn re-sends the whole
    history, ~350 tokens more per turn), time to the first streamed token per turn; goal: turn 6
    within 1.3x of turn 1, where re-reading the history would make it ~6x.
Results: a table and benchmarks/results/prompt_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import infer_bin, save, table, test_model  # noqa: E402

WORDS = "river mountain city report budget quarter growth revenue team product market north south".split()


def document(seed: int, lines: int = 150) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(lines)) + "\n"


def run(env: dict, doc: str, question: str, *args: str) -> dict:
    proc = subprocess.run([infer_bin(), "run", "-m", "smollm2", "--temperature", "0", "-n", "4", "--json", *args,
                           question], input=doc, capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout)


def disk(threads: int, repeat: int) -> dict:
    cache = Path(os.environ.get("INFER_TEST_CACHE", Path.home() / ".cache" / "infer-tests"))
    home = Path(tempfile.mkdtemp())
    (home / "data").mkdir(parents=True)
    (home / "data" / "manifest.json").write_text((cache / "home" / "data" / "manifest.json").read_text())
    env = {**os.environ, "INFER_HOME": str(home), "INFER_MODELS": str(cache / "models"), "INFER_THREADS": str(threads),
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    hit, miss, write, sizes = [], [], [], []
    for r in range(repeat):
        doc = document(r)
        t0 = time.perf_counter()
        first = run(env, doc, "Summarize.", "--cache")  # a miss that writes the entry
        write.append(time.perf_counter() - t0)
        entry = max((home / "cache" / "prompts").glob("*.kv"), key=lambda p: p.stat().st_mtime)
        sizes.append(entry.stat().st_size / first["usage"]["prompt_tokens"])
        miss.append(run(env, doc, "List the words.", "--no-cache")["timings"]["ttft_s"])
        got = run(env, doc, "List the words.", "--cache")
        assert got["usage"]["cached_tokens"] > 0, got["usage"]
        hit.append(got["timings"]["ttft_s"])
    return {"miss_ttft_s": statistics.median(miss), "hit_ttft_s": statistics.median(hit),
            "speedup": statistics.median(miss) / statistics.median(hit), "bytes_per_token": statistics.median(sizes),
            "first_run_with_write_s": statistics.median(write)}


def memory(threads: int, repeat: int) -> dict:
    from infer.engine import Done, LoadOptions, Model, Sampling

    model = Model(test_model(), LoadOptions(n_threads=threads))
    try:
        hits, misses = [], []
        for r in range(repeat):
            doc = document(100 + r)
            msgs = lambda q: [{"role": "user", "content": f"{doc}\n\n{q}"}]  # noqa: E731
            first = model.format_chat(msgs("Summarize."))[1]
            second = model.format_chat(msgs("List the words."))[1]
            sampling = Sampling(temperature=0, max_tokens=1)
            [e for e in model.generate(first, sampling)]
            done = [e for e in model.generate(second, sampling) if isinstance(e, Done)][0]
            assert done.usage.cached_tokens > 1000
            hits.append(done.timings.ttft_s)
            model._sched.slot_tokens[0].clear()
            model._sched.backend.forget(0, 0)
            done = [e for e in model.generate(second, sampling) if isinstance(e, Done)][0]
            misses.append(done.timings.ttft_s)
        return {"miss_ttft_s": statistics.median(misses), "hit_ttft_s": statistics.median(hits),
                "speedup": statistics.median(misses) / statistics.median(hits)}
    finally:
        model.close()


def chat(threads: int, repeat: int) -> dict:
    """Per-turn TTFT of a 6-turn chat through `infer serve`, each turn adding ~350 tokens of user text."""
    import urllib.request

    from serve import start_infer, stop

    proc, port = start_infer(test_model(), 1, 4096, threads, 0)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        ratios, per_turn = [], []
        for r in range(repeat):
            messages = [{"role": "system", "content": "You answer in one short sentence."}]
            ttfts = []
            for turn in range(6):
                messages.append({"role": "user", "content": document(1000 * r + turn, 25) + "\nWhich word is first?"})
                body = json.dumps({"model": "smollm2", "messages": messages, "max_tokens": 8, "temperature": 0,
                                   "stream": True}).encode()
                t0 = time.perf_counter()
                first, text = None, []
                with urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"})) as resp:
                    for line in resp:
                        line = line.strip()
                        if not line.startswith(b"data: ") or line == b"data: [DONE]":
                            continue
                        delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                        if delta:
                            first = first or time.perf_counter() - t0
                            text.append(delta)
                ttfts.append(first)
                messages.append({"role": "assistant", "content": "".join(text)})
            per_turn.append(ttfts)
            ratios.append(ttfts[-1] / ttfts[0])
        turns = [statistics.median(t[i] for t in per_turn) for i in range(6)]
        return {"turn_ttft_s": turns, "turn6_over_turn1": statistics.median(ratios)}
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-r", "--repeat", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()
    test_model()
    d = disk(args.threads, args.repeat)
    m = memory(args.threads, args.repeat)
    c = chat(args.threads, args.repeat)
    rows = [("disk (infer run --cache)", f"{d['miss_ttft_s'] * 1000:.0f}", f"{d['hit_ttft_s'] * 1000:.0f}",
             f"{d['speedup']:.1f}x", "20x"),
            ("memory (scheduler slot)", f"{m['miss_ttft_s'] * 1000:.0f}", f"{m['hit_ttft_s'] * 1000:.0f}",
             f"{m['speedup']:.1f}x", "50x")]
    print(table(rows, ("where", "miss ttft ms", "hit ttft ms", "speedup", "goal")))
    print(f"entry: {d['bytes_per_token'] / 1024:.1f} KiB per token; first run (miss + write) "
          f"{d['first_run_with_write_s']:.2f} s whole process")
    print("chat through infer serve, TTFT per turn (ms): " + " ".join(f"{t * 1000:.0f}" for t in c["turn_ttft_s"]) +
          f"; turn 6 / turn 1 = {c['turn6_over_turn1']:.2f} (goal <= 1.3)")
    print("saved", save("prompt_cache", {"threads": args.threads, "disk": d, "memory": m, "chat": c}))


if __name__ == "__main__":
    main()
