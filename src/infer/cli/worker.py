"""`infer worker`: llama.cpp's RPC server, from the installed llama-cpp-python, so that another machine's
`infer run/chat/serve/batch/bench --rpc HOST:PORT` can put layers of a model on this one."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from typing import Annotated, Optional

import typer

from infer.cli import console, options as o
from infer.errors import UsageError, WorkerError

EPILOG = """\
Examples:

\b
  infer worker                                   # 127.0.0.1:50052, for an SSH tunnel
  infer worker --port 0                          # a free port, printed on stdout
  infer worker --host 192.168.1.20 --cache       # on a private network: no authentication!
  infer run --rpc 192.168.1.20:50052 -m qwen2.5:7b "Hello"    # on the main machine
"""

NO_AUTH = ("the RPC protocol has no authentication and trusts every client: anyone who can reach {where} can use "
           "this machine's memory and compute. Use it only on a private network, or keep 127.0.0.1 and reach it "
           "through an SSH tunnel (ssh -N -L 50052:127.0.0.1:50052 HOST).")


def _is_loopback(host: str) -> bool:
    from infer.cli.serve import is_loopback

    return is_loopback(host)


def _free_port(host: str, port: int) -> int:
    """Check that the port can be bound (0: pick a free one); one clear error when it cannot."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        raise UsageError(f"--host {host!r} is not an address of this machine") from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(infos[0][4])
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                             hint="pick another --port (0: any free one)") from None
        return s.getsockname()[1]


def worker(
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on. Anything but loopback must be named here, and warns: the protocol "
        "has no authentication.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port; 0 picks a free one.")] = 50052,
    device: Annotated[Optional[list[str]], typer.Option(
        "--device", help="Device to offer, as `infer doctor` names it (repeatable). (default: every GPU, else the CPU)",
        show_default=False)] = None,
    cache: Annotated[bool, typer.Option(
        "--cache", help="Keep received weights in a local cache, so the next load of the same model skips the "
        "transfer.")] = False,
    threads: o.Threads = None,
) -> None:
    """Lend this machine's devices to another machine's infer (llama.cpp's RPC server).

    Prints `listening on HOST:PORT` on stdout once it accepts connections, then serves one client at a time until
    Ctrl-C or SIGTERM. llama.cpp's own messages go to stderr."""
    from infer import hardware, rpc, settings
    from infer.engine import rpc as engine_rpc

    rpc.ensure_supported()
    signal.signal(signal.SIGTERM, lambda *_: _exit(0))
    if host in ("", "*"):
        raise UsageError("--host needs an address: 127.0.0.1 (default), or a named address of this machine")
    port = _free_port(host, port)
    address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]  # llama.cpp takes IPv4
    endpoint = f"{address}:{port}"
    if not _is_loopback(host):
        console.warn(NO_AUTH.format(where=endpoint))
    names = engine_rpc.worker_devices(device)
    cache_dir = None
    if cache:
        cache_dir = settings.rpc_cache_dir()
        cache_dir.mkdir(parents=True, exist_ok=True)
    n_threads = threads or hardware.default_threads()
    console.info(f"offering {', '.join(names)} with {n_threads} thread(s)" +
                 (f"; weights cached in {cache_dir}" if cache_dir else ""))

    out = os.fdopen(os.dup(1), "w")  # our stdout: the one data line; llama.cpp's printf goes to stderr
    sys.stdout.flush()
    os.dup2(2, 1)
    stopped = threading.Event()

    def run() -> None:
        try:
            engine_rpc.serve(endpoint, str(cache_dir) if cache_dir else None, n_threads, names)
        finally:
            stopped.set()

    threading.Thread(target=run, name="infer-rpc-worker", daemon=True).start()
    target = rpc.Endpoint("127.0.0.1" if address == "0.0.0.0" else address, port)
    deadline = time.monotonic() + 60
    while True:  # ready once it answers a handshake
        if stopped.wait(0.05) or time.monotonic() > deadline:
            raise WorkerError(f"llama.cpp's RPC server could not start on {endpoint}")
        try:
            rpc.probe(target, timeout=1.0, measure=False)
            break
        except WorkerError:
            continue
    out.write(f"listening on {endpoint}\n")
    out.flush()
    try:
        while not stopped.wait(1.0):
            pass
    except KeyboardInterrupt:
        console.info("worker stopped")
        _exit(130)
    raise WorkerError(f"llama.cpp's RPC server on {endpoint} stopped")


def _exit(code: int) -> None:
    sys.stderr.flush()
    os._exit(code)  # the server thread sits in accept(): end without waiting for it
