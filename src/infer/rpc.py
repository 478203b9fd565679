"""Pooling machines for one model through llama.cpp's RPC backend: `--rpc HOST:PORT,...` lists, probing
workers before a load (reachable? a worker? the same protocol? how far and how fast?), and predicting whether
a split is worth it.

The probe speaks llama.cpp's own protocol (ggml-rpc.cpp): a request is a command byte, a little-endian u64
size and the payload; a reply is a u64 size and the payload. It says HELLO, counts the devices, asks their
memory, times round trips, and times one 4 MiB upload to a scratch buffer. llama.cpp itself aborts the whole
process on any of these failures, so they are found here first, each with one clear message.

A worker serves one client at a time; the probe's connection is closed before llama.cpp opens its own."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from infer.errors import UsageError, WorkerError

DEFAULT_PORT = 50052
PROBE_TIMEOUT = 3.0  # seconds for a connection or an answer
_HELLO, _DEVICE_COUNT, _GET_DEVICE_MEMORY = 14, 15, 11
_ALLOC_BUFFER, _BUFFER_GET_BASE, _FREE_BUFFER, _SET_TENSOR = 0, 3, 4, 6
_CAPS = 24  # RPC_CONN_CAPS_SIZE: zero capabilities ask for plain TCP
_TENSOR = struct.Struct("<QIQ4I4II16iI10QQQQ64si")  # rpc_tensor, packed (296 bytes)
UPLOAD_BYTES = 1 << 20
UPLOAD_TIMEOUT = 30.0  # seconds for the upload probe: 1 MiB over a 0.3 Mbit/s link


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_endpoints(text: str, what: str = "--rpc") -> tuple[Endpoint, ...]:
    """HOST:PORT[,HOST:PORT...] (blanks around commas allowed); one clear usage error for anything else."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise UsageError(f"{what} {text!r} is not a list of HOST:PORT", hint=f"for example {what} 192.168.1.20:50052,"
                                                                              "192.168.1.21:50052")
    out: list[Endpoint] = []
    for item in items:
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"{what}: {item!r} is not HOST:PORT (a port from 1 to 65535)",
                             hint=f"for example {what} 192.168.1.20:{DEFAULT_PORT}")
        if ":" in host or host.startswith("["):
            raise UsageError(f"{what}: {item!r}: llama.cpp's RPC client takes no IPv6 address",
                             hint="use a host name or an IPv4 address")
        if any(c.isspace() for c in host):
            raise UsageError(f"{what}: {item!r} is not HOST:PORT")
        endpoint = Endpoint(host, int(port))
        if endpoint in out:
            raise UsageError(f"{what}: {item} is listed twice")
        out.append(endpoint)
    return tuple(out)


def local_version() -> tuple[int, int, int] | None:
    """The RPC protocol version of the installed llama.cpp (from the ggml-rpc.h the wheel installs)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    package = Path(spec.origin).parent
    for header in (package.parent / "include" / "ggml-rpc.h", package / "include" / "ggml-rpc.h"):
        try:
            text = header.read_text()
        except OSError:
            continue
        parts = [re.search(rf"#define\s+RPC_PROTO_{k}_VERSION\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")]
        if all(parts):
            return tuple(int(m.group(1)) for m in parts)  # type: ignore[return-value]
    return None


def compatible(worker: tuple[int, int, int], local: tuple[int, int, int]) -> bool:
    """llama.cpp's own rule: the same major version, and a worker no newer in its minor version."""
    return worker[0] == local[0] and worker[1] <= local[1]


def version_text(v: tuple[int, int, int] | None) -> str:
    return "v" + ".".join(map(str, v)) if v else "an unknown version"


@dataclass
class WorkerInfo:
    endpoint: Endpoint
    version: tuple[int, int, int]
    memory: list[tuple[int, int]] = field(default_factory=list)  # (free, total) bytes per device
    rtt_s: float = 0.0
    bandwidth: float = 0.0  # bytes per second, one way

    @property
    def free(self) -> int:
        return sum(f for f, _ in self.memory)


class _Conn:
    def __init__(self, endpoint: Endpoint, timeout: float):
        self.endpoint = endpoint
        try:
            self.sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        except socket.gaierror:
            raise WorkerError(f"cannot resolve the RPC worker's host {endpoint.host!r}",
                              hint="check the name in --rpc") from None
        except ConnectionRefusedError:
            raise WorkerError(f"no RPC worker at {endpoint}: the connection was refused",
                              hint=f"start one there: infer worker --port {endpoint.port}") from None
        except (socket.timeout, TimeoutError):
            raise WorkerError(f"the RPC worker at {endpoint} did not answer within {timeout:g} s",
                              hint="check the address, the firewall, and that the worker runs") from None
        except OSError as e:
            raise WorkerError(f"cannot reach the RPC worker at {endpoint}: {e.strerror or e}",
                              hint="check the address and the network") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _recv(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            try:
                chunk = self.sock.recv(n - got)
            except (socket.timeout, TimeoutError):
                raise _Timeout() from None
            except OSError as e:
                raise WorkerError(f"the RPC worker at {self.endpoint} broke the connection: {e.strerror or e}") from None
            if not chunk:
                raise _Closed()
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def send(self, cmd: int, payload: bytes = b"") -> None:
        try:
            self.sock.sendall(bytes([cmd]) + struct.pack("<Q", len(payload)) + payload)
        except OSError as e:
            raise WorkerError(f"the RPC worker at {self.endpoint} broke the connection: {e.strerror or e}") from None

    def call(self, cmd: int, payload: bytes, expect: int) -> bytes:
        self.send(cmd, payload)
        size = struct.unpack("<Q", self._recv(8))[0]
        if size != expect:
            raise _Garbled()
        return self._recv(size)

    def close(self) -> None:
        self.sock.close()


class _Closed(Exception):
    pass


class _Garbled(Exception):
    pass


class _Timeout(Exception):
    pass


def probe(endpoint: Endpoint, *, timeout: float = PROBE_TIMEOUT, measure: bool = True,
          local: tuple[int, int, int] | None = None) -> WorkerInfo:
    """Say HELLO and ask the worker's devices; with `measure`, time round trips and one upload. Every failure is
    one WorkerError naming the worker: unreachable, not an RPC worker, or a protocol this build does not speak."""
    conn = _Conn(endpoint, timeout)
    not_worker = WorkerError(f"{endpoint} is not an RPC worker (it answered something else)",
                             hint="check the port: workers listen on 50052 unless told otherwise")
    try:
        try:
            reply = conn.call(_HELLO, bytes(_CAPS), 4 + _CAPS)
        except _Closed:
            raise WorkerError(f"{endpoint} closed the connection at the handshake: not an RPC worker, or one of a "
                              "llama.cpp too old for this one", hint="run the same infer and llama-cpp-python "
                                                                     "version on every machine") from None
        except _Garbled:
            raise not_worker from None
        except _Timeout:
            raise WorkerError(f"{endpoint} did not answer the RPC handshake within {timeout:g} s: not an RPC worker, "
                              "or a worker busy with another client (a worker serves one at a time)",
                              hint="check the port: workers listen on 50052 unless told otherwise") from None
        version = (reply[0], reply[1], reply[2])
        local = local or local_version()
        if local and not compatible(version, local):
            raise WorkerError(f"the RPC worker at {endpoint} speaks RPC protocol {version_text(version)}, this "
                              f"machine's llama.cpp {version_text(local)}",
                              hint="install the same llama-cpp-python version on every machine")
        info = WorkerInfo(endpoint, version)
        (n,) = struct.unpack("<I", conn.call(_DEVICE_COUNT, b"", 4))
        for device in range(n):
            info.memory.append(struct.unpack("<QQ", conn.call(_GET_DEVICE_MEMORY, struct.pack("<I", device), 16)))
        if measure and n:
            info.rtt_s, info.bandwidth = _measure(conn)
        return info
    except (_Closed, _Garbled):
        raise not_worker from None
    except _Timeout:
        raise WorkerError(f"the RPC worker at {endpoint} stopped answering",
                          hint="it may be busy with another client (a worker serves one at a time)") from None
    finally:
        conn.close()


def _measure(conn: _Conn) -> tuple[float, float]:
    """(round trip in seconds, upload bandwidth in bytes/s): the best of a few DEVICE_COUNT round trips, then one
    upload of UPLOAD_BYTES into a scratch buffer on device 0, closed by a round trip."""
    rtts = []
    for _ in range(5):
        t0 = time.perf_counter()
        conn.call(_DEVICE_COUNT, b"", 4)
        rtts.append(time.perf_counter() - t0)
    rtt = min(rtts)
    ptr, size = struct.unpack("<QQ", conn.call(_ALLOC_BUFFER, struct.pack("<IQ", 0, UPLOAD_BYTES), 16))
    if not ptr or size < UPLOAD_BYTES:
        return rtt, 0.0
    try:
        (base,) = struct.unpack("<Q", conn.call(_BUFFER_GET_BASE, struct.pack("<Q", ptr), 8))
        n = UPLOAD_BYTES // 4
        tensor = _TENSOR.pack(1, 0, ptr, n, 1, 1, 1, 4, UPLOAD_BYTES, UPLOAD_BYTES, UPLOAD_BYTES, 0, *([0] * 16), 0,
                              *([0] * 10), 0, 0, base, b"infer-probe", 0)
        payload = tensor + b"\0" + struct.pack("<Q", 0) + bytes(UPLOAD_BYTES)
        conn.sock.settimeout(UPLOAD_TIMEOUT)  # a slow link is slow, not broken
        t0 = time.perf_counter()
        try:
            conn.send(_SET_TENSOR, payload)
            conn.call(_DEVICE_COUNT, b"", 4)  # the worker handles commands in order: this ends after the upload
        except _Timeout:
            raise WorkerError(f"the link to the RPC worker at {conn.endpoint} moved less than 1 MiB in "
                              f"{UPLOAD_TIMEOUT:g} s", hint="a split over so slow a link cannot be fast") from None
        elapsed = time.perf_counter() - t0
        conn.send(_FREE_BUFFER, struct.pack("<Q", ptr))
    except BaseException:
        conn.close()  # the worker frees what a dropped connection held
        raise
    return rtt, UPLOAD_BYTES / max(elapsed - rtt, 1e-6)


_PROBED: dict[str, WorkerInfo] = {}


def probe_all(endpoints: tuple[Endpoint, ...], registered: list[str] = (), **kw) -> list[WorkerInfo]:
    """Probe each worker, except those this process has registered already: a worker serves one client at a
    time, and this process's own connection (held by a loaded model) would leave the probe unanswered. Their
    first probe's figures are used again."""
    for e in endpoints:
        if str(e) not in registered or str(e) not in _PROBED:
            _PROBED[str(e)] = probe(e, **kw)
    return [_PROBED[str(e)] for e in endpoints]


# -- prediction ---------------------------------------------------------------------------------------------

ROUND_TRIPS_PER_TOKEN = 3  # per worker and decoded token: inputs up, compute, the activations back
NODES_PER_LAYER = 30  # graph nodes a transformer layer adds (each sent as one rpc_tensor with the graph)
WORKER_GRAPH_S = 1.3e-3  # per worker and token: the worker reads and allocates the graph (calibrated: benchmarks/rpc.py)


@dataclass(frozen=True)
class Prediction:
    local_tps: float  # decode tokens/s on this machine alone (estimated)
    split_tps: float  # decode tokens/s with the workers (estimated)
    link_s: float  # seconds of link and graph overhead per token

    def line(self, workers: list[WorkerInfo]) -> str:
        links = ", ".join(f"{w.endpoint} {w.rtt_s * 1e3:.2f} ms round trip, {w.bandwidth / 1e6:.0f} MB/s"
                          for w in workers)
        return (f"split over {len(workers)} RPC worker(s) ({links}): predicted {self.split_tps:.1f} tok/s "
                f"against {self.local_tps:.1f} tok/s on this machine alone")


def predict(local_tps: float, workers: list[WorkerInfo], n_embd: int, n_layers: int = 32) -> Prediction:
    """Decoding one token through a split runs the layers one device after the other, as on one machine, plus, for
    each worker: a few round trips, the activations (n_embd floats) both ways, its share of the graph (sent with
    every token: NODES_PER_LAYER tensors of _TENSOR.size bytes per layer) and the worker's own graph set-up. The
    workers' compute is taken to be this machine's (the probe cannot time it); over a slow link the link dominates
    anyway. Layers are taken to be shared equally."""
    link = 0.0
    graph = n_layers * NODES_PER_LAYER * _TENSOR.size / max(len(workers), 1)
    for w in workers:
        transfer = (2 * n_embd * 4 + graph) / w.bandwidth if w.bandwidth > 0 else 0.0
        link += ROUND_TRIPS_PER_TOKEN * w.rtt_s + transfer + WORKER_GRAPH_S
    per_token = 1 / local_tps if local_tps > 0 else 0.0
    return Prediction(local_tps, 1 / (per_token + link) if per_token + link > 0 else 0.0, link)


def ensure_supported() -> None:
    from infer.engine import rpc as engine_rpc

    if not engine_rpc.supported():
        raise UsageError("this llama-cpp-python was built without the RPC backend",
                         hint='rebuild it: CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir '
                              'llama-cpp-python')


# -- a worker lost while in use ----------------------------------------------------------------------------

def _alive(endpoint: Endpoint, timeout: float = 0.5) -> bool:
    try:
        socket.create_connection((endpoint.host, endpoint.port), timeout=timeout).close()
        return True
    except OSError:
        return False


def lost_worker_handler(endpoints: tuple[Endpoint, ...]):
    """The handler for ggml's abort once workers are in use: llama.cpp aborts the process when a worker's
    connection breaks. Keep the text written so far, name the worker that is gone, exit with ExitCode.WORKER."""
    import os
    import sys

    from infer.errors import ExitCode

    def handle(message: str) -> None:
        reason = message.split(": ", 1)[-1].strip() if message else "no reason given"
        gone = [e for e in endpoints if not _alive(e)]
        if not gone and "ggml-rpc" not in message:  # another abort of llama.cpp's while workers are in use
            os.write(2, f"infer: llama.cpp aborted: {reason}\n".encode("utf-8", "replace"))
            os._exit(ExitCode.INTERNAL)
        gone = gone or list(endpoints)
        try:
            sys.stdout.flush()
            if sys.stdout.isatty():
                sys.stdout.write("\n")
                sys.stdout.flush()
        except (OSError, ValueError):
            pass
        line = (f"infer: lost the RPC worker at {', '.join(map(str, gone))} (llama.cpp: {reason}); any text written "
                f"so far is kept (restart the worker with `infer worker`, or run without --rpc)\n")
        os.write(2, line.encode("utf-8", "replace"))
        os._exit(ExitCode.WORKER)

    return handle
