"""Pure logic of the server, without a model: durations, the LRU unload, request translation."""

from __future__ import annotations

import asyncio
import math

import pytest

pytest.importorskip("fastapi")

from infer.engine import Sampling  # noqa: E402
from infer.errors import UsageError  # noqa: E402
from infer.server import ollama, openai  # noqa: E402
from infer.server.models import Loaded, Manager, canonical_name, parse_duration  # noqa: E402


@pytest.mark.parametrize("value,seconds", [("5m", 300), ("1h30m", 5400), ("30s", 30), ("250ms", 0.25), (10, 10),
                                           ("0", 0), (0, 0), ("-1", math.inf), (-1, math.inf), ("-5m", math.inf),
                                           ("2.5", 2.5)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5x", "m5", "", True, "5m soon"])
def test_bad_durations(value):
    with pytest.raises(UsageError):
        parse_duration(value)


def test_latest_tag_is_the_plain_name():
    assert canonical_name("smollm2:latest") == "smollm2" and canonical_name("a/b:Q8_0") == "a/b:Q8_0"


class FakeSched:
    def __init__(self, busy=0):
        self.busy = busy

    def stats(self):
        return {"busy": self.busy, "free": 1, "waiting": 0}


class FakeModel:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


def test_least_recently_used_idle_models_are_unloaded_to_make_room():
    async def scenario():
        m = Manager(None, parallel=1, ctx_size=None, keep_alive=300, memory_limit=1000)
        for name, used, busy in (("old", 1.0, 0), ("busy", 0.5, 1), ("new", 3.0, 0)):
            m.loaded[name] = Loaded(name=name, model=FakeModel(), sched=FakeSched(busy), path="", size=0, estimate=300,
                                    kv_bytes=0, keep_alive=300, last_used=used)
        await m._make_room(300)  # 900 + 300 > 1000: one must go; "busy" is older but busy
        assert set(m.loaded) == {"busy", "new"}
        await m._make_room(200)  # 600 + 200 fits: nothing more
        assert set(m.loaded) == {"busy", "new"}

    asyncio.run(scenario())


def test_keep_alive_reaps_only_idle_expired_models():
    async def scenario():
        m = Manager(None, parallel=1, ctx_size=None, keep_alive=300)
        m.loaded["gone"] = Loaded(name="gone", model=FakeModel(), sched=FakeSched(), path="", size=0, estimate=1,
                                  kv_bytes=0, keep_alive=0, last_used=0.0)
        m.loaded["busy"] = Loaded(name="busy", model=FakeModel(), sched=FakeSched(1), path="", size=0, estimate=1,
                                  kv_bytes=0, keep_alive=0, last_used=0.0)
        m.loaded["kept"] = Loaded(name="kept", model=FakeModel(), sched=FakeSched(), path="", size=0, estimate=1,
                                  kv_bytes=0, keep_alive=math.inf, last_used=0.0)
        await m.reap()
        assert set(m.loaded) == {"busy", "kept"}

    asyncio.run(scenario())


def test_openai_sampling_and_choices():
    body = openai.ChatRequest.model_validate({"messages": [{"role": "developer", "content": [{"type": "text", "text": "x"}]}],
                                              "temperature": 0.3, "seed": 5, "stop": "END", "n": 3,
                                              "max_completion_tokens": 7})
    assert body.chat_messages() == [{"role": "system", "content": "x"}]
    s = openai.sampling(body, Sampling(), body.limit(), None)
    assert (s.temperature, s.seed, s.stop, s.max_tokens) == (0.3, 5, ("END",), 7)
    assert [c.seed for c in openai.seeds(s, 3)] == [5, 6, 7]
    assert openai.schema_of(body) == (False, None)
    with pytest.raises(ValueError):
        openai.schema_of(openai.ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}],
                                                           "response_format": {"type": "json_schema"}}))


def test_ollama_options():
    o = ollama.Options.model_validate({"num_predict": -1, "stop": "x", "top_k": 3})
    s = ollama.sampling(o, Sampling(), None)
    assert s.max_tokens is None and s.stop == ("x",) and s.top_k == 3
    assert ollama.format_of("json") == (True, None) and ollama.format_of({"type": "object"}) == (True, {"type": "object"})


def test_completion_logprobs_offsets_run_on_across_chunks_and_hold_the_sampled_token():
    from infer.engine import TokenLogprob

    shape = openai.Logprobs(chat=False)
    euro = "€".encode()  # three bytes, split over two tokens: its character starts where the first one is
    first = shape([TokenLogprob(b"ab", -0.1, ((b"ab", -0.1), (b"x", -3.0))), TokenLogprob(euro[:2], -0.2)])
    second = shape([TokenLogprob(euro[2:], -0.3), TokenLogprob(b"c", -4.0, ((b"d", -1.0),))])
    assert first["text_offset"] + second["text_offset"] == [0, 2, 2, 3]
    assert first["top_logprobs"][0] == {"ab": -0.1, "x": -3.0} and second["top_logprobs"][1] == {"d": -1.0, "c": -4.0}
    chat = openai.Logprobs(chat=True)([TokenLogprob(euro[:2], -0.2, ((euro[:2], -0.2),))])
    assert chat["content"][0]["bytes"] == list(euro[:2]) and chat["content"][0]["top_logprobs"][0]["logprob"] == -0.2


def test_logprobs_requests():
    chat = lambda **kw: openai.ChatRequest.model_validate({"messages": [{"role": "user", "content": "x"}], **kw})  # noqa: E731
    assert chat().logprobs_top() is None and chat(logprobs=True).logprobs_top() == 0
    assert chat(logprobs=True, top_logprobs=5).logprobs_top() == 5
    with pytest.raises(ValueError):
        chat(top_logprobs=2).logprobs_top()
    assert openai.CompletionRequest.model_validate({"prompt": "x", "logprobs": 3}).logprobs_top() == 3
    assert openai.CompletionRequest.model_validate({"prompt": "x"}).limit() is None  # no max_tokens: no limit


def test_usage_reports_drafts_as_predicted_output_counts():
    from infer.engine import Done, Timings, Usage

    timings = Timings(0, 0, 0, 0, 0, 0)
    dones = [Done("stop", Usage(10, 5, 2, drafted=6, accepted=4), timings), Done("stop", Usage(10, 3, 10), timings)]
    u = openai.usage(dones)
    assert (u["prompt_tokens"], u["completion_tokens"], u["prompt_tokens_details"]["cached_tokens"]) == (10, 8, 2)
    assert u["completion_tokens_details"] == {"accepted_prediction_tokens": 4, "rejected_prediction_tokens": 2}
