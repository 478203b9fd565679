"""Pooling machines through llama.cpp's RPC backend: `infer worker`, `--rpc` on run (and the other commands'
shared option), `doctor --rpc`. Real workers are `infer worker` processes on 127.0.0.1 (CPU backend); they
need a llama-cpp-python built with CMAKE_ARGS="-DGGML_RPC=on" (the README's test command builds one) and
skip with that reason elsewhere. The bad-input cases that need no worker run everywhere."""

from __future__ import annotations

import json
import re
import signal
import socket
import socketserver
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import free_port, seed
from infer import rpc
from infer.errors import UsageError, WorkerError

LISTENING = re.compile(r"^listening on (\S+):(\d+)$")


def rpc_built() -> bool:
    from infer.engine import rpc as engine_rpc

    return engine_rpc.supported()


needs_rpc = pytest.mark.skipif(not rpc_built(), reason='llama-cpp-python was built without the RPC backend: '
                                                       'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall '
                                                       '--no-cache-dir llama-cpp-python')


# -- pure logic ---------------------------------------------------------------------------------------------

def test_endpoint_lists_parse():
    assert rpc.parse_endpoints("127.0.0.1:50052") == (rpc.Endpoint("127.0.0.1", 50052),)
    assert [str(e) for e in rpc.parse_endpoints(" a.local:1 , 10.0.0.2:65535")] == ["a.local:1", "10.0.0.2:65535"]


@pytest.mark.parametrize("text", ["", " ", "host", "host:", ":50052", "h:0", "h:65536", "h:port", "a:1,,b:2", "a:1,",
                                  "::1:50052", "[::1]:50052", "a b:1", "a:1,a:1"])
def test_malformed_endpoint_lists_are_usage_errors(text):
    with pytest.raises(UsageError) as e:
        rpc.parse_endpoints(text)
    assert "--rpc" in e.value.message


def test_version_rule_is_llama_cpps():
    assert rpc.compatible((7, 0, 0), (7, 0, 0)) and rpc.compatible((7, 0, 3), (7, 1, 0))
    assert not rpc.compatible((6, 0, 0), (7, 0, 0)) and not rpc.compatible((7, 2, 0), (7, 1, 0))


def test_prediction_adds_the_link_to_local_speed():
    w = [rpc.WorkerInfo(rpc.Endpoint("a", 1), (7, 0, 0), rtt_s=0.001, bandwidth=100e6)]
    fast, slow = rpc.predict(100.0, w, 4096, 32), rpc.predict(100.0, w * 2, 4096, 32)
    assert 0 < slow.split_tps < fast.split_tps < 100.0
    graph = 32 * rpc.NODES_PER_LAYER * 296
    assert fast.link_s == pytest.approx(3 * 0.001 + (2 * 4096 * 4 + graph) / 100e6 + rpc.WORKER_GRAPH_S)
    assert rpc.predict(100.0, [], 4096).split_tps == pytest.approx(100.0)
    assert rpc.predict(100.0, w, 4096, 64).split_tps < fast.split_tps  # more layers: more graph to send


# -- probing what is not a (compatible) worker --------------------------------------------------------------

class _FakeWorker(socketserver.BaseRequestHandler):
    """Answers HELLO with `version` and then hangs up: another llama.cpp's worker, as far as the handshake goes."""

    version = (6, 0, 0)

    def handle(self):
        head = self.request.recv(9)
        if len(head) == 9 and head[0] == 14:
            self.request.recv(struct.unpack("<Q", head[1:])[0])
            self.request.sendall(struct.pack("<Q", 28) + bytes([*self.version, 0]) + bytes(24))


@pytest.fixture
def fake_worker():
    server = socketserver.TCPServer(("127.0.0.1", 0), _FakeWorker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield rpc.Endpoint("127.0.0.1", server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def web_server():
    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield rpc.Endpoint("127.0.0.1", server.server_address[1])
    server.shutdown()
    server.server_close()


def test_another_protocol_version_is_refused_naming_both(fake_worker):
    with pytest.raises(WorkerError) as e:
        rpc.probe(fake_worker, local=(7, 0, 0))
    assert "v6.0.0" in e.value.message and "v7.0.0" in e.value.message and str(fake_worker) in e.value.message


def test_a_web_server_is_not_a_worker(web_server):
    with pytest.raises(WorkerError) as e:
        rpc.probe(web_server, timeout=0.5, local=(7, 0, 0))
    assert "not an RPC worker" in e.value.message and str(web_server) in e.value.message  # it waits for HTTP


def test_nothing_listening_fails_at_once():
    endpoint = rpc.Endpoint("127.0.0.1", free_port())
    t0 = time.monotonic()
    with pytest.raises(WorkerError) as e:
        rpc.probe(endpoint)
    assert "refused" in e.value.message and str(endpoint) in e.value.message
    assert time.monotonic() - t0 < rpc.PROBE_TIMEOUT  # refused, not waited out


def test_a_silent_listener_times_out_with_the_address():
    with socket.socket() as silent:  # listens, never accepts: the probe must not hang
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        endpoint = rpc.Endpoint("127.0.0.1", silent.getsockname()[1])
        with pytest.raises(WorkerError) as e:
            rpc.probe(endpoint, timeout=0.5)
    assert str(endpoint) in e.value.message


# -- the command line, without workers ----------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--rpc", "nohost"], ["--rpc", "a:1,,b:2"], ["--tensor-split", "1,1"],
                                  ["--force-rpc"], ["--rpc", "127.0.0.1:1", "--tensor-split", "x,1"]])
def test_bad_rpc_options_are_usage_errors(infer, tmp_path, args):
    p = infer("run", "-m", tmp_path / "absent.gguf", *args, "hi")
    assert p.returncode == 2, p.stderr
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1


def test_malformed_infer_rpc_is_named(infer, tmp_path):
    p = infer("run", "-m", tmp_path / "absent.gguf", "hi", env={"INFER_RPC": "nohost"})
    assert p.returncode == 2 and "INFER_RPC" in p.stderr


@pytest.mark.model
def test_unreachable_worker_is_one_line_and_fast(infer, smollm2):
    port = free_port()
    t0 = time.monotonic()
    p = infer("run", "-m", smollm2.path, "--rpc", f"127.0.0.1:{port}", "-n", "4", "hi")
    assert time.monotonic() - t0 < 30
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, p.stderr
    if rpc_built():
        assert p.returncode == 11 and f"127.0.0.1:{port}" in p.stderr and "refused" in p.stderr
    else:
        assert p.returncode == 2 and "GGML_RPC=on" in p.stderr


def test_doctor_says_whether_rpc_is_built(infer):
    data = json.loads(infer("doctor", "--json", check=True).stdout)
    assert data["rpc"]["available"] is rpc_built()
    assert data["rpc"]["protocol"].startswith("v") or not rpc_built()


# -- real workers -------------------------------------------------------------------------------------------

class Worker:
    def __init__(self, infer, *args):
        self.proc = infer.popen("worker", "--port", "0", "--threads", "1", *args, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()  # the one line, once it accepts connections
        m = LISTENING.match(line)
        if not m:
            self.proc.kill()
            raise AssertionError(f"worker printed {line!r}: {self.proc.stderr.read()}")
        self.host, self.port = m.group(1), int(m.group(2))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def workers(infer):
    started = []

    def start(*args) -> Worker:
        started.append(Worker(infer, *args))
        return started[-1]

    yield start
    for w in started:
        w.stop()


@needs_rpc
def test_worker_binds_loopback_and_says_where(workers):
    w = workers()
    assert w.host == "127.0.0.1"
    info = rpc.probe(rpc.Endpoint(w.host, w.port))
    assert info.version == rpc.local_version() and info.memory and info.rtt_s > 0 and info.bandwidth > 0


@needs_rpc
def test_worker_on_an_open_address_warns_about_authentication(workers):
    w = workers("--host", "0.0.0.0")
    w.proc.kill()
    _, err = w.proc.communicate()
    assert "no authentication" in err


@needs_rpc
def test_worker_on_a_taken_port_is_one_line(infer):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        p = infer("worker", "--port", taken.getsockname()[1], timeout=60)
    assert p.returncode == 2 and p.stdout == "" and "cannot listen" in p.stderr


@needs_rpc
@pytest.mark.model
def test_doctor_probes_workers_and_the_fit(infer, workers, smollm2):
    w = workers()
    dead = free_port()
    data = json.loads(infer("doctor", "--json", "--rpc", f"{w},127.0.0.1:{dead}", check=True).stdout)
    good, bad = data["workers"]
    assert good["endpoint"] == str(w) and good["devices"] and good["devices"][0]["total"] > 0
    assert "refused" in bad["error"]


@needs_rpc
@pytest.mark.model
def test_all_layers_on_two_workers_answer_as_a_local_run(infer, workers, smollm2):
    a, b = workers(), workers()
    common = ["-m", smollm2.path, "--temperature", "0", "--seed", seed(3), "-n", "24", "--no-cache", "--json", "-v",
              "Write a short list of colours."]
    local = infer("run", *common, check=True)
    split = infer("run", *common, "--rpc", f"{a},{b}", "--force-rpc", check=True)
    one = infer("run", *common, "--rpc", str(a), "--force-rpc", check=True)
    answer = lambda p: (json.loads(p.stdout)["text"], json.loads(p.stdout)["usage"])  # noqa: E731
    assert answer(split) == answer(one)  # the same kernels on the workers, however the layers are shared
    assert "predicted" in split.stderr and "split over 2 RPC worker(s)" in split.stderr
    # A CPU whose llama.cpp repacks the weights into its own buffers (AMX, or an arch with repacked kernels) runs
    # other kernels locally than a worker does on plain buffers: the last bits may differ there, so only where the
    # local run uses plain CPU buffers must the texts be equal.
    if not re.search(r"(REPACK|AMX|KLEIDI)\S* model buffer size", local.stderr):
        assert answer(split) == answer(local)


@needs_rpc
@pytest.mark.model
def test_a_worker_killed_mid_generation_ends_with_the_documented_error(infer, workers, smollm2, tmp_path):
    w = workers()
    schema = tmp_path / "long.json"  # an answer of at least 3000 numbers: far longer than the time it takes to kill
    schema.write_text(json.dumps({"type": "array", "items": {"type": "integer"}, "minItems": 3000}))
    run = infer.popen("run", "-m", smollm2.path, "--rpc", str(w), "--force-rpc", "--schema", schema, "--no-cache",
                      "List numbers.", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = run.stdout.read(1)  # generation has begun
    assert first, run.stderr.read()
    w.proc.send_signal(signal.SIGKILL)
    rest, err = run.communicate(timeout=120)
    assert run.returncode == 11, err
    lines = err.decode().strip().splitlines()
    assert lines[-1].startswith("infer: lost the RPC worker at " + str(w)), err
    assert (first + rest).startswith(b"[")  # the text so far was kept


@needs_rpc
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_worker_stops_on_a_signal_with_the_documented_code(workers, sig, code):
    w = workers()
    w.proc.send_signal(sig)
    assert w.proc.wait(timeout=30) == code
    assert w.proc.stdout.read() == ""  # stdout held the one line, nothing more


@needs_rpc
@pytest.mark.model
def test_a_server_loads_two_models_over_the_same_worker(workers, smollm2, tmp_path):
    # The worker serves one client at a time: the second load must reuse this process's connection, not probe
    # again (a probe would wait behind the first model's connection and fail).
    import httpx

    from ggufs import write_tiny_llama
    from serving import Server, private_env

    w = workers()
    tiny = write_tiny_llama(tmp_path / "tiny.gguf", smollm2.path)
    server = Server(private_env(smollm2, tmp_path), "-m", "smollm2", "-m", str(tiny), "--parallel", "1", "-c", "256",
                    "--rpc", str(w), "--force-rpc")
    try:
        for name in ("smollm2", str(tiny)):
            r = httpx.post(server.url + "/v1/completions", json={"model": name, "prompt": "Hello", "max_tokens": 4},
                           timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] >= 1
        assert server.stderr.count("predicted") == 2  # one plan per model, the second from the first probe
    finally:
        server.stop()
