"""Fit and offload decisions: unit tests with fixed hardware descriptions, plus the real CPU path."""

from __future__ import annotations

import json

import pytest

from infer.gguf_meta import GGUFInfo
from infer.hardware import Estimate, estimate, plan_offload

GB = 1_000_000_000


def est(weights=4 * GB, kv=1 * GB, layers=32) -> Estimate:
    return Estimate(weights=weights, kv_cache=kv, compute=100_000_000, compute_reserved=500_000_000,
                    overhead=60_000_000, n_layers=layers)


def test_everything_on_the_gpu_when_it_fits():
    p = plan_offload(est(), gpu_free=24 * GB, ram_available=16 * GB)
    assert p.gpu_layers == 33 and p.fits and "all 33" in p.where


def test_partial_offload_when_vram_is_short():
    p = plan_offload(est(), gpu_free=3 * GB, ram_available=16 * GB)
    assert 0 < p.gpu_layers < 33 and "partial" in p.where
    more = plan_offload(est(), gpu_free=4 * GB, ram_available=16 * GB)
    assert more.gpu_layers > p.gpu_layers


def test_cpu_without_gpu_and_when_nothing_fits():
    assert plan_offload(est(), gpu_free=0, ram_available=16 * GB).gpu_layers == 0
    assert plan_offload(est(), gpu_free=600_000_000, ram_available=16 * GB).gpu_layers == 0
    assert not plan_offload(est(weights=40 * GB), gpu_free=8 * GB, ram_available=16 * GB).fits


def test_requested_layers_are_respected_and_clamped():
    assert plan_offload(est(), gpu_free=24 * GB, ram_available=16 * GB, requested=0).gpu_layers == 0
    assert plan_offload(est(), gpu_free=24 * GB, ram_available=16 * GB, requested=10).gpu_layers == 10
    assert plan_offload(est(), gpu_free=24 * GB, ram_available=16 * GB, requested=999).gpu_layers == 33


def test_kv_cache_follows_the_metadata():
    info = GGUFInfo(path=None, block_count=32, head_count=32, head_count_kv=8, embedding_length=4096, vocab_size=128256)
    f16 = estimate(info, 4 * GB, 8192, "f16")
    assert f16.kv_cache == 32 * 8192 * 8 * (128 + 128) * 2  # Llama-3-8B at 8K: 1 GiB
    assert estimate(info, 4 * GB, 8192, "q8_0").kv_cache < f16.kv_cache * 0.6


@pytest.mark.model
def test_real_model_estimate_and_doctor(pulled, smollm2):
    from infer.gguf_meta import read_info

    info = read_info(smollm2.path)
    assert estimate(info, smollm2.path.stat().st_size, 8192).kv_cache == 30 * 8192 * 3 * (64 + 64) * 2
    proc = pulled("doctor", "-m", "smollm2", "-c", "8192", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["cpu"]["physical_cores"] >= 1 and data["memory"]["total"] > 0
    assert any(d["kind"] == "cpu" for d in data["devices"])
    assert data["hub"]["token"] == "not set" and data["pulled_models"] == 1
    assert data["model"]["estimate"]["kv_cache"] == 188_743_680 and data["model"]["layers"] == 31
    assert data["model"]["plan"]["fits"]
    if data["gpu_offload"]:  # a GPU build (Metal, CUDA): as many layers as the device holds
        assert 0 <= data["model"]["plan"]["gpu_layers"] <= data["model"]["layers"]
    else:
        assert data["model"]["plan"]["gpu_layers"] == 0
    text = pulled("doctor", "-m", "smollm2").stdout
    assert "KV cache" in text and "plan" in text
    secret = pulled("doctor", "--json", env={"HF_TOKEN": "hf_supersecret"})
    assert "hf_supersecret" not in secret.stdout and json.loads(secret.stdout)["hub"]["token"] == "set"


def test_doctor_says_which_weight_buffers_loads_use_and_why_amx_is_left_out(infer):
    """The installed doctor on this machine's build: where the CPU backend offers llama.cpp's AMX buffer (whose
    kernels crash), loads repack nothing and doctor says how to opt in; elsewhere they use what the build offers."""
    opted = json.loads(infer("doctor", "--json", env={"INFER_CPU_AMX": "1"}, check=True).stdout)
    offered = opted["cpu"]["weight_buffers"]  # with AMX allowed: every buffer the build offers on this CPU
    assert isinstance(offered, list) and all(isinstance(b, str) and b for b in offered)
    plain = json.loads(infer("doctor", "--json", check=True).stdout)
    amx_advice = [a for a in plain["advice"] if "INFER_CPU_AMX=1" in a]
    if "AMX" in offered:
        assert plain["cpu"]["weight_buffers"] == [] and len(amx_advice) == 1
    else:
        assert plain["cpu"]["weight_buffers"] == offered and not amx_advice
    assert not [a for a in opted["advice"] if "INFER_CPU_AMX=1" in a]


def _gpu_build() -> bool:
    from infer import engine

    return engine.supports_gpu_offload()


@pytest.mark.model
def test_gpu_options_on_a_cpu_build(infer, smollm2):
    if _gpu_build():
        pytest.skip("a GPU build of llama-cpp-python: tests/test_gpu.py covers it")
    proc = infer("run", "-m", smollm2.path, "-n", "4", "--gpu-layers", "-1", "--stats", "hi")
    assert proc.returncode == 0
    assert "no GPU backend: running on the CPU" in proc.stderr and "running on: CPU" in proc.stderr


@pytest.mark.model
def test_memory_and_gpu_options_on_any_build(infer, smollm2):
    assert infer("run", "-m", smollm2.path, "-n", "4", "--kv-type", "q8_0", "--no-mmap", "hi").returncode == 0
    assert infer("run", "-m", smollm2.path, "--gpu-layers", "lots", "hi").returncode == 2
    assert infer("run", "-m", smollm2.path, "--kv-type", "q8_0", "--flash-attn", "off", "hi").returncode == 2


def test_pull_refuses_a_model_too_big_to_run_and_auto_picks_what_fits(fault_hub, infer):
    from ggufs import write_gguf
    import tempfile
    from pathlib import Path

    repo = "acme/big-GGUF"
    with tempfile.TemporaryDirectory() as tmp:
        small = fault_hub.add(repo, "m-Q4_K_M.gguf", write_gguf(Path(tmp) / "s.gguf", "small"))
    fault_hub.state.extra_listing[repo] = [{"type": "file", "oid": "1" * 40, "size": 10**15, "path": "m-Q8_0.gguf",
                                            "lfs": {"oid": "b" * 64, "size": 10**15, "pointerSize": 130}}]
    env = {"HF_ENDPOINT": fault_hub.url}
    proc = infer("pull", f"{repo}:Q8_0", env=env)
    assert proc.returncode == 8 and "cannot run here" in proc.stderr and "Q4_K_M" in proc.stderr
    auto = infer("pull", f"{repo}:auto", env=env)
    assert auto.returncode == 0, auto.stderr
    assert small.bytes_sent == len(small.data)
