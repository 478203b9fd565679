"""llama.cpp's libraries: importing llama_cpp with its logging captured, Ctrl-C while C code runs, and ggml's
backend registry through ctypes (the devices, the CPU's weight buffers, the RPC workers' registration state)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path


def _llama():
    """Import llama_cpp with its native logging silenced until we choose otherwise."""
    import llama_cpp

    _install_log_sink(llama_cpp)
    return llama_cpp


_LOG = {"verbose": False, "callback": None, "lines": []}


class _DeferredInterrupt:
    """Ctrl-C while llama.cpp loads: a KeyboardInterrupt raised inside a ctypes callback (llama.cpp
    logs through Python callbacks) is swallowed by ctypes. So while C code runs, SIGINT only sets a
    flag; the load's progress callback sees it and cancels the load; on exit, KeyboardInterrupt."""

    def __init__(self):
        self.hit = False
        self._prev = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            prev = signal.getsignal(signal.SIGINT)
            if prev not in (signal.SIG_IGN, signal.SIG_DFL, None):
                self._prev = prev
                signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, signum, frame):  # noqa: ARG002 - signal handler signature
        self.hit = True

    def __exit__(self, *exc):
        import signal

        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)
        if self.hit:
            raise KeyboardInterrupt
        return False


def _install_log_sink(llama_cpp) -> None:
    if _LOG["callback"] is not None:
        return

    @llama_cpp.llama_log_callback
    def sink(level, text, user_data):  # noqa: ARG001 - signature fixed by ggml
        try:
            msg = text.decode("utf-8", "replace")
            if _LOG["verbose"]:
                import sys

                sys.stderr.write(msg)
            else:  # keep the last lines: they explain a failed load
                _LOG["lines"] = (_LOG["lines"] + [msg])[-20:]
        except KeyboardInterrupt:  # ctypes would swallow it: deliver Ctrl-C again once this callback has returned
            _redeliver_sigint()

    _LOG["callback"] = sink
    llama_cpp.llama_log_set(sink, ctypes.c_void_p(0))


def _redeliver_sigint() -> None:
    from infer.interrupts import redeliver_sigint

    redeliver_sigint()


def _last_log_error() -> str:
    for line in reversed(_LOG["lines"]):
        line = line.strip()
        if line and ("error" in line.lower() or "failed" in line.lower()):
            return line
    return ""


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str  # cpu | gpu | igpu | accel | rpc (a worker's device)
    free: int
    total: int


_GGML: dict = {}


def ggml_lib():
    """libggml through ctypes, with the backend-registry functions typed (llama-cpp-python binds none of them);
    None when the library cannot be found."""
    if "lib" in _GGML:
        return _GGML["lib"]
    import sys

    lib_dir = Path(_llama().__file__).parent / "lib"
    suffix = ".dylib" if sys.platform == "darwin" else ".dll" if sys.platform == "win32" else ".so"
    # The copy llama.cpp itself loaded: a wheel holds libggml.so, .so.0 and .so.0.x as separate files, and
    # another copy would have a registry of its own (workers registered there would be invisible to loads).
    candidates = [p for p in _loaded_libraries() if p.name.startswith(f"libggml{suffix}")]
    ggml = None
    for path in [*candidates, lib_dir / f"libggml{suffix}", lib_dir / f"ggml{suffix}"]:
        try:
            ggml = ctypes.CDLL(str(path))
            break
        except OSError:
            continue
    if ggml is not None:
        P, S = ctypes.c_void_p, ctypes.c_char_p
        for fn, args, res in (
            ("ggml_backend_dev_count", [], ctypes.c_size_t), ("ggml_backend_dev_get", [ctypes.c_size_t], P),
            ("ggml_backend_dev_name", [P], S), ("ggml_backend_dev_description", [P], S),
            ("ggml_backend_dev_type", [P], ctypes.c_int), ("ggml_backend_dev_backend_reg", [P], P),
            ("ggml_backend_dev_by_name", [S], P), ("ggml_backend_dev_by_type", [ctypes.c_int], P),
            ("ggml_backend_dev_memory", [P, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)], None),
            ("ggml_backend_reg_count", [], ctypes.c_size_t), ("ggml_backend_reg_get", [ctypes.c_size_t], P),
            ("ggml_backend_reg_name", [P], S), ("ggml_backend_reg_by_name", [S], P),
            ("ggml_backend_reg_get_proc_address", [P, S], P), ("ggml_backend_register", [P], None),
            ("ggml_backend_buft_name", [P], S),
        ):
            f = getattr(ggml, fn)
            f.argtypes, f.restype = args, res
    _GGML["lib"] = ggml
    return ggml


def _loaded_libraries() -> list[Path]:
    """Shared libraries mapped into this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            return list(dict.fromkeys(Path(line.split(None, 5)[5].strip()) for line in f if line.count(" ") >= 5
                                      and "/" in line))
    except (OSError, IndexError):
        return []


_RPC = {"registered": False}  # set by engine.rpc once workers are registered (they are then every load's default)


def _local_gpus() -> list[int]:
    """This machine's GPU devices (not RPC workers'), as ggml device pointers."""
    ggml = ggml_lib()
    out = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        reg = ggml.ggml_backend_dev_backend_reg(dev)
        if ggml.ggml_backend_dev_type(dev) in (1, 2) and not (ggml.ggml_backend_reg_name(reg) or b"").startswith(b"RPC"):
            out.append(dev)
    return out


def devices() -> list[Device]:
    """The compute devices this llama.cpp build sees (ggml's backend registry), RPC workers' devices included
    (kind "rpc") once they are registered."""
    ggml = ggml_lib()
    if ggml is None:
        return []
    kinds = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}
    out = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        reg = ggml.ggml_backend_dev_backend_reg(dev)
        kind = kinds.get(ggml.ggml_backend_dev_type(dev), "other")
        if reg and (ggml.ggml_backend_reg_name(reg) or b"").startswith(b"RPC"):
            kind = "rpc"
        out.append(Device(name=(ggml.ggml_backend_dev_name(dev) or b"").decode(),
                          description=(ggml.ggml_backend_dev_description(dev) or b"").decode(),
                          kind=kind, free=free.value, total=total.value))
    return out


def cpu_weight_buffers() -> list[str]:
    """The CPU backend's extra weight buffer types in this build on this CPU, in llama.cpp's order of preference
    (weights repacked for faster kernels: "AMX", "CPU_REPACK", ...); found as llama.cpp's loader finds them."""
    if "cpu_bufts" in _GGML:
        return _GGML["cpu_bufts"]
    ggml, names = ggml_lib(), []
    dev = ggml.ggml_backend_dev_by_type(0) if ggml is not None else None  # GGML_BACKEND_DEVICE_TYPE_CPU
    addr = dev and ggml.ggml_backend_reg_get_proc_address(ggml.ggml_backend_dev_backend_reg(dev),
                                                          b"ggml_backend_dev_get_extra_bufts")
    if addr:
        bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)(dev)
        while bufts and bufts[len(names)]:
            names.append((ggml.ggml_backend_buft_name(bufts[len(names)]) or b"").decode())
    _GGML["cpu_bufts"] = names
    return names


def amx_avoided() -> bool:
    """Whether loads keep weights out of llama.cpp's AMX buffers. Its AMX kernels crash: here (a Xeon with AMX
    under gVisor, SmolLM2 Q4_1) every batch of two or more tokens died with SIGSEGV in ggml_backend_amx_mul_mat or
    SIGILL, in llama-cpp-python's own Llama and in native llama-bench alike, while one-token decodes ran (2.5x
    faster than without); upstream, ggml-org/llama.cpp#20824 reports the same SIGSEGV on other machines and quants.
    A build made on such a CPU would crash on every prompt of the quant types AMX takes, so weight repacking is off
    as a whole (llama.cpp has one switch for AMX and the other repacked layouts); INFER_CPU_AMX=1 keeps it."""
    from infer.settings import INFER_CPU_AMX

    return "AMX" in cpu_weight_buffers() and not INFER_CPU_AMX.flag()


def system_info() -> str:
    return _llama().llama_print_system_info().decode("utf-8", "replace")


def supports_gpu_offload() -> bool:
    """Whether this build has a GPU backend (llama.cpp's own answer also says yes for the RPC backend alone)."""
    if not _llama().llama_supports_gpu_offload():
        return False
    ggml = ggml_lib()
    if ggml is None:
        return True
    names = {(ggml.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)) or b"").decode()
             for i in range(ggml.ggml_backend_reg_count())}
    return any(n not in ("CPU", "BLAS") and not n.startswith("RPC") for n in names) or \
        any(d.kind in ("gpu", "igpu") for d in devices())
