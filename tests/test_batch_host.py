"""`infer batch --host`: lines parsed into requests (pure), the retry protocol against a small stand-in server
in this file (503s, a dropped connection, a server that goes away, Ctrl-C with requests in flight), then the
installed command against the real `infer serve` on the real SmolLM2: OpenAI shapes, error lines, resume after
a torn output, the same ids and status codes as a local batch. No assertion on what the model says."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import free_port
from infer import batch as core, batch_remote as remote
from serving import Server, private_env
from test_batch import check_shape, full, jsonl, on, read_out, wait_for_lines

DEFAULTS = remote.Defaults(model="m", seed=None, max_tokens=None)


# -- lines -> requests ------------------------------------------------------------------------------
def call(row, defaults=DEFAULTS, n=4):
    return remote.parse_call((row if isinstance(row, str) else json.dumps(row)).encode(), n, defaults)


def test_a_full_line_goes_as_it_is_with_the_model_and_no_stream():
    body = {"messages": [{"role": "user", "content": [{"type": "image_url"}]}], "logprobs": True, "n": 3,
            "stream": True, "stream_options": {"include_usage": True}}
    c = call(full("a", **body))
    assert isinstance(c, remote.Call) and c.url == "/v1/chat/completions" and not c.own_model
    assert c.body == {**{k: v for k, v in body.items() if k != "stream_options"}, "stream": False, "model": "m"}
    named = call(full("b", "/v1/completions", prompt="x", model="other"))
    assert named.body["model"] == "other" and named.own_model
    emb = call(full("e", "/v1/embeddings", input="hi"))
    assert emb.url == "/v1/embeddings" and emb.body == {"input": "hi", "model": "m"}


def test_the_short_form_becomes_an_openai_body():
    chat = call({"prompt": "hi", "system": "be brief", "temperature": 0, "custom_id": "s"})
    assert chat.custom_id == "s" and chat.url == "/v1/chat/completions"
    assert chat.body == {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                         "temperature": 0, "model": "m", "stream": False}
    raw = call({"prompt": "Once", "raw": True, "max_tokens": 3})
    assert raw.url == "/v1/completions" and raw.custom_id == "line-4"
    assert raw.body == {"prompt": "Once", "max_tokens": 3, "model": "m", "stream": False}


def test_seed_and_max_tokens_fill_only_what_a_line_leaves_out():
    d = remote.Defaults(model="m", seed=9, max_tokens=5)
    given = call({"prompt": "a", "custom_id": "p", "seed": 1, "max_completion_tokens": 2}, d)
    assert given.body["seed"] == 1 and "max_tokens" not in given.body
    left = call({"prompt": "a", "custom_id": "q"}, d)
    assert left.body["seed"] == core.derive_seed(9, "q") and left.body["max_tokens"] == 5
    assert "seed" not in call(full("e", "/v1/embeddings", input="x"), d).body


@pytest.mark.parametrize("row, code", [
    ("{nope", "invalid_json"),
    ("[1]", "invalid_request"),
    ({"custom_id": 3, "prompt": "a"}, "invalid_request"),
    ({**full("x"), "method": "GET"}, "invalid_request"),
    (full("x", "/v1/images"), "invalid_url"),
    ({"custom_id": "x", "url": "/v1/completions", "body": "text"}, "invalid_request"),
    ({"custom_id": "x"}, "invalid_request"),
    ({"prompt": 3}, "invalid_request"),
])
def test_what_is_refused_before_sending(row, code):
    bad = call(row)
    assert isinstance(bad, core.BadLine) and bad.code == code and bad.line == 4


def test_retry_waits_follow_retry_after_else_the_backoff():
    assert remote.retry_wait(1, 1.0, "3") == 3.0
    assert remote.retry_wait(1, 1.0, "100000") == remote.RETRY_AFTER_MAX_S
    assert remote.retry_wait(1, 1.0, "Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    for attempt in (1, 3):
        wait = remote.retry_wait(attempt, 1.0, None if attempt == 1 else "soon")
        assert 0.5 * 2 ** (attempt - 1) <= wait <= 2 ** (attempt - 1)
    assert remote.retry_wait(20, 1.0, None) <= remote.BACKOFF_MAX_S


def test_the_gate_narrows_to_what_the_server_holds_and_widens_again():
    import asyncio

    async def scenario():
        gate = remote.Gate(4)
        for _ in range(4):
            await gate.enter()
        gate.leave(busy=True)
        gate.leave(busy=True)  # two busy answers: the server holds the other two
        assert gate.limit == 2 and gate.inside == 2
        waiter = asyncio.ensure_future(gate.enter())
        await asyncio.sleep(0)
        assert not waiter.done()  # full: waits for a place
        gate.leave(busy=False)
        await waiter
        assert gate.inside == 2
        gate.leave(busy=False)  # two calm answers in a row at a limit of 2: one more place
        assert gate.limit == 3
        gate.leave(busy=False)
        assert gate.inside == 0 and gate.limit == 3

    asyncio.run(scenario())


# -- the retry protocol, against a stand-in server ----------------------------------------------------
def chat_answer(body: dict) -> dict:
    return {"id": "chatcmpl-standin", "object": "chat.completion", "created": 1, "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "logprobs": None,
                         "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


DROP = "drop"  # close the connection without an answer


class StandIn:
    """An OpenAI-shaped server on loopback whose every answer a test decides: respond(n, body) returns
    (status, headers, json body), DROP, or a threading.Event to wait for before answering 200."""

    def __init__(self, respond):
        self.respond = respond
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stand_in.lock:
                    stand_in.bodies.append(body)
                    n = len(stand_in.bodies)
                what = stand_in.respond(n, body)
                if isinstance(what, threading.Event):
                    what.wait(60)
                    what = (200, {}, chat_answer(body))
                if what == DROP:
                    self.close_connection = True
                    return
                status, headers, payload = what
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # a held answer to a client that left: expected
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def ids(self) -> list[str]:
        return [b["messages"][0]["content"] for b in self.bodies]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stand_in():
    servers = []

    def start(respond):
        servers.append(StandIn(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


FAST = {"INFER_RETRY_BACKOFF": "0.01"}


def rows(n: int) -> list:
    return [{"prompt": f"q{i}", "custom_id": f"q{i}"} for i in range(n)]


def test_503_twice_then_200_is_retried_and_succeeds(infer, tmp_path, stand_in):
    busy = {"error": {"message": "busy", "type": "server_error", "code": "queue_full"}}
    server = stand_in(lambda n, body: (503, {"Retry-After": "0"}, busy) if n <= 2 else (200, {}, chat_answer(body)))
    src, out = jsonl(tmp_path / "in.jsonl", rows(1)), tmp_path / "out.jsonl"
    proc = infer("batch", src, "-o", out, "--host", server.url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(server.bodies) == 3
    [line] = read_out(out)
    check_shape(line)
    assert line["response"]["body"]["id"] == "chatcmpl-standin"
    assert json.loads(proc.stdout)["completion_tokens"] == 1


def test_429_and_a_dropped_connection_are_retried_with_backoff(infer, tmp_path, stand_in):
    limited = {"error": {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}
    plan = {1: (429, {}, limited), 2: DROP}
    server = stand_in(lambda n, body: plan.get(n) or (200, {}, chat_answer(body)))
    src, out = jsonl(tmp_path / "in.jsonl", rows(1)), tmp_path / "out.jsonl"
    proc = infer("batch", src, "-o", out, "--host", server.url, env=FAST)
    assert proc.returncode == 0, proc.stderr
    assert len(server.bodies) == 3 and read_out(out)[0]["error"] is None


def test_lines_beyond_what_the_server_holds_wait_for_a_place(infer, tmp_path, stand_in):
    # A server that holds 2 requests at a time and answers 503 beyond: with 6 in flight and no wait between
    # tries, the lines beyond its 2 would spend all their tries in a moment; narrowed, they wait their turn.
    held, lock = [0], threading.Lock()

    def respond(n, body):
        with lock:
            if held[0] >= 2:
                return 503, {"Retry-After": "0"}, {"error": {"message": "full", "code": "queue_full"}}
            held[0] += 1
        time.sleep(0.05)  # "generating"
        with lock:
            held[0] -= 1
        return 200, {}, chat_answer(body)

    server = stand_in(respond)
    src, out = jsonl(tmp_path / "in.jsonl", rows(12)), tmp_path / "out.jsonl"
    proc = infer("batch", src, "-o", out, "--host", server.url, "--parallel", "6", env={"INFER_RETRY_BACKOFF": "0"})
    assert proc.returncode == 0, proc.stderr
    assert sorted(line["custom_id"] for line in read_out(out)) == sorted(f"q{i}" for i in range(12))


def test_a_line_refused_with_400_is_an_error_line_not_retried(infer, tmp_path, stand_in):
    refused = {"error": {"message": "messages: too short", "type": "invalid_request_error", "code": None}}
    server = stand_in(lambda n, body: (400, {}, refused) if body["messages"][0]["content"] == "q1"
                      else (200, {}, chat_answer(body)))
    src, out = jsonl(tmp_path / "in.jsonl", rows(3)), tmp_path / "out.jsonl"
    proc = infer("batch", src, "-o", out, "--host", server.url, env=FAST)
    assert proc.returncode == 10, proc.stderr
    assert sorted(server.ids()) == ["q0", "q1", "q2"]  # each sent once
    by_id = {line["custom_id"]: line for line in read_out(out)}
    assert by_id["q1"]["response"] is None
    assert by_id["q1"]["error"]["code"] == "invalid_request_error" and "too short" in by_id["q1"]["error"]["message"]
    assert by_id["q0"]["error"] is None and by_id["q2"]["error"] is None
    assert "1 of 3 lines failed" in proc.stderr


def test_always_busy_gives_an_error_line_after_the_last_try(infer, tmp_path, stand_in):
    server = stand_in(lambda n, body: (503, {}, {"error": {"message": "busy", "code": "queue_full"}}))
    src, out = jsonl(tmp_path / "in.jsonl", rows(1)), tmp_path / "out.jsonl"
    proc = infer("batch", src, "-o", out, "--host", server.url, env=FAST)
    assert proc.returncode == 10, proc.stderr
    assert len(server.bodies) == remote.TRIES
    [line] = read_out(out)
    assert line["error"]["code"] == "queue_full" and f"{remote.TRIES} tries" in line["error"]["message"]


def test_a_server_that_goes_away_stops_the_batch_and_a_rerun_finishes(infer, tmp_path, stand_in):
    server = stand_in(lambda n, body: (200, {}, chat_answer(body)) if n == 1 else DROP)
    src, out = jsonl(tmp_path / "in.jsonl", rows(4)), tmp_path / "out.jsonl"
    args = ("batch", src, "-o", out, "--parallel", "1")
    proc = infer(*args, "--host", server.url, env=FAST)
    assert proc.returncode == 6, proc.stderr
    assert proc.stderr.count("\n") == 1 and "lost the server" in proc.stderr
    assert [line["custom_id"] for line in read_out(out)] == ["q0"]  # kept; no line blamed for the server
    server.respond = lambda n, body: (200, {}, chat_answer(body))
    proc = infer(*args, "--host", server.url, env=FAST)
    assert proc.returncode == 0, proc.stderr
    assert sorted(line["custom_id"] for line in read_out(out)) == ["q0", "q1", "q2", "q3"]


def test_a_refused_api_key_stops_before_any_line(infer, tmp_path, stand_in):
    server = stand_in(lambda n, body: (401, {}, {"error": {"message": "invalid api key", "type": "authentication_error"}}))
    src, out = jsonl(tmp_path / "in.jsonl", rows(3)), tmp_path / "out.jsonl"
    proc = infer("batch", src, "-o", out, "--host", server.url, "--api-key", "wrong")
    assert proc.returncode == 9 and proc.stderr.count("\n") == 1 and "bad API key" in proc.stderr
    assert out.read_bytes() == b""


def test_ctrl_c_with_requests_in_flight_keeps_whole_lines_and_a_rerun_finishes(infer, tmp_path, stand_in):
    held = threading.Event()
    server = stand_in(lambda n, body: (200, {}, chat_answer(body)) if body["messages"][0]["content"] == "q0" else held)
    src, out = jsonl(tmp_path / "in.jsonl", rows(6)), tmp_path / "out.jsonl"
    args = ("batch", src, "-o", out, "--host", server.url, "--parallel", "3")
    p = infer.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_lines(out, 1, p, timeout=60)  # q0 answered and written; the requests after it are held by the server
    p.send_signal(signal.SIGINT)
    stdout, err = p.communicate(timeout=60)
    held.set()
    assert p.returncode == 130, err
    assert stdout == b"" and b"Traceback" not in err and b"rerun the same command" in err
    assert [line["custom_id"] for line in read_out(out)] == ["q0"]
    assert len(server.bodies) <= 4  # 3 in flight, and the one that took q0's place: the rest were never sent
    server.respond = lambda n, body: (200, {}, chat_answer(body))
    proc = infer(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["done_before"] == 1
    assert sorted(line["custom_id"] for line in read_out(out)) == [f"q{i}" for i in range(6)]


def test_an_unreachable_host_is_one_line_and_exit_6(infer, tmp_path):
    src, out = jsonl(tmp_path / "in.jsonl", rows(2)), tmp_path / "out.jsonl"
    proc = infer("batch", src, "-o", out, "--host", f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 6
    assert proc.stderr.count("\n") == 1 and "cannot reach the server" in proc.stderr
    assert not out.exists()  # nothing written, not even the sidecar


@pytest.mark.parametrize("extra", [["--lookup"], ["--rpc", "127.0.0.1:50052"]])
def test_what_runs_where_the_model_is_is_refused_with_host(infer, tmp_path, extra):
    src = jsonl(tmp_path / "in.jsonl", rows(1))
    proc = infer("batch", src, "--host", f"http://127.0.0.1:{free_port()}", *extra)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert not (tmp_path / "in.output.jsonl").exists()


# -- the real server ----------------------------------------------------------------------------------
KEY = "batch-key"


@pytest.fixture(scope="module")
def served(smollm2, tmp_path_factory):
    server = Server(private_env(smollm2, tmp_path_factory.mktemp("batch-served")), "-m", "smollm2", "--parallel", "2",
                    "--ctx-size", "1024", "--api-key", KEY)
    yield server
    server.stop()


def remote_run(pulled, served, *args, **kw):
    return pulled(*args, env={"INFER_HOST": served.url, "INFER_API_KEY": KEY, **kw.pop("env", {})}, **kw)


def mixed(bad: bool = True) -> list:
    """6 chat lines (both forms), 2 completions, and a body the server refuses: temperature 0, 8 tokens."""
    limit = {"temperature": 0, "max_tokens": 8}
    lines = [full(f"chat-{i}", messages=[{"role": "user", "content": f"Say a word about {i}."}], **limit) for i in range(4)]
    lines += [{"prompt": f"Name colour {i}.", "custom_id": f"short-{i}", **limit} for i in range(2)]
    lines += [full(f"comp-{i}", "/v1/completions", prompt=f"{i}, {i + 1},", **limit) for i in range(2)]
    if bad:
        lines.insert(3, full("bad-body", messages=[], **limit))
    return lines


@pytest.mark.model
def test_every_line_once_with_the_openai_shapes(pulled, served, tmp_path):
    src, out = jsonl(tmp_path / "in.jsonl", mixed()), tmp_path / "out.jsonl"
    proc = remote_run(pulled, served, "batch", src, "-o", out, "--parallel", "3", "--json")
    assert proc.returncode == 10, proc.stderr  # the bad body is an error line
    lines = read_out(out)
    assert sorted(line["custom_id"] for line in lines) == sorted(r["custom_id"] for r in mixed())
    for line in lines:
        check_shape(line)
    by_id = {line["custom_id"]: line for line in lines}
    assert by_id["bad-body"]["error"]["code"] and by_id["bad-body"]["error"]["line"] == 4
    objects = {cid: line["response"]["body"]["object"] for cid, line in by_id.items() if line["response"]}
    assert objects == {**{f"chat-{i}": "chat.completion" for i in range(4)},
                       **{f"short-{i}": "chat.completion" for i in range(2)},
                       **{f"comp-{i}": "text_completion" for i in range(2)}}
    assert all(0 < line["response"]["body"]["usage"]["completion_tokens"] <= 8 for line in lines if line["response"])
    summary = json.loads(proc.stdout)
    assert (summary["requests"], summary["ok"], summary["failed"]) == (9, 8, 1)
    assert summary["completion_tokens"] == sum(
        line["response"]["body"]["usage"]["completion_tokens"] for line in lines if line["response"])
    assert json.loads((tmp_path / "out.jsonl.infer.json").read_text())["model"] == {"host": served.url, "name": "smollm2"}


@pytest.mark.model
def test_a_torn_partial_output_is_finished_exactly_once(pulled, served, tmp_path):
    src, out = jsonl(tmp_path / "in.jsonl", mixed(bad=False)), tmp_path / "out.jsonl"
    assert remote_run(pulled, served, "batch", src, "-o", out).returncode == 0
    whole = out.read_bytes().splitlines(keepends=True)
    kept = b"".join(whole[:3])
    out.write_bytes(kept + whole[3][: len(whole[3]) // 2])  # three lines and half of the fourth
    proc = remote_run(pulled, served, "batch", src, "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "cut a torn last line" in proc.stderr
    assert json.loads(proc.stdout)["done_before"] == 3
    assert out.read_bytes().startswith(kept)
    ids = [line["custom_id"] for line in read_out(out)]
    assert sorted(ids) == sorted(r["custom_id"] for r in mixed(bad=False))  # each once


@pytest.mark.model
def test_remote_and_local_give_the_same_ids_and_status_codes(pulled, served, smollm2, tmp_path):
    src = jsonl(tmp_path / "in.jsonl", mixed())
    far, near = tmp_path / "far.jsonl", tmp_path / "near.jsonl"
    a = remote_run(pulled, served, "batch", src, "-o", far)
    b = pulled("batch", src, "-o", near, *on(smollm2), "--ctx-size", "1024")
    assert a.returncode == b.returncode == 10, (a.stderr, b.stderr)

    def statuses(path: Path) -> list:
        return sorted((line["custom_id"], (line["response"] or {}).get("status_code")) for line in read_out(path))

    assert statuses(far) == statuses(near)
    assert len(read_out(far)) == len(read_out(near)) == len(mixed())


@pytest.mark.model
def test_a_local_run_refuses_a_remote_output(pulled, served, smollm2, tmp_path):
    src, out = jsonl(tmp_path / "in.jsonl", mixed(bad=False)[:2]), tmp_path / "out.jsonl"
    assert remote_run(pulled, served, "batch", src, "-o", out).returncode == 0
    proc = pulled("batch", src, "-o", out, *on(smollm2))
    assert proc.returncode == 2 and "a run on the server at" in proc.stderr and "--force" in proc.stderr
    assert len(read_out(out)) == 2
