"""llama.cpp's RPC backend through ctypes (llama-cpp-python binds none of it, and ignores `rpc_servers`):
whether the build has it, registering workers before a load, running a worker, and catching llama.cpp's abort
when a worker is lost so that the caller can end with one clear error instead of a core dump."""

from __future__ import annotations

import ctypes
from typing import Callable

from infer.engine import native as _native
from infer.engine.native import devices, ggml_lib

_ADDED: list[str] = []
_ABORT: dict = {}


def _rpc_reg():
    ggml = ggml_lib()
    return ggml.ggml_backend_reg_by_name(b"RPC") if ggml is not None else None


def supported() -> bool:
    """Whether the installed llama.cpp was built with the RPC backend (CMAKE_ARGS="-DGGML_RPC=on")."""
    return bool(_rpc_reg())


def _proc(name: str, proto):
    reg = _rpc_reg()
    addr = ggml_lib().ggml_backend_reg_get_proc_address(reg, name.encode()) if reg else None
    if not addr:
        raise RuntimeError(f"this llama.cpp's RPC backend has no {name}")
    return proto(addr)


def add_workers(endpoints: list[str]) -> None:
    """Register workers (HOST:PORT) as devices for the loads that follow; each is registered once per process.
    llama.cpp connects at once and aborts on failure: callers probe them first (infer.rpc.probe)."""
    add = _proc("ggml_backend_rpc_add_server", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p))
    for endpoint in endpoints:
        if endpoint not in _ADDED:
            ggml_lib().ggml_backend_register(add(endpoint.encode()))
            _ADDED.append(endpoint)
            _native._RPC["registered"] = True


def added() -> list[str]:
    return list(_ADDED)


def worker_devices(names: list[str] | None) -> list[str]:
    """The local devices a worker offers: those named, else every GPU, else the CPU."""
    local = [d for d in devices() if d.kind != "rpc"]
    if names:
        known = {d.name.lower(): d.name for d in local}
        missing = [n for n in names if n.lower() not in known]
        if missing:
            from infer.errors import UsageError

            raise UsageError(f"no device named {', '.join(missing)} here",
                             hint="devices: " + ", ".join(d.name for d in local))
        return [known[n.lower()] for n in names]
    gpus = [d.name for d in local if d.kind in ("gpu", "igpu")]
    return gpus or [d.name for d in local if d.kind == "cpu"][:1]


def serve(endpoint: str, cache_dir: str | None, n_threads: int, device_names: list[str]) -> None:
    """Run llama.cpp's RPC server on `endpoint` with these devices; returns only if it cannot start."""
    ggml = ggml_lib()
    devs = [ggml.ggml_backend_dev_by_name(n.encode()) for n in device_names]
    array = (ctypes.c_void_p * len(devs))(*devs)
    start = _proc("ggml_backend_rpc_start_server", ctypes.CFUNCTYPE(
        None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)))
    start(endpoint.encode(), cache_dir.encode() if cache_dir else None, n_threads, len(devs),
          ctypes.cast(array, ctypes.POINTER(ctypes.c_void_p)))


def on_abort(handler: Callable[[str], None]) -> None:
    """Call handler(message) when ggml aborts (a lost worker: "Remote RPC server crashed..."); the handler ends the
    process itself (os._exit), since ggml calls abort() when it returns."""
    ggml = ggml_lib()
    proto = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
    callback = proto(lambda message: handler((message or b"").decode("utf-8", "replace")))
    ggml.ggml_set_abort_callback.argtypes = [proto]
    ggml.ggml_set_abort_callback.restype = ctypes.c_void_p
    ggml.ggml_set_abort_callback(callback)
    _ABORT["callback"] = callback  # kept alive as long as the process
