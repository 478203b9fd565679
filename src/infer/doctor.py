"""`doctor`: what will happen if you run a model here. Gathers facts; the CLI renders them."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

from infer import __version__, hardware, settings
from infer.versions import llama_cpp_version


def gpu_hardware() -> str | None:
    """GPU hardware present on this machine, whatever llama.cpp was built with."""
    if shutil.which("nvidia-smi") or Path("/proc/driver/nvidia/version").exists():
        return "nvidia"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "apple"
    return None


REINSTALL = {
    "nvidia": 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python',
    "apple": 'CMAKE_ARGS="-DGGML_METAL=on" pip install --force-reinstall --no-cache-dir llama-cpp-python',
}


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            if not p.is_symlink():
                try:
                    total += p.stat().st_size
                except OSError:
                    pass
    return total


def report(model: str | None = None, n_ctx: int | None = None, kv_type: str = "f16") -> dict:
    from infer import engine, store

    offload = engine.supports_gpu_offload()
    devices = engine.devices()
    gpus = [d for d in devices if d.kind in ("gpu", "igpu")]
    hw = gpu_hardware()
    features = engine.system_info()
    advice = []
    if hw and not offload:
        advice.append(f"this machine has a {'NVIDIA' if hw == 'nvidia' else 'Apple'} GPU but this llama.cpp build "
                      f"has no GPU backend; to use it: {REINSTALL[hw]}")
    elif offload and not gpus:
        advice.append("this llama.cpp build has a GPU backend but found no GPU: models run on the CPU")
    paths = {"config": settings.config_dir(), "data": settings.data_dir(), "state": settings.state_dir(),
             "models": settings.models_dir(), "prompt_cache": settings.prompt_cache_dir()}
    data = {
        "infer": __version__, "llama_cpp_python": llama_cpp_version(), "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu": {"physical_cores": hardware.physical_cores(), "logical_cpus": os.cpu_count(),
                "features": [f.split(" = ")[0].split(":")[-1].strip() for f in features.split("|")
                             if f.strip().endswith("= 1")]},
        "memory": {"total": hardware.total_memory(), "available": hardware.available_memory()},
        "gpu_offload": offload, "gpu_hardware": hw,
        "devices": [{"name": d.name, "description": d.description, "kind": d.kind, "free": d.free, "total": d.total}
                    for d in devices],
        "paths": {k: {"path": str(v), "size": _dir_size(v) if v.exists() else 0} for k, v in paths.items()},
        "pulled_models": len(store.Manifest().all()),
        "hub": {"endpoint": settings.hf_endpoint(), "token": "set" if _token_present() else "not set",
                "offline": settings.offline()},
        "advice": advice,
    }
    if model:
        data["model"] = _model_plan(model, n_ctx, kv_type, gpus)
    return data


def _token_present() -> bool:
    from infer.sources.hf import token

    return bool(token())


def _model_plan(model: str, n_ctx: int | None, kv_type: str, gpus) -> dict:
    from infer import complete, resolve
    from infer.errors import ModelNotFound
    from infer.gguf_meta import read_info

    found = resolve.find_local(model)
    if found is None:
        raise ModelNotFound(f"{model} is not pulled", hint=f"`infer pull {model}` first; doctor never downloads")
    info = read_info(found.path)
    ctx = n_ctx or min(info.context_length or 4096, 4096)
    size = complete.model_files_size(found.path)
    est = hardware.estimate(info, size, ctx, kv_type)
    gpu_free = sum(d.free for d in gpus)
    plan = hardware.plan_offload(est, gpu_free, hardware.available_memory())
    return {"name": found.name, "path": str(found.path), "n_ctx": ctx, "kv_type": kv_type, "layers": est.n_layers + 1,
            "estimate": {"weights": est.weights, "kv_cache": est.kv_cache, "compute": est.compute,
                         "compute_reserved_gpu": est.compute_reserved, "runtime": est.overhead, "total": est.total},
            "plan": {"gpu_layers": plan.gpu_layers, "where": plan.where, "fits": plan.fits}}
