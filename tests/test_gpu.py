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
