"""Shared helpers for the benchmark scripts: timing, medians, the test model, result files."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def infer_bin() -> str:
    beside = Path(sys.executable).parent / "infer"
    return str(beside) if beside.exists() else (shutil.which("infer") or "infer")


def test_model() -> Path:
    """The SmolLM2 test model, pulled if needed (same cache as the tests)."""
    cache = Path(os.environ.get("INFER_TEST_CACHE", Path.home() / ".cache" / "infer-tests"))
    env = {**os.environ, "INFER_HOME": str(cache / "home"), "INFER_MODELS": str(cache / "models"),
           "HF_ENDPOINT": os.environ.get("HF_ENDPOINT", "http://127.0.0.1:9")}
    subprocess.run([infer_bin(), "pull", "smollm2", "--quiet"], check=True, env=env)
    out = subprocess.run([infer_bin(), "list", "--json"], check=True, env=env, capture_output=True, text=True).stdout
    return Path(next(m for m in json.loads(out)["models"] if m["name"] == "smollm2")["path"])


def timed(cmd: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}... failed ({proc.returncode}): {proc.stderr[-500:]}")
    return elapsed, proc


def timed_cpu(cmd: list[str], **kw) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child) of a whole process, output discarded."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}... failed ({proc.returncode}): {proc.stderr[-500:]!r}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False))  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


def same_weights(tool: str) -> list[str]:
    """Flags that load a native tool's weights as infer loads them: not repacked where infer keeps weights out of
    llama.cpp's AMX buffers, whose kernels crash (INFER_CPU_AMX in the README); nothing elsewhere."""
    from infer.engine.native import amx_avoided

    if not amx_avoided():
        return []
    return ["--repack", "0"] if tool == "llama-bench" else ["-nr"]
