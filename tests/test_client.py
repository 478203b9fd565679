"""`infer run --host` and `infer chat --host` against a stand-in OpenAI-compatible server on loopback.

The stand-in only exercises the client's protocol handling: SSE framing, HTTP errors mapped to exit codes,
error events mid-stream, a connection that breaks, Ctrl-C closing the stream. The real server is compared
with a local run in test_host.py."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import CLOSED, free_port

WORDS = ["Hello", ",", " wor", "ld", "! é", "✓"]


def chunk(text=None, finish=None, model="served-model", completion=False) -> dict:
    choice = {"index": 0, "finish_reason": finish}
    if completion:
        choice["text"] = text or ""
    else:
        choice["delta"] = {"content": text} if text is not None else {}
    return {"id": "x", "object": "chat.completion.chunk", "model": model, "choices": [choice]}


def usage_chunk(prompt=11, completion=len(WORDS)) -> dict:
    return {"id": "x", "model": "served-model", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


class Fake:
    """A loopback HTTP server; `reply(handler, body)` writes each response. Requests are recorded."""

    def __init__(self):
        self.requests: list[dict] = []
        self.reply = self.stream_words
        self.disconnected = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                fake.reply(self, body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def start_stream(h, status=200):
        h.send_response(status)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Connection", "close")
        h.end_headers()

    def stream_words(self, h, body):
        self.start_stream(h)
        completion = h.path.endswith("/completions") and "chat" not in h.path
        for word in WORDS:
            h.wfile.write(sse(chunk(word, completion=completion)))
        h.wfile.write(sse(chunk(finish="length" if body.get("max_tokens") else "stop", completion=completion)))
        h.wfile.write(sse(usage_chunk()))
        h.wfile.write(b"data: [DONE]\n\n")

    def error(self, status, payload, headers=()):
        def reply(h, body):
            raw = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(raw)))
            for k, v in headers:
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(raw)
        self.reply = reply


@pytest.fixture
def fake():
    with Fake() as server:
        yield server


def oai_error(message, code, kind="invalid_request_error"):
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# -- the stream reaches stdout as a local run writes it ------------------------------------------------------

def test_answer_streams_to_stdout_and_the_request_carries_the_options(infer, fake):
    proc = infer("run", "--host", fake.url, "-m", "smollm2", "--seed", "7", "--temperature", "0.3", "-n", "20",
                 "--stop", "END", "-s", "Be terse.", "Say hi", env={"INFER_API_KEY": "s3cret"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "".join(WORDS) + "\n"
    assert proc.stderr == ""
    (req,) = fake.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer s3cret"
    body = req["body"]
    assert body["model"] == "smollm2" and body["stream"] is True
    assert body["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Say hi"}]
    assert (body["seed"], body["temperature"], body["max_tokens"], body["stop"]) == (7, 0.3, 20, ["END"])
    assert {"top_p", "top_k", "min_p", "repeat_penalty"} <= set(body)


def test_catalog_defaults_are_sent_and_raw_uses_completions(infer, fake):
    proc = infer("run", "--raw", "-m", "smollm2", "Once upon a time", env={"INFER_HOST": fake.url})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "".join(WORDS) + "\n"
    (req,) = fake.requests
    assert req["path"] == "/v1/completions"
    assert req["body"]["prompt"] == "Once upon a time" and "messages" not in req["body"]
    assert req["body"]["temperature"] == 0.2  # smollm2's catalog default, as a local run samples
    assert "max_tokens" not in req["body"] and "Authorization" not in req["headers"]


def test_host_with_a_path_prefix_and_v1(infer, fake):
    proc = infer("run", "--host", fake.url + "/v1/", "hi")
    assert proc.returncode == 0, proc.stderr
    assert fake.requests[0]["path"] == "/v1/chat/completions"


def test_json_envelope_is_the_local_one(infer, fake):
    proc = infer("run", "--host", fake.url, "--json", "-n", "6", "hi")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {"model", "text", "finish_reason", "usage", "timings"}
    assert data["model"] == "served-model"
    assert data["text"] == "".join(WORDS)
    assert data["finish_reason"] == "length"
    assert (data["usage"]["prompt_tokens"], data["usage"]["completion_tokens"]) == (11, len(WORDS))
    assert all(isinstance(v, int) for v in data["usage"].values())
    assert set(data["timings"]) == {"load_s", "ttft_s", "prompt_tps", "gen_tps"}
    assert all(isinstance(v, (int, float)) and v >= 0 for v in data["timings"].values())


def test_schema_and_json_format_become_response_format(infer, fake):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert infer("run", "--host", fake.url, "--schema", json.dumps(schema), "x").returncode == 0
    assert infer("run", "--host", fake.url, "--format", "json", "x").returncode == 0
    first, second = (r["body"]["response_format"] for r in fake.requests)
    assert first == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    assert second == {"type": "json_object"}


def test_sse_framing_split_writes_crlf_comments_and_no_final_blank_line(infer, fake):
    def reply(h, body):
        fake.start_stream(h)
        raw = (b": keep-alive\r\n\r\n" + b"event: message\r\n" + sse(chunk("Hel")).replace(b"\n", b"\r\n")
               + b"id: 3\n" + sse(chunk("lo ✓")) + b"data:" + json.dumps(chunk(" there")).encode() + b"\n\n"
               + sse(chunk(finish="stop")) + b"data: [DONE]")
        for i in range(0, len(raw), 7):  # a line, even a UTF-8 character, cut across writes
            h.wfile.write(raw[i:i + 7])
            h.wfile.flush()
    fake.reply = reply
    proc = infer("run", "--host", fake.url, "--json", "hi")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["text"] == "Hello ✓ there"
    assert data["finish_reason"] == "stop"
    assert data["usage"]["completion_tokens"] == 3  # no usage event: counted from the chunks


def test_a_server_that_does_not_stream_still_answers(infer, fake):
    def reply(h, body):
        raw = json.dumps({"model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"},
                                                     "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)
    fake.reply = reply
    proc = infer("run", "--host", fake.url, "--json", "hi")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert (data["text"], data["finish_reason"], data["usage"]["prompt_tokens"]) == ("whole", "stop", 3)


# -- errors: one line, the local exit codes -------------------------------------------------------------------

def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("infer: "), proc.stderr
    return lines[0]


def test_connection_refused_is_a_network_error(infer):
    proc = infer("run", "--host", f"http://127.0.0.1:{free_port()}", "hi")
    assert proc.returncode == 6
    assert proc.stdout == ""
    assert "connection refused" in one_line(proc)


@pytest.mark.parametrize("status, payload, code, words", [
    (401, oai_error("invalid api key", "invalid_api_key", "authentication_error"), 9, "bad API key"),
    (400, oai_error("prompt is 9000 tokens", "context_length_exceeded"), 5, "does not fit"),
    (400, {"error": {"code": 400, "message": "the request exceeds the available context size",
                     "type": "exceed_context_size_error"}}, 5, "does not fit"),
    (404, oai_error("model 'nope' not found", "model_not_found"), 3, "no such model"),
    (404, b"Not Found", 6, "404"),
    (400, oai_error("max_tokens must be positive", "invalid_value"), 2, "max_tokens must be positive"),
    (503, oai_error("queue full", "server_busy", "server_error"), 6, "busy"),
    (500, b"<html>oops</html>", 6, "500"),
])
def test_http_errors_map_to_exit_codes(infer, fake, status, payload, code, words):
    fake.error(status, payload, headers=[("Retry-After", "2")] if status == 503 else [])
    proc = infer("run", "--host", fake.url, "hi")
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    assert words in one_line(proc)


def test_error_event_mid_stream_keeps_the_partial_text(infer, fake):
    def reply(h, body):
        fake.start_stream(h)
        h.wfile.write(sse(chunk("partial")))
        h.wfile.write(sse(oai_error("context is full", "context_length_exceeded")))
        h.wfile.write(b"data: [DONE]\n\n")
    fake.reply = reply
    proc = infer("run", "--host", fake.url, "hi")
    assert proc.returncode == 5
    assert proc.stdout.startswith("partial")
    assert "does not fit" in one_line(proc)


@pytest.mark.parametrize("tail, words", [(b"", "before the answer finished"), (sse(b"{not json"), "malformed")])
def test_a_broken_stream_is_a_network_error_with_the_text_kept(infer, fake, tail, words):
    def reply(h, body):
        fake.start_stream(h)
        h.wfile.write(sse(chunk("partial")) + tail)
    fake.reply = reply
    proc = infer("run", "--host", fake.url, "hi")
    assert proc.returncode == 6
    assert proc.stdout.startswith("partial")
    assert words in one_line(proc)


def test_bad_host_url_and_quant_are_usage_errors(infer):
    assert infer("run", "--host", "ftp://x", "hi").returncode == 2
    proc = infer("run", "--host", CLOSED, "-m", "no-such-alias", "--quant", "Q8_0", "hi")
    assert proc.returncode == 2 and "--quant" in one_line(proc)


# -- Ctrl-C closes the stream: the server sees its client go -----------------------------------------------

def test_ctrl_c_keeps_partial_text_exits_130_and_closes_the_stream(infer, fake):
    def reply(h, body):
        fake.start_stream(h)
        try:
            for i in range(10_000):
                h.wfile.write(sse(chunk(f"{i}, ")))
                h.wfile.flush()
                time.sleep(0.02)
        except OSError:
            fake.disconnected.set()
    fake.reply = reply
    p = infer.popen("run", "--host", fake.url, "count", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.read(12)
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert (first + rest).startswith(b"0, 1, 2, ")
    assert b"interrupted" in err and b"Traceback" not in err
    assert fake.disconnected.wait(30), "the server never saw the client leave"


# -- chat --------------------------------------------------------------------------------------------------

def test_scripted_chat_sends_the_history(infer, fake):
    proc = infer("chat", "--host", fake.url, "--quiet", "-s", "sys", input="Hi there\nAnd again\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ("".join(WORDS) + "\n") * 2
    first, second = (r["body"]["messages"] for r in fake.requests)
    assert first == [{"role": "system", "content": "sys"}, {"role": "user", "content": "Hi there"}]
    assert second == first + [{"role": "assistant", "content": "".join(WORDS)}, {"role": "user", "content": "And again"}]
    assert all("max_tokens" not in r["body"] for r in fake.requests)


def test_chat_model_command_asks_the_server_for_another_model(infer, fake):
    proc = infer("chat", "--host", fake.url, "--quiet", "-m", "smollm2", input="one\n/model acme/other-GGUF:Q8_0\ntwo\n")
    assert proc.returncode == 0, proc.stderr
    assert [r["body"]["model"] for r in fake.requests] == ["smollm2", "acme/other-GGUF:Q8_0"]
    assert fake.requests[1]["body"]["messages"][-1] == {"role": "user", "content": "two"}  # history kept


def test_chat_error_line_and_the_chat_goes_on(infer, fake):
    def reply(h, body):
        if len(fake.requests) == 1:
            fake.error(400, oai_error("too long", "context_length_exceeded"))
            fake.reply(h, body)
            fake.reply = reply
        else:
            fake.stream_words(h, body)
    fake.reply = reply
    proc = infer("chat", "--host", fake.url, "--quiet", "--plain", input="first\nsecond\n")
    assert proc.returncode == 0, proc.stderr
    assert "does not fit" in proc.stderr
    assert proc.stdout.strip() == "".join(WORDS)
    assert fake.requests[1]["body"]["messages"] == [{"role": "user", "content": "second"}]  # the refused one not kept


def slow_count(fake):
    def reply(h, body):
        if body["messages"][-1]["content"] != "count":
            return fake.stream_words(h, body)
        fake.start_stream(h)
        try:
            for i in range(10_000):
                h.wfile.write(sse(chunk(f"{i}, ")))
                h.wfile.flush()
                time.sleep(0.02)
        except OSError:
            fake.disconnected.set()
    return reply


def test_chat_ctrl_c_ends_the_turn_closes_the_stream_and_the_chat_goes_on(infer, fake):
    import pexpect

    from conftest import infer_bin

    fake.reply = slow_count(fake)
    c = pexpect.spawn(infer_bin(), ["chat", "--host", fake.url, "--plain"], env=infer.env, encoding="utf-8",
                      timeout=60, dimensions=(40, 120))
    c.expect(">>> ")
    c.sendline("count")
    c.expect("0, 1, ")
    c.sendintr()
    c.expect("interrupted")
    c.expect(">>> ")
    assert fake.disconnected.wait(30), "the server never saw the client leave"
    c.sendline("hello")
    c.expect("tok/s")  # a complete answer and its stats line
    c.expect(">>> ")
    c.sendline("/bye")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    history = fake.requests[-1]["body"]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[1]["content"].startswith("0, 1, ")  # the partial answer was kept


# -- pure logic: the SSE reader and the error table ---------------------------------------------------------

def test_sse_reader_joins_multiline_data_and_skips_other_fields():
    from infer.client import sse_data

    raw = b"retry: 10\ndata: a\ndata: b\n\n: c\nevent: x\ndata: {}\n\ndata: last"
    assert list(sse_data(io.BytesIO(raw))) == ["a\nb", "{}", "last"]


def test_parse_url_accepts_base_urls():
    from infer.client import parse_url

    assert str(parse_url("127.0.0.1:8080")) == "http://127.0.0.1:8080"
    assert str(parse_url("https://example.org/llm/v1/")) == "https://example.org:443/llm"


def test_host_is_not_imported_by_help(infer):
    probe = ("import sys\nfrom infer.cli.app import main\ntry:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
             "sys.stderr.write('@@' + str(sorted(m for m in ('infer.client', 'http.client', 'llama_cpp') "
             "if m in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=infer.env, timeout=60)
    assert "@@[]" in proc.stderr, proc.stderr
