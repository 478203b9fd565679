"""GPU tests: run only on a GPU build of llama-cpp-python with a GPU and a model in INFER_TEST_GPU_MODEL
(benchmarks/cuda_h100.sh runs them on the H100). Elsewhere they are skipped."""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.gpu


def _gpu_ready() -> bool:
    try:
        from infer import engine

        return engine.supports_gpu_offload() and any(d.kind == "gpu" for d in engine.devices())
    except Exception:
        return False


MODEL = os.environ.get("INFER_TEST_GPU_MODEL", "")
needs_gpu = pytest.mark.skipif(not (MODEL and _gpu_ready()), reason="needs a GPU build, a GPU and INFER_TEST_GPU_MODEL")


@needs_gpu
def test_doctor_sees_the_gpu_and_plans_full_offload(infer):
    data = json.loads(infer("doctor", "-m", MODEL, "--json").stdout)
    assert data["gpu_offload"] is True
    gpus = [d for d in data["devices"] if d["kind"] == "gpu"]
    assert gpus and gpus[0]["total"] > 0
    assert data["model"]["plan"]["gpu_layers"] == data["model"]["layers"]


@needs_gpu
def test_run_offloads_every_layer(infer):
    proc = infer("run", "-m", MODEL, "--raw", "-n", "8", "--stats", "Once upon a time")
    assert proc.returncode == 0, proc.stderr
    assert "running on: all" in proc.stderr and "layers on the GPU" in proc.stderr


@needs_gpu
def test_explicit_layer_count_and_cpu_only(infer):
    assert "running on: 4 of" in infer("run", "-m", MODEL, "--raw", "-n", "4", "-ngl", "4", "-v", "x").stderr
    assert "running on: CPU (as asked)" in infer("run", "-m", MODEL, "--raw", "-n", "4", "-ngl", "0", "--stats", "x").stderr


# Run in a child process: in the test process itself, this load segfaulted inside llama_model_load_from_file on the
# H100 (2026-12-07, before AMX weights were avoided; the cause was not found), which ended the whole pytest run.
_ARGMAX_CHILD = r"""
import json, sys
from pathlib import Path

from infer import complete
from infer.engine import LoadOptions, Sampling
from infer.engine import backend as engine_backend
from infer.engine.scheduler import Request
from infer.resolve import Resolved

model = complete.load(Resolved(Path(sys.argv[1]), "gpu-test"), LoadOptions(n_gpu_layers=-1, n_ctx=256))
try:
    n = 96  # rows a step: over ARGMAX_SPLIT logits even with a 49k vocabulary
    sched = model.scheduler(n, 128)
    seen = []
    parts = engine_backend.argmax_parts
    engine_backend.argmax_parts = lambda rows, n_vocab, on_gpu: seen.append(on_gpu) or parts(rows, n_vocab, on_gpu)
    sampling = Sampling(temperature=0, max_tokens=4, ignore_eos=True)
    with sched._cond:  # admitted together: n greedy rows a step
        handles = [sched.submit(Request([1 + i, 2, 3], sampling, id=str(i))) for i in range(n)]
    done = sum(1 for h in handles for e in h if type(e).__name__ == "Done")
    print(json.dumps({"where": model.where, "offloaded": model.offloaded, "seen": seen, "done": done,
                      "pool": sched.backend._pool is not None, "threads": engine_backend.ARGMAX_THREADS}))
finally:
    model.close()
"""


@needs_gpu
def test_a_model_loaded_as_the_commands_load_it_shares_a_large_argmax_among_threads():
    """`infer batch` and `serve` load through complete.load, which sets `where` to a sentence for people: the choice
    to split a step's argmax among threads must not hang on it (it did, and every command ran it on one thread)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _ARGMAX_CHILD, MODEL], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["where"] != "GPU" and got["offloaded"]
    assert got["done"] == 96
    assert got["seen"] and all(got["seen"])
    assert got["pool"] == (got["threads"] > 1)  # split where cores allow
