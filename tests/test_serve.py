"""`infer serve`, OpenAI side and the server's own behaviour: the real server on a free port, the real SmolLM2,
driven by the official `openai` client and raw HTTP. No assertion on what the model says."""

from __future__ import annotations

import json
import signal
import subprocess
import threading

import httpx
import jsonschema
import pytest

from conftest import infer_bin
from serving import Server, metric, private_env

pytestmark = pytest.mark.model

PARALLEL = 4
CTX = 512
# A grammar that cannot end before ~200 tokens: the sequence is surely still busy when the test acts.
LONG = {"type": "json_schema", "json_schema": {"name": "long", "schema": {
    "type": "array", "items": {"type": "integer"}, "minItems": 100}}}


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    s = Server(private_env(smollm2, tmp_path_factory.mktemp("serve")), "-m", "smollm2", "--parallel", str(PARALLEL),
               "-c", str(CTX), "--max-queue", "8")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def small(smollm2, tmp_path_factory):
    """One sequence, a queue of one, and an API key."""
    s = Server(private_env(smollm2, tmp_path_factory.mktemp("small")), "-m", "smollm2", "--parallel", "1",
               "-c", "512", "--max-queue", "1", "--api-key", "sekret")
    yield s
    s.stop()


def client(server, key="none"):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def chat_body(**extra) -> dict:
    return {"model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, **extra}


def sse_events(response: httpx.Response) -> list[str]:
    """The data of each SSE event; the framing is checked on the way (data lines, blank-line separated)."""
    raw = response.read().decode("utf-8")
    assert raw.endswith("\n\n"), raw[-200:]
    events = []
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: ") and "\n" not in block, block
        events.append(block[len("data: "):])
    return events


# -- the OpenAI API through the official client --------------------------------------------------------------------
def test_chat_completion(server):
    r = client(server).chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == "smollm2"
    [choice] = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 <= r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_with_usage(server):
    stream = client(server).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=6, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 6
    text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(text_chunks) <= chunks[-1].usage.completion_tokens


def test_completions_and_n_choices(server):
    r = client(server).completions.create(model="smollm2", prompt="Once upon a time", max_tokens=5, n=2, seed=3)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(isinstance(c.text, str) and c.finish_reason in ("stop", "length") for c in r.choices)
    assert r.usage.completion_tokens <= 10
    stream = client(server).completions.create(model="smollm2", prompt="Once upon a time", max_tokens=4, stream=True)
    assert sum(1 for c in stream if c.choices and c.choices[0].finish_reason) == 1


def test_json_schema_response_format(server):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    r = client(server).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Is water wet? Answer in JSON."}], max_tokens=60,
        temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = client(server).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Give a JSON object."}], max_tokens=8,
        response_format={"type": "json_object"})
    assert r.choices[0].message.content.lstrip().startswith("{")  # the JSON grammar's root is an object


def test_models_list(server):
    ids = [m.id for m in client(server).models.list()]
    assert "smollm2" in ids


def test_embeddings(server):
    r = client(server).embeddings.create(model="smollm2", input=["a cat", "a dog"])  # the client asks for base64
    assert [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) == len(r.data[1].embedding) > 0
    assert r.usage.prompt_tokens > 0
    floats = httpx.post(server.url + "/v1/embeddings", json={"model": "smollm2", "input": ["a cat"]}, timeout=120).json()
    assert len(floats["data"][0]["embedding"]) == len(r.data[0].embedding)
    assert abs(sum(x * x for x in floats["data"][0]["embedding"]) - 1) < 1e-3  # L2-normalised


def test_sse_framing_ends_with_done(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=chat_body(stream=True), timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and len(c["choices"]) == 1 for c in chunks)
    assert sum(1 for c in chunks if c["choices"][0]["finish_reason"]) == 1


# -- bad input: the right status and body, and the server keeps serving ------------------------------------------
BAD = [
    ("malformed JSON", b'{"messages": [', 400, None),
    ("wrong shape", {"messages": "hello"}, 400, None),
    ("not an object", [1, 2, 3], 400, None),
    ("unknown model", {"model": "nobody/nothing-GGUF", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "model_not_found"),
    ("empty messages", {"model": "smollm2", "messages": []}, 400, None),
    ("unknown role", {"model": "smollm2", "messages": [{"role": "wizard", "content": "hi"}]}, 400, None),
    ("negative max_tokens", chat_body(max_tokens=-1), 400, None),
    ("absurd max_tokens", chat_body(max_tokens=10 ** 12), 400, None),
    ("max_tokens beyond the context", chat_body(max_tokens=100_000), 400, "context_length_exceeded"),
    ("prompt over the context", {"model": "smollm2", "messages": [{"role": "user", "content": "word " * 3000}]}, 400,
     "context_length_exceeded"),
    ("n beyond the sequences", chat_body(n=PARALLEL + 1), 400, None),
    ("bad JSON schema", chat_body(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "banana"}}}), 400, None),
    ("invalid UTF-8", b'{"model": "smollm2", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
]


@pytest.mark.parametrize("body,status,code", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(server, body, status, code):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.url + "/v1/chat/completions", headers={"content-type": "application/json"}, timeout=60, **kw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["code"], str) and error["message"]
    if code:
        assert error["code"] == code
    assert httpx.get(server.url + "/health").status_code == 200


def test_huge_body_and_unknown_routes(server):
    r = httpx.post(server.url + "/v1/chat/completions", content=b"x" * (10 * 1024 * 1024),
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.get(server.url + "/v1/nothing-here")
    assert r.status_code == 404 and isinstance(r.json()["error"]["code"], str)
    r = httpx.post(server.url + "/api/nothing-here", json={})
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    assert client(server).chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=2).choices


def test_access_log_has_no_prompt_text(server):
    marker = "zebra-marker-7781"
    client(server).chat.completions.create(model="smollm2", messages=[{"role": "user", "content": marker}], max_tokens=2)
    server.wait_for(lambda: any("POST /v1/chat/completions 200" in line for line in server.lines))
    assert marker not in server.stderr


# -- concurrency ---------------------------------------------------------------------------------------------------
def test_eight_streaming_clients_complete(server):
    results: list = [None] * 8

    def one(i: int) -> None:
        with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=300,
                          json=chat_body(stream=True, max_tokens=6, seed=i)) as r:
            results[i] = (r.status_code, sse_events(r))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for status, events in results:
        assert status == 200 and events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all("error" not in c for c in chunks)
        assert sum(1 for c in chunks if c["choices"][0]["finish_reason"]) == 1


def test_disconnect_frees_its_sequence(server):
    def cancelled() -> float:
        return metric(httpx.get(server.url + "/metrics").text, "infer_finished_requests_total", reason="cancelled")

    before = cancelled()
    body = chat_body(stream=True, max_tokens=300, response_format=LONG)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # generating: leave mid-stream
    server.wait_for(lambda: cancelled() == before + 1, timeout=30)
    server.wait_for(lambda: metric(httpx.get(server.url + "/metrics").text, "infer_busy_sequences", model="smollm2") == 0)
    ps = httpx.get(server.url + "/api/ps").json()["models"][0]
    assert ps["sequences"]["busy"] == 0 and ps["sequences"]["free"] == PARALLEL


def test_disconnect_while_reading_the_prompt_frees_its_sequence(server):
    def cancelled() -> float:
        return metric(httpx.get(server.url + "/metrics").text, "infer_finished_requests_total", reason="cancelled")

    before = cancelled()
    body = {"model": "smollm2", "prompt": "word " * 250, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200  # headers come at once; the first text only after the prompt is read
    server.wait_for(lambda: cancelled() == before + 1, timeout=60)
    server.wait_for(lambda: metric(httpx.get(server.url + "/metrics").text, "infer_busy_sequences", model="smollm2") == 0)


def test_a_slow_reader_holds_up_nobody(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=chat_body(stream=True, max_tokens=40),
                      timeout=120) as slow:
        next(slow.iter_lines())  # then reads nothing more
        r = httpx.post(server.url + "/v1/chat/completions", json=chat_body(), timeout=120)
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_hundred_connections_at_once(server):
    statuses: list[int] = []

    def one(i: int) -> None:
        path = "/v1/models" if i % 2 else "/api/version"
        statuses.append(httpx.get(server.url + path, timeout=120).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses == [200] * 100


def test_queue_full_is_503_and_a_queued_client_can_leave(small):
    auth = {"Authorization": "Bearer sekret"}
    body = chat_body(stream=True, max_tokens=300, response_format=LONG)
    queue = lambda: httpx.get(small.url + "/api/ps", headers=auth).json()["models"][0]["queue"]  # noqa: E731
    with httpx.stream("POST", small.url + "/v1/chat/completions", json=body, headers=auth, timeout=120) as running:
        next(running.iter_lines())  # admitted (the role chunk comes first)
        small.wait_for(lambda: httpx.get(small.url + "/api/ps", headers=auth).json()["models"][0]["sequences"]["busy"])
        with httpx.stream("POST", small.url + "/v1/chat/completions", json=body, headers=auth, timeout=120):
            small.wait_for(lambda: queue() == 1)
            r = httpx.post(small.url + "/v1/chat/completions", json=chat_body(), headers=auth, timeout=60)
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "queue_full"
        small.wait_for(lambda: queue() == 0)  # the queued client left: its place is free
    small.wait_for(lambda: httpx.get(small.url + "/api/ps", headers=auth).json()["models"][0]["sequences"]["busy"] == 0)


# -- security --------------------------------------------------------------------------------------------------------
def test_api_key_on_every_route_but_health(small):
    assert httpx.get(small.url + "/health").status_code == 200
    for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/api/ps"), ("GET", "/api/tags"),
                         ("POST", "/v1/chat/completions"), ("POST", "/api/chat")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.request(method, small.url + path, json=chat_body(), headers=headers)
            assert r.status_code == 401, (path, r.text)
    import openai

    with pytest.raises(openai.AuthenticationError):
        client(small, key="wrong").models.list()
    assert client(small, key="sekret").chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=2).choices


def test_non_loopback_host_without_key_is_refused(infer):
    proc = infer("serve", "--host", "0.0.0.0", "--port", "0", timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "--api-key" in proc.stderr


def test_cors_is_off_by_default(server):
    r = httpx.options(server.url + "/v1/models", headers={"Origin": "http://evil.example",
                                                          "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers


# -- observability ---------------------------------------------------------------------------------------------------
def test_metrics_and_ps(server, pulled):
    client(server).chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "infer_requests_total", endpoint="/v1/chat/completions", status="200") >= 1
    assert metric(text, "infer_loaded_models") == 1
    assert metric(text, "infer_completion_tokens_total", model="smollm2") >= 1
    assert "infer_time_to_first_token_seconds_bucket" in text and "infer_inter_token_latency_seconds_bucket" in text
    proc = pulled("ps", "--json", env={"INFER_HOST": server.url}, check=True)
    [row] = json.loads(proc.stdout)["models"]
    assert row["name"] == "smollm2" and row["context_length"] == CTX and row["kv_bytes"] > 0
    assert row["sequences"]["busy"] + row["sequences"]["free"] == PARALLEL
    table = pulled("ps", "--host", server.url, check=True).stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "BUSY", "FREE", "QUEUE"] and table[1].split()[0] == "smollm2"


def test_ps_without_a_server(pulled):
    proc = pulled("ps", "--host", "http://127.0.0.1:9")
    assert proc.returncode == 6 and proc.stdout == "" and "infer serve" in proc.stderr


def test_start_up_numbers(server):
    line = next(line for line in server.lines if line.startswith("model smollm2:"))
    assert f"{PARALLEL} sequences x {CTX} tokens" in line and "KV cache" in line


# -- shutdown --------------------------------------------------------------------------------------------------------
def test_sigterm_during_a_stream_ends_cleanly(smollm2, tmp_path):
    s = Server(private_env(smollm2, tmp_path), "-m", "smollm2", "--parallel", "1", "-c", "512",
               "--shutdown-timeout", "0.5")
    try:
        body = chat_body(stream=True, max_tokens=300, response_format=LONG)
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=120) as r:
            lines = r.iter_lines()
            next(lines)
            s.proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        for line in rest[:-1]:
            json.loads(line[len("data: "):])  # every event whole: nothing half-written
        assert s.proc.wait(60) == 0
        assert "stopped (SIGTERM)" in s.stderr
    finally:
        s.stop()


def test_serve_refuses_a_model_that_is_not_pulled(infer):
    proc = subprocess.run([infer_bin(), "serve", "-m", "acme/not-here-GGUF", "--port", "0"], capture_output=True,
                          text=True, env=infer.env, timeout=60)
    assert proc.returncode == 3 and "not pulled" in proc.stderr


def test_a_chat_that_resends_its_history_reads_only_the_new_turn(server):
    """The OpenAI client resends the whole conversation each turn; the server's slot keeps the KV of the last
    one, so every turn after the first reports the earlier turns as cached (usage.prompt_tokens_details)."""
    c = client(server)
    messages = [{"role": "system", "content": "You are terse."}]
    previous_prompt, cached = 0, []
    for turn in range(6):
        messages.append({"role": "user", "content": f"Turn {turn}: name a number."})
        r = c.chat.completions.create(model="smollm2", messages=messages, max_tokens=8, temperature=0)
        messages.append({"role": "assistant", "content": r.choices[0].message.content or ""})
        hit = r.usage.prompt_tokens_details.cached_tokens
        if turn:
            assert hit >= previous_prompt - 2, (turn, hit, previous_prompt)
        cached.append(hit)
        previous_prompt = r.usage.prompt_tokens
    assert cached == sorted(cached) and cached[-1] > cached[1] > 0


# -- /v1/completions without max_tokens --------------------------------------------------------------------------------
RAW_PROMPT = "The three primary colours are"


def test_completions_without_max_tokens_run_to_the_end(server):
    """No max_tokens: until the model stops or the sequence's context is full (llama-server's rule, not OpenAI's
    16), so the answer is the one a limit as large as the context allows gives."""
    def complete(**extra) -> dict:
        r = httpx.post(server.url + "/v1/completions", json={"model": "smollm2", "prompt": RAW_PROMPT,
                                                             "temperature": 0, **extra}, timeout=600)
        assert r.status_code == 200, r.text
        return r.json()

    endless = complete(ignore_eos=True)  # reads the prompt whole; the runs below reuse it and read its last token
    room = CTX - endless["usage"]["prompt_tokens"]
    assert endless["choices"][0]["finish_reason"] == "length" and endless["usage"]["completion_tokens"] == room
    unlimited, limited = complete(), complete(max_tokens=room)
    assert unlimited["usage"]["completion_tokens"] == limited["usage"]["completion_tokens"]
    assert unlimited["choices"][0]["text"] == limited["choices"][0]["text"]


def test_run_raw_against_the_server_without_n_is_a_local_run_raw(server, pulled):
    prompt_tokens = httpx.post(server.url + "/v1/completions", timeout=120, json={
        "model": "smollm2", "prompt": RAW_PROMPT, "max_tokens": 1}).json()["usage"]["prompt_tokens"]
    run = lambda *args: pulled("run", "--raw", "--temperature", "0", *args, RAW_PROMPT,  # noqa: E731
                               env={"INFER_HOST": server.url}, check=True, timeout=600)
    assert run().stdout == run("-n", str(CTX - prompt_tokens)).stdout


# -- logprobs ----------------------------------------------------------------------------------------------------------
FRUITS = [{"role": "user", "content": "Name three fruits."}]


def check_chat_logprobs(entries, top: int) -> None:
    """Each entry: a logprob <= 0, `top` alternatives most likely first, and (greedy) the token is the likeliest."""
    for e in entries:
        alternatives = [t.logprob for t in e.top_logprobs]
        assert e.logprob <= 0 and len(alternatives) == top and alternatives == sorted(alternatives, reverse=True)
        assert all(isinstance(t.token, str) and t.bytes is not None for t in e.top_logprobs)
        assert e.logprob == max(alternatives)  # temperature 0: the chosen token is the most likely one


def test_chat_logprobs(server):
    r = client(server).chat.completions.create(model="smollm2", messages=FRUITS, max_tokens=12, temperature=0,
                                               logprobs=True, top_logprobs=3)
    [choice] = r.choices
    assert len(choice.logprobs.content) == r.usage.completion_tokens
    check_chat_logprobs(choice.logprobs.content, 3)
    text = b"".join(bytes(e.bytes) for e in choice.logprobs.content).decode("utf-8", "replace")
    assert text == choice.message.content  # the tokens are the answer's, in order


def test_chat_logprobs_streamed(server):
    chunks = list(client(server).chat.completions.create(
        model="smollm2", messages=FRUITS, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3, stream=True,
        stream_options={"include_usage": True}))
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == chunks[-1].usage.completion_tokens
    check_chat_logprobs(entries, 3)
    text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert all(c.choices[0].logprobs.content for c in text_chunks)  # each text chunk carries its tokens' logprobs
    r = client(server).chat.completions.create(model="smollm2", messages=FRUITS, max_tokens=3, stream=False)
    assert r.choices[0].logprobs is None  # not asked for: null, as before


@pytest.mark.parametrize("stream", [False, True])
def test_completion_logprobs(server, stream):
    r = client(server).completions.create(model="smollm2", prompt="Once upon a time", max_tokens=8, temperature=0,
                                          logprobs=2, stream=stream, stream_options={"include_usage": True} if stream
                                          else None)
    if stream:
        chunks = list(r)
        usage = chunks[-1].usage
        parts = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
        fields = {k: [x for p in parts for x in getattr(p, k)] for k in ("tokens", "token_logprobs", "top_logprobs",
                                                                        "text_offset")}
    else:
        usage = r.usage
        fields = {k: getattr(r.choices[0].logprobs, k) for k in ("tokens", "token_logprobs", "top_logprobs",
                                                                 "text_offset")}
    assert [len(v) for v in fields.values()] == [usage.completion_tokens] * 4
    assert fields["text_offset"][:1] == [0] and fields["text_offset"] == sorted(fields["text_offset"])
    for token, value, top in zip(fields["tokens"], fields["token_logprobs"], fields["top_logprobs"]):
        assert value <= 0 and 2 <= len(top) <= 3 and top[token] == value  # the sampled token is always there
        assert value == max(top.values())  # temperature 0


BAD_LOGPROBS = [
    ("/v1/chat/completions", chat_body(logprobs=True, top_logprobs=21)),
    ("/v1/chat/completions", chat_body(logprobs=True, top_logprobs=-1)),
    ("/v1/chat/completions", chat_body(top_logprobs=2)),  # top_logprobs without logprobs
    ("/v1/completions", {"model": "smollm2", "prompt": "hi", "logprobs": 6}),
    ("/v1/completions", {"model": "smollm2", "prompt": "hi", "logprobs": -1}),
]


@pytest.mark.parametrize("path,body", BAD_LOGPROBS, ids=["top 21", "top -1", "top without logprobs", "completions 6",
                                                         "completions -1"])
def test_bad_logprobs_are_400(server, path, body):
    r = httpx.post(server.url + path, json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "logprobs" in error["param"]


# -- n choices share the prompt's KV ---------------------------------------------------------------------------------
def test_n_choices_read_the_prompt_once(server):
    def prefilled() -> float:
        return metric(httpx.get(server.url + "/metrics").text, "infer_prefill_tokens_total", model="smollm2")

    story = "Write a story about a lighthouse keeper called Zoltan-3141 who finds a map in a bottle. " * 3
    before = prefilled()
    r = client(server).chat.completions.create(model="smollm2", messages=[{"role": "user", "content": story}],
                                               max_tokens=6, n=3, temperature=0.9, seed=11)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in r.choices) and r.usage.completion_tokens <= 18
    read = r.usage.prompt_tokens - r.usage.prompt_tokens_details.cached_tokens
    assert r.usage.prompt_tokens > 60 and read > 30  # counted once, as OpenAI does; mostly new to the server
    assert prefilled() - before == read  # one prefill: the other two choices copied its KV


def test_greedy_choices_from_copied_kv_are_one_answer(server):
    """At temperature 0 every choice is the first one's answer: the copied KV is the prompt the first one read."""
    r = client(server).completions.create(model="smollm2", prompt="A list of the planets: Mercury,", max_tokens=16,
                                          n=3, temperature=0)
    assert len({c.text for c in r.choices}) == 1 and len({c.finish_reason for c in r.choices}) == 1
    assert r.usage.completion_tokens % 3 == 0


# -- serve --lookup --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lookup_server(smollm2, tmp_path_factory):
    s = Server(private_env(smollm2, tmp_path_factory.mktemp("lookup")), "-m", "smollm2", "--parallel", str(PARALLEL),
               "-c", str(CTX), "--lookup")
    yield s
    s.stop()


def test_lookup_server_gives_the_plain_server_s_text_and_reports_its_drafts(server, lookup_server):
    # A `const` schema makes the answer a copy of the prompt's text whatever the model would say, so the n-grams
    # match: drafts are certain, and the forced tokens accept them.
    text = " ".join(f"item number {i}" for i in range(20))
    body = {"model": "smollm2", "messages": [{"role": "user", "content": f"Repeat this list exactly.\n\n{text}"}],
            "max_tokens": 200, "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {
                "name": "copy", "schema": {"type": "string", "const": text}}}}
    plain, fast = (client(s).chat.completions.create(**body) for s in (server, lookup_server))
    assert fast.choices[0].message.content == plain.choices[0].message.content
    assert json.loads(fast.choices[0].message.content) == text and fast.choices[0].finish_reason == "stop"
    assert fast.usage.completion_tokens == plain.usage.completion_tokens
    kept, dropped = (fast.usage.completion_tokens_details.accepted_prediction_tokens,
                     fast.usage.completion_tokens_details.rejected_prediction_tokens)
    assert kept > 0 and dropped >= 0  # drafted = kept + dropped
    assert plain.usage.completion_tokens_details.accepted_prediction_tokens == 0
    assert plain.usage.completion_tokens_details.rejected_prediction_tokens == 0


@pytest.fixture(scope="module")
def draft_server(smollm2, tmp_path_factory):
    s = Server(private_env(smollm2, tmp_path_factory.mktemp("draft")), "-m", "smollm2", "--parallel", "1",
               "-c", str(CTX), "--draft", str(smollm2.path))
    yield s
    s.stop()


def test_draft_model_server_gives_the_plain_server_s_text(server, draft_server):
    # The model drafting for itself at temperature 0: its proposals are its own greedy choices, so some are kept.
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Count from one to twenty in words."}],
            "max_tokens": 40, "temperature": 0}
    plain, fast = (client(s).chat.completions.create(**body) for s in (server, draft_server))
    assert fast.choices[0].message.content == plain.choices[0].message.content
    assert fast.usage.completion_tokens == plain.usage.completion_tokens
    if plain.usage.completion_tokens > 8:
        assert fast.usage.completion_tokens_details.accepted_prediction_tokens > 0


@pytest.mark.parametrize("args", [["--lookup", "--draft-max", "0"], ["--draft-max", "4"], ["--lookup", "--ngram", "9"]])
def test_serve_refuses_bad_speculation_values(infer, args):
    proc = infer("serve", "--port", "0", *args, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1
