"""`doctor`: what will happen if you run a model here. Gathers facts; the CLI renders them."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

from infer import __version__, hardware, settings
from infer.errors import InferError
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


def report(model: str | None = None, n_ctx: int | None = None, kv_type: str = "f16", rpc: str | None = None) -> dict:
    from infer import engine, store
    from infer import rpc as rpc_mod
    from infer.engine import rpc as engine_rpc

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
    from infer.engine.native import amx_avoided, cpu_weight_buffers

    amx_off = amx_avoided()
    if amx_off:
        advice.append("this CPU has AMX, whose llama.cpp kernels crash (ggml-org/llama.cpp#20824): weights are not "
                      "repacked for it or for the other CPU kernels (INFER_CPU_AMX=1 repacks them anyway)")
    paths = {"config": settings.config_dir(), "data": settings.data_dir(), "state": settings.state_dir(),
             "models": settings.models_dir(), "prompt_cache": settings.prompt_cache_dir()}
    data = {
        "infer": __version__, "llama_cpp_python": llama_cpp_version(), "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu": {"physical_cores": hardware.physical_cores(), "logical_cpus": os.cpu_count(),
                "features": [f.split(" = ")[0].split(":")[-1].strip() for f in features.split("|")
                             if f.strip().endswith("= 1")],
                "weight_buffers": [] if amx_off else cpu_weight_buffers()},  # used by loads
        "memory": {"total": hardware.total_memory(), "available": hardware.available_memory()},
        "gpu_offload": offload, "gpu_hardware": hw,
        "devices": [{"name": d.name, "description": d.description, "kind": d.kind, "free": d.free, "total": d.total}
                    for d in devices],
        "paths": {k: {"path": str(v), "size": _dir_size(v) if v.exists() else 0} for k, v in paths.items()},
        "pulled_models": len(store.Manifest().all()),
        "hub": {"endpoint": settings.hf_endpoint(), "token": "set" if _token_present() else "not set",
                "offline": settings.offline()},
        "advice": advice,
        "rpc": {"available": engine_rpc.supported(), "protocol": rpc_mod.version_text(rpc_mod.local_version())},
    }
    if not data["rpc"]["available"]:
        data["rpc"]["enable"] = 'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
    workers = []
    if rpc:
        for endpoint in rpc_mod.parse_endpoints(rpc):
            entry: dict = {"endpoint": str(endpoint)}
            try:
                w = rpc_mod.probe(endpoint)
                entry.update(protocol=rpc_mod.version_text(w.version), rtt_ms=round(w.rtt_s * 1e3, 3),
                             bandwidth=round(w.bandwidth), devices=[{"free": f, "total": t} for f, t in w.memory])
                workers.append(w)
            except InferError as e:
                entry["error"] = e.message
            data.setdefault("workers", []).append(entry)
    if model:
        data["model"] = _model_plan(model, n_ctx, kv_type, gpus, workers)
    return data


def _token_present() -> bool:
    from infer.sources.hf import token

    return bool(token())


def _model_plan(model: str, n_ctx: int | None, kv_type: str, gpus, workers=()) -> dict:
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
            "plan": {"gpu_layers": plan.gpu_layers, "where": plan.where, "fits": plan.fits},
            **({"rpc": _rpc_fit(est, info, size, gpus, workers)} if workers else {})}


def _rpc_fit(est, info, size: int, gpus, workers) -> dict:
    """The model across this machine and the reachable workers: does it fit, and the predicted speeds."""
    from infer import rpc

    local_free = hardware.available_memory() + sum(d.free for d in gpus)
    pooled = local_free + sum(w.free for w in workers)
    p = rpc.predict(hardware.decode_estimate(size), list(workers), info.embedding_length or 4096, info.block_count or 32)
    return {"workers": len(workers), "free_together": pooled, "fits": est.total <= pooled,
            "fits_locally": est.total <= local_free, "predicted_tps": round(p.split_tps, 1),
            "local_tps": round(p.local_tps, 1)}
