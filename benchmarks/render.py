"""Chat rendering cost: rendered Markdown vs `--plain`, on a fixed ~900-token Markdown answer.

    python benchmarks/render.py [-r 3] [--threads 1] [--load 0 --load 2] [--e2e]

Each measure runs in a child process whose stdout is a pseudo-terminal (100x40, drained by `cat`):
the answer is tokenized with the real SmolLM2 tokenizer and each token is decoded by the real model
(one llama_decode per token, as in generation; the answer text is fixed, not sampled), then passed
to `infer chat`'s View. Modes, interleaved:

    plain   View with --plain (raw text)
    before  the view as it was: Rich Live refreshing 12x/s, re-parsing the whole answer (a copy)
    after   today's View: cli/markdown.py, finished blocks printed once, only the open block redrawn

--load N runs N CPU-busy processes beside it. The model decodes with --threads (default 1: with
busy processes on a 2-core machine more threads thrash, which measures llama.cpp, not rendering).
Also reported: the render cost alone (no model, tokens fed as fast as possible) in us per token.
--e2e adds `infer chat` in a pty with and without --plain on the real model (tok/s from its
stats line; the answer is whatever the model writes, the same for both at temperature 0).
Writes benchmarks/results/render.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import infer_bin, save, table, test_model

ANSWER = '''\
# A short guide to Python packaging

Packaging a Python project means turning your source tree into something **others can install**
with one command. This guide walks through the modern layout, the `pyproject.toml` file, building,
testing and publishing. It assumes Python 3.10 or newer.

## 1. The project layout

Use the *src layout*: it keeps your tests honest, because they run against the installed package
rather than the files next to them.

```text
myproject/
    pyproject.toml
    README.md
    src/
        mypackage/
            __init__.py
            core.py
    tests/
        test_core.py
```

A few rules of thumb:

- Keep one top-level package per distribution.
- Put tests outside the package, in `tests/`.
- Never import from `tests/` in your library code.
- Add a `README.md`: it becomes the project's page on the index.

## 2. The `pyproject.toml` file

Everything about the build lives in one file. Here is a complete, minimal example:

```toml
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "mypackage"
version = "0.1.0"
description = "A small example package"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["requests>=2.31"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.scripts]
mytool = "mypackage.cli:main"
```

The most common build backends compare like this:

| Backend | Config style | Speed | Notes |
|---------|--------------|------:|-------|
| hatchling | `pyproject.toml` | fast | sensible defaults |
| setuptools | `pyproject.toml` or `setup.cfg` | medium | the oldest, most flexible |
| flit-core | `pyproject.toml` | fast | pure-Python packages only |
| maturin | `pyproject.toml` | slow | Rust extensions |

## 3. Writing the code

A tiny module with a function and a command-line entry point:

```python
"""mypackage.core: the useful part."""

from __future__ import annotations


def mean(values: list[float]) -> float:
    """The arithmetic mean; raises ValueError on an empty list."""
    if not values:
        raise ValueError("mean() of an empty list")
    return sum(values) / len(values)


def main() -> None:
    import sys

    numbers = [float(x) for x in sys.argv[1:]]
    print(f"{mean(numbers):.3f}")
```

## 4. Testing

Install the project in *editable* mode, then run the tests:

1. Create a virtual environment: `python -m venv .venv`
2. Activate it, or call its tools by path.
3. Install with the test extras: `pip install -e '.[test]'`
4. Run `pytest -q`.

A test file can be this short:

```python
import pytest

from mypackage.core import mean


def test_mean_of_three():
    assert mean([1.0, 2.0, 3.0]) == 2.0


def test_mean_of_nothing_fails():
    with pytest.raises(ValueError):
        mean([])
```

> Tip: run the tests against the *built* wheel in CI, not only the editable install. It catches
> files you forgot to include.

## 5. Building and publishing

Build both distributions, check them, then upload:

```sh
python -m pip install build twine
python -m build
twine check dist/*
twine upload dist/*
```

---

That is all you need for most projects. Start small, keep the layout boring, and let the tools do
the rest. Happy packaging!
'''

LEGACY_NOTE = "the View as of main d43780c: Live(refresh_per_second=12) + Markdown(whole answer) at most 12x/s"


def legacy_stream(events):
    """The chat view's Markdown path before cli/markdown.py (copied, for before/after in one run)."""
    from rich.live import Live
    from rich.markdown import Markdown

    from infer.cli import console

    text, shown, last = "", "", 0.0
    with Live(Markdown(""), console=console.out(), refresh_per_second=12, vertical_overflow="visible") as live:
        try:
            for event in events:
                if hasattr(event, "text"):
                    text += event.text
                    now = time.monotonic()
                    if now - last >= 1 / 12:
                        live.update(Markdown(text))
                        shown, last = text, now
                yield event
        finally:
            if text != shown:
                live.update(Markdown(text))


# -- the child: one measure, stdout on the pty --------------------------------------------------

def child(mode: str, threads: int, model_path: str | None, pace: float) -> dict:
    import codecs

    from infer.cli.chat import View
    from infer.engine import Done, LoadOptions, Model, Text

    model = c = None
    if model_path:
        model = Model(Path(model_path), LoadOptions(n_ctx=2048, n_threads=threads))
        tokens = model.tokenize(ANSWER, add_bos=False)
        c = model.ensure_ctx(2048)
        model._decode(c, model.tokenize("Hello", add_bos=True), 0)  # warm up
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pieces = [decoder.decode(model._model.detokenize([t])) for t in tokens]
    else:
        pieces = [ANSWER[k:k + 4] for k in range(0, len(ANSWER), 4)]

    def events():
        for i, piece in enumerate(pieces):
            if model is not None:  # one decode step per token, as in generation (the answer's own tokens)
                model._decode(c, [tokens[i]], len(c.tokens))
            else:  # tokens arriving at `pace` per second, costing no CPU: what is left is the view's
                time.sleep(1 / pace)
            yield Text(piece)
        yield Done(finish_reason="stop", usage=None, timings=None)

    view = View(plain=mode == "plain", quiet=True)
    stream = legacy_stream(events()) if mode == "before" else view.stream(events())
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in stream:
        pass
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"mode": mode, "tokens": len(pieces), "s": elapsed, "cpu_s": cpu, "tps": len(pieces) / elapsed}


def measure(mode: str, threads: int, model_path: str | None, pace: float = 60) -> dict:
    master, slave = pty.openpty()
    import fcntl
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    drain = subprocess.Popen(["cat"], stdin=master, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        cmd = [sys.executable, __file__, "--child", mode, "--threads", str(threads), "--pace", str(pace),
               "--result", result.name]
        if model_path:
            cmd += ["--model", model_path]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, env=env, text=True)
        os.close(slave)
        drain.wait()
        os.close(master)
        if proc.returncode != 0:
            raise SystemExit(f"{mode} failed: {proc.stderr[-2000:]}")
        return json.loads(Path(result.name).read_text())


def busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


# -- end to end: `infer chat` in a pty ---------------------------------------------------------------

PROMPT = "Write a detailed Markdown guide to Python packaging with headings, lists, a table and code blocks."


def chat_tps(plain: bool, threads: int, tokens: int, timeout: float) -> tuple[float | None, int]:
    """(tok/s from the stats line, tokens), or (None, 0) when the answer did not end within `timeout`."""
    import pexpect

    cache = Path(os.environ.get("INFER_TEST_CACHE", Path.home() / ".cache" / "infer-tests"))
    with tempfile.TemporaryDirectory() as home:
        subprocess.run(["cp", "-r", str(cache / "home" / "data"), home], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFER_") and k != "NO_COLOR"}
        env.update({"INFER_HOME": home, "INFER_MODELS": str(cache / "models"), "HF_ENDPOINT": "http://127.0.0.1:9",
                    "TERM": "xterm-256color"})
        args = ["chat", "-m", "smollm2", "-n", str(tokens), "--temperature", "0", "--seed", "1", "-t", str(threads),
                "-c", "2048", *(["--plain"] if plain else [])]
        c = pexpect.spawn(infer_bin(), args, env=env, encoding="utf-8", timeout=120, dimensions=(40, 100))
        try:
            c.expect(">>> ")
            c.sendline(PROMPT)
            c.expect(r"(\d+) tokens · [\d.]+ s to first token · ([\d.]+) tok/s", timeout=timeout)
            n, tps = int(c.match.group(1)), float(c.match.group(2))
            c.expect(">>> ")
            c.sendeof()
            c.expect(pexpect.EOF)
            return tps, n
        except pexpect.TIMEOUT:
            return None, 0
        finally:
            c.close(force=True)


# -- the parent --------------------------------------------------------------------------------------

MODES = ("plain", "before", "after")


def synthetic(args, model: str, loads: list[int]) -> dict:
    out: dict = {"render_only": {}, "model": {}}
    for mode in MODES:  # the view's own CPU time, tokens arriving at --pace without a model
        runs = [measure(mode, args.threads, None, args.pace) for _ in range(args.repeat)]
        out["render_only"][mode] = {"cpu_s": statistics.median(r["cpu_s"] for r in runs),
                                    "wall_s": statistics.median(r["s"] for r in runs), "pieces": runs[0]["tokens"]}
    for load in loads:
        procs = busy(load)
        try:
            runs: dict[str, list] = {m: [] for m in MODES}
            for _ in range(args.repeat):
                for mode in MODES:
                    runs[mode].append(measure(mode, args.threads, model))
                    print(f"busy={load} {mode}: {runs[mode][-1]['tps']:.1f} tok/s", file=sys.stderr, flush=True)
        finally:
            stop(procs)
        out["model"][str(load)] = {m: {"tps": statistics.median(r["tps"] for r in v),
                                       "cpu_s": statistics.median(r["cpu_s"] for r in v),
                                       "tokens": v[0]["tokens"], "runs": v} for m, v in runs.items()}
    return out


def end_to_end(args, loads: list[int]) -> dict:
    out = {}
    for load in loads:
        procs = busy(load)
        try:
            runs: dict[str, list] = {"plain": [], "rendered": []}
            for _ in range(args.e2e_repeat):
                for name in runs:
                    runs[name].append(chat_tps(name == "plain", args.threads, args.e2e_tokens, args.e2e_timeout))
                    print(f"e2e busy={load} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
        finally:
            stop(procs)
        # a run that did not finish counts as 0 tok/s: it was slower than e2e_tokens / e2e_timeout
        out[str(load)] = {k: statistics.median(t or 0.0 for t, _ in v) for k, v in runs.items()}
        out[str(load)]["runs"] = runs
    return out


def report(results: dict, args) -> None:
    print(f"answer: {len(ANSWER)} characters of Markdown (code blocks, lists, a table); model threads {args.threads}")
    if results.get("render_only"):
        r0 = results["render_only"]
        print(f"\nthe view's own CPU time, {r0['plain']['pieces']} pieces arriving at {args.pace:.0f}/s without a model:")
        print(table([(m, f"{r0[m]['cpu_s'] * 1000:.0f}", f"{100 * r0[m]['cpu_s'] / r0[m]['wall_s']:.1f}%")
                     for m in MODES], ("view", "CPU ms", "of the wall time")))
        rows = []
        for load, r in results["model"].items():
            p = r["plain"]
            rows.append((load, p["tokens"], *(f"{r[m]['tps']:.1f}" for m in MODES),
                         *(f"{r[m]['tps'] / p['tps']:.2f}x" for m in ("before", "after")),
                         *(f"{p['cpu_s'] / r[m]['cpu_s']:.2f}x" for m in ("before", "after"))))
        print(f"\nreal model, one decode per token + the view, tok/s (median of {args.repeat} interleaved runs);"
              "\nCPU ratio: plain's CPU time / the view's (less noisy than wall time on a shared machine):")
        print(table(rows, ("busy", "tokens", "plain", "before", "after", "before/plain", "after/plain",
                           "CPU before", "CPU after")))
        print("goal: after/plain >= 0.95x idle, >= 0.90x with two busy processes")
    if results.get("e2e"):
        rows = [(load, f"{r['plain']:.1f}", f"{r['rendered']:.1f}", f"{r['rendered'] / r['plain']:.2f}x" if r["plain"] else "-")
                for load, r in results["e2e"].items()]
        print(f"\n`infer chat` end to end, -n {args.e2e_tokens}, tok/s from the stats line (median of {args.e2e_repeat};"
              f" 0 = not done in {args.e2e_timeout:.0f} s):")
        print(table(rows, ("busy", "--plain", "rendered", "rendered/plain")))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-r", "--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load", type=int, action="append", help="busy processes beside it (repeatable; default 0 and 2)")
    ap.add_argument("--pace", type=float, default=60, help="tokens/s for the view-only measure")
    ap.add_argument("--e2e", action="store_true", help="also `infer chat` with and without --plain on the real model")
    ap.add_argument("--e2e-only", action="store_true", help="only the end-to-end measure (e.g. on an older checkout)")
    ap.add_argument("--e2e-tokens", type=int, default=600)
    ap.add_argument("--e2e-repeat", type=int, default=2)
    ap.add_argument("--e2e-timeout", type=float, default=300, help="seconds for one answer before it counts as 0 tok/s")
    ap.add_argument("--out", default="render", help="results file name (benchmarks/results/NAME.json)")
    ap.add_argument("--child")
    ap.add_argument("--model")
    ap.add_argument("--result")
    args = ap.parse_args()
    if args.child:
        Path(args.result).write_text(json.dumps(child(args.child, args.threads, args.model, args.pace)))
        return
    loads = args.load or [0, 2]
    results: dict = {"note": LEGACY_NOTE, "threads": args.threads}
    if not args.e2e_only:
        results.update(synthetic(args, str(test_model()), loads))
    if args.e2e or args.e2e_only:
        results["e2e"] = end_to_end(args, loads)
    report(results, args)
    print("saved", save(args.out, results))


if __name__ == "__main__":
    main()
