"""What this machine has: cores and memory. (GPU backends and fit estimates build on this.)"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from functools import lru_cache


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical cores: llama.cpp decodes fastest with one thread per core, not per hyperthread."""
    logical = os.cpu_count() or 1
    system = platform.system()
    try:
        if system == "Linux":
            cores = set()
            phys = core = None
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("physical id"):
                        phys = line.split(":")[1].strip()
                    elif line.startswith("core id"):
                        core = line.split(":")[1].strip()
                    elif not line.strip():
                        if core is not None:
                            cores.add((phys, core))
                        phys = core = None
            if core is not None:
                cores.add((phys, core))
            if cores:
                return max(1, min(len(cores), _affinity(logical)))
        elif system == "Darwin":
            out = subprocess.run(["sysctl", "-n", "hw.perflevel0.physicalcpu"], capture_output=True, text=True, timeout=2)
            if out.returncode != 0 or not out.stdout.strip():
                out = subprocess.run(["sysctl", "-n", "hw.physicalcpu"], capture_output=True, text=True, timeout=2)
            return max(1, int(out.stdout.strip()))
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return max(1, _affinity(logical))


def _affinity(default: int) -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return default


def total_memory() -> int:
    """Physical memory in bytes (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def available_memory() -> int:
    """Memory available to a new process in bytes (MemAvailable on Linux; total elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return total_memory()


# -- will it fit -------------------------------------------------------------------------------

KV_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
            "q4_1": 20 / 32, "q4_0": 18 / 32}
RUNTIME_OVERHEAD = 60 * 1024 * 1024  # Python, llama.cpp's code and small buffers (calibrated: benchmarks/fit.py)
GPU_MARGIN = 512 * 1024 * 1024  # keep this much VRAM free for the driver and other programs


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv_cache: int
    compute: int  # the activations a run touches (what RSS shows on a CPU)
    compute_reserved: int  # what llama.cpp reserves for a full batch (allocated for real on a GPU)
    overhead: int
    n_layers: int

    @property
    def total(self) -> int:
        """Memory in use when running on the CPU."""
        return self.weights + self.kv_cache + self.compute + self.overhead

    @property
    def gpu_total(self) -> int:
        """VRAM for the whole model on a GPU."""
        return self.weights + self.kv_cache + self.compute_reserved


def estimate(info, weights_bytes: int, n_ctx: int, kv_type: str = "f16", n_ubatch: int = 512,
             n_vocab: int | None = None) -> Estimate:
    """Memory a model needs: weights + KV cache (from GGUF metadata) + compute buffers + runtime."""
    layers = info.block_count or 0
    heads = info.head_count or 1
    kv_heads = info.head_count_kv or heads
    embd = info.embedding_length or 0
    k_dim = info.key_length or (embd // heads if heads else 0)
    v_dim = info.value_length or k_dim
    kv = int(layers * n_ctx * kv_heads * (k_dim + v_dim) * KV_BYTES.get(kv_type, 2.0))
    vocab = n_vocab or info.vocab_size or 32000
    # llama.cpp reserves logits for a whole ubatch plus activations; a CPU run touches the activations
    activations = int(n_ubatch * 16 * embd * 4)
    return Estimate(weights=weights_bytes, kv_cache=kv, compute=activations,
                    compute_reserved=activations + n_ubatch * vocab * 4, overhead=RUNTIME_OVERHEAD, n_layers=layers)


@dataclass(frozen=True)
class Plan:
    gpu_layers: int  # 0 = CPU only
    where: str  # a sentence for --verbose / doctor
    fits: bool


def plan_offload(est: Estimate, gpu_free: int, ram_available: int, requested: int | None = None) -> Plan:
    """How many layers to put on the GPU: all if the model fits, else as many as fit, else none.

    `requested` is the user's --gpu-layers (None/-2 = auto, -1 = all); more layers than the model
    has is clamped. `fits` says whether weights + cache fit in VRAM and RAM together."""
    n = est.n_layers
    fits = est.total <= gpu_free + ram_available
    need = est.gpu_total
    if requested is not None and requested >= 0:
        chosen = min(requested, n + 1)
        return Plan(chosen, f"{chosen} of {n + 1} layers on the GPU (as asked)" if chosen else "CPU (as asked)", fits)
    if requested == -1 or (gpu_free > 0 and need <= gpu_free - GPU_MARGIN):
        if gpu_free <= 0:
            return Plan(0, "CPU (no GPU device found)", fits)
        return Plan(n + 1, f"all {n + 1} layers on the GPU", fits)
    if gpu_free <= GPU_MARGIN or n == 0:
        return Plan(0, "CPU" + ("" if gpu_free > 0 else " (no GPU device found)"), fits)
    per_layer = (est.weights + est.kv_cache) / (n + 1)
    layers = int((gpu_free - GPU_MARGIN - est.compute_reserved) // per_layer) if per_layer > 0 else 0
    layers = max(0, min(layers, n))
    if layers == 0:
        return Plan(0, "CPU (the GPU has too little free memory for one layer)", fits)
    return Plan(layers, f"{layers} of {n + 1} layers on the GPU, the rest on the CPU (partial offload)", fits)
