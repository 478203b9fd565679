"""What this machine has: cores and memory, how busy its CPUs are, and the thread count to use.
(GPU backends and fit estimates build on this.)"""

from __future__ import annotations

import os
import platform
import subprocess
import time
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


# -- threads on a busy machine -----------------------------------------------------------------
# llama.cpp's CPU threads meet at a barrier after every operation, hundreds of times per token.
# With more threads than free cores, a thread waits at a barrier for one that the kernel has
# descheduled: decoding fell from ~100 to ~1 tok/s with one busy process beside it on 2 cores.
# So the default is the cores other programs leave free, measured across the model load (which
# takes that long anyway), and the OpenMP threads wait at barriers without burning a core.

BUSY_THRESHOLD = 0.5  # a core counts as taken when other programs used more than half of it
MIN_WINDOW_S = 0.25  # a newer decision needs at least this much new sampling; sooner, the last one stands


@dataclass(frozen=True)
class CpuSample:
    wall: float  # time.monotonic()
    busy: float  # CPU-seconds the CPUs we may run on have spent busy (all programs)
    own: float  # CPU-seconds this process has used (all its threads)
    tick: float = 0.0  # the counters' resolution: one clock tick on each of those CPUs, in CPU-seconds


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    why: str  # for --verbose: "INFER_THREADS", "2 physical cores, 1 busy with other programs", ...


def cpu_sample() -> CpuSample | None:
    """Busy time of the CPUs this process may use, from /proc/stat (Linux); None elsewhere."""
    wall, own = time.monotonic(), time.process_time()
    try:
        allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        hz = os.sysconf("SC_CLK_TCK")
        busy = 0
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if not line.startswith("cpu"):
                    break
                fields = line.split()
                if fields[0] in allowed:  # user nice system idle iowait irq softirq steal
                    busy += sum(int(v) for i, v in enumerate(fields[1:9]) if i not in (3, 4))
    except (AttributeError, OSError, ValueError):
        return None
    return CpuSample(wall=wall, busy=busy / hz, own=own, tick=len(allowed) / hz)


def busy_cores(before: CpuSample, after: CpuSample) -> float:
    """How many cores other programs kept busy between two samples: this process's own time and
    what the clock-tick counters cannot resolve are left out (a short window proves little)."""
    elapsed = after.wall - before.wall
    if elapsed <= 0:
        return 0.0
    return max(0.0, (after.busy - before.busy - (after.own - before.own) - after.tick) / elapsed)


def choose_threads(physical: int, busy: float) -> int:
    """Physical cores minus those other programs keep busy, at least one."""
    return max(1, physical - int(busy + (1 - BUSY_THRESHOLD)))


_since: dict = {"sample": cpu_sample(), "choice": None}  # sampling starts when the engine imports this


def thread_choice() -> ThreadChoice:
    """The thread count when -t is not given: INFER_THREADS, else the physical cores that other
    programs left free since the last decision (at first: since infer started loading)."""
    from infer import settings

    value = settings.INFER_THREADS.get()
    if value is not None:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            from infer.errors import UsageError

            raise UsageError(f"INFER_THREADS must be a whole number of threads, 1 or more, not {value!r}")
        _since["choice"] = ThreadChoice(n, "INFER_THREADS")
        return _since["choice"]
    now, before, last = cpu_sample(), _since["sample"], _since["choice"]
    if last is not None and (now is None or before is None or now.wall - before.wall < MIN_WINDOW_S):
        return last
    physical = physical_cores()
    if now is None or before is None:
        choice = ThreadChoice(physical, f"{physical} physical cores")
    else:
        busy = busy_cores(before, now)
        n = choose_threads(physical, busy)
        taken = physical - n
        choice = ThreadChoice(n, f"{physical} physical cores" + (f", {taken} busy with other programs" if taken else ""))
    _since.update(sample=now, choice=choice)
    return choice


def default_threads() -> int:
    return thread_choice().threads


def last_thread_choice() -> ThreadChoice | None:
    """The default this process decided last (what the engine used when -t was not given)."""
    return _since["choice"]


def threads_note(given: int | None) -> str:
    """What the engine used, for --verbose: "2 (-t)", "1 (INFER_THREADS)", "1 (2 physical cores, 1 busy ...)"."""
    choice = _since["choice"]
    if given:
        return f"{given} (-t)"
    return f"{choice.threads} ({choice.why})" if choice else "not chosen yet"


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


# -- how fast will it decode -------------------------------------------------------------------

DECODE_EFFICIENCY = 0.75  # share of one-thread copy bandwidth that CPU decoding reaches (calibrated: benchmarks/rpc.py)


def memory_bandwidth(size: int = 32 << 20, repeats: int = 3) -> float:
    """Bytes per second one thread copies in memory (the best of a few copies of `size` bytes): CPU decoding
    reads every weight once per token, so this bounds its speed. About 0.05 s."""
    import time

    src, dst = bytearray(b"\1") * size, bytearray(size)
    view_src, view_dst = memoryview(src), memoryview(dst)
    view_dst[:] = view_src  # touch every page first
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        view_dst[:] = view_src
        best = min(best, time.perf_counter() - t0)
    return size / best if best > 0 else 0.0


def decode_estimate(weights_bytes: int, bandwidth: float | None = None) -> float:
    """Decode tokens/s on this machine's CPU, estimated from its copy bandwidth (a prediction, not a measurement)."""
    bandwidth = memory_bandwidth() if bandwidth is None else bandwidth
    return bandwidth * DECODE_EFFICIENCY / weights_bytes if weights_bytes > 0 else 0.0
