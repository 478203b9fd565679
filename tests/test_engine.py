"""The scheduler on the real SmolLM2 through llama.cpp: several sequences in one context, cancellation,
the greedy fast path. Counts come from ignore_eos and fixed token limits, never from what the model says;
where two outputs are compared, both were made here, in the same test."""

from __future__ import annotations

import queue
import threading

import pytest

from infer.engine import Done, LoadOptions, Model, Sampling, Text
from infer.engine.scheduler import Request

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def model(smollm2):
    import os

    m = Model(smollm2.path, LoadOptions(n_threads=int(os.environ.get("INFER_TEST_THREADS", "1"))))
    yield m
    m.close()


def prompts(model, n):
    return [model.format_chat([{"role": "user", "content": f"Count to {i + 3}, then say a word."}])[1] for i in range(n)]


def test_parallel_sequences_each_get_their_full_answer(model):
    sched = model.scheduler(4, 512)
    q: queue.SimpleQueue = queue.SimpleQueue()
    for i, tokens in enumerate(prompts(model, 6)):  # more requests than slots: two wait for a free one
        sched.submit(Request(tokens, Sampling(temperature=0.7, seed=i, max_tokens=12 + i, ignore_eos=True), id=str(i)),
                     sink=q)
    dones, texts = {}, {}
    while len(dones) < 6:
        handle, event = q.get(timeout=300)
        if isinstance(event, Text):
            texts[handle.request.id] = texts.get(handle.request.id, "") + event.text
        elif isinstance(event, Done):
            dones[handle.request.id] = event
        else:
            raise AssertionError(event)
    assert {k: d.usage.completion_tokens for k, d in dones.items()} == {str(i): 12 + i for i in range(6)}
    assert all(d.finish_reason == "length" for d in dones.values())
    assert sched.stats() == {"busy": 0, "free": 4, "waiting": 0}


def test_cancelling_one_sequence_leaves_the_others_whole(model):
    sched = model.scheduler(3, 1024)
    q: queue.SimpleQueue = queue.SimpleQueue()
    tokens = prompts(model, 3)
    limits = [40, 900, 40]  # the victim's answer is long enough that no machine finishes it before the cancel lands
    handles = [sched.submit(Request(t, Sampling(temperature=0, max_tokens=n, ignore_eos=True), id=str(i)), sink=q)
               for i, (t, n) in enumerate(zip(tokens, limits))]
    seen = 0
    dones = {}
    while len(dones) < 3:
        handle, event = q.get(timeout=300)
        if isinstance(event, Text) and handle is handles[1]:
            seen += 1
            if seen == 3:
                handles[1].cancel()
        elif isinstance(event, Done):
            dones[handle.request.id] = event
    assert dones["1"].finish_reason == "cancelled" and dones["1"].usage.completion_tokens < 900
    assert dones["0"].usage.completion_tokens == 40 and dones["2"].usage.completion_tokens == 40


def test_greedy_fast_path_matches_llama_cpp_greedy_sampler(model):
    tokens = prompts(model, 1)[0]
    sampling = Sampling(temperature=0, max_tokens=24)
    fast = "".join(e.text for e in model.generate(tokens, sampling) if isinstance(e, Text))
    backend = model.scheduler(1, 512).backend
    backend.new_sampler = model.new_sampler  # llama.cpp's own greedy chain for this one request
    try:
        model._sched.slot_tokens[0].clear()
        backend.forget(0, 0)
        chain = "".join(e.text for e in model.generate(tokens, sampling) if isinstance(e, Text))
    finally:
        del backend.new_sampler
    assert fast == chain


def test_a_consumer_in_another_thread_can_cancel_everything(model):
    sched = model.scheduler(2, 4096)
    handles = [sched.submit(Request(t, Sampling(temperature=0, max_tokens=4000, ignore_eos=True)))
               for t in prompts(model, 2)]
    started = threading.Event()

    def consume(h):
        for e in h:
            started.set()

    threads = [threading.Thread(target=consume, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    started.wait(timeout=300)
    model.cancel_all()
    for t in threads:
        t.join(timeout=300)
    assert all(h.done.finish_reason == "cancelled" for h in handles)


def test_the_argmax_of_a_whole_step_picks_what_one_row_at_a_time_picks(model, monkeypatch):
    """Eight greedy sequences: one argmax over the step's logits (on one thread, or split among threads as on a GPU
    host) gives each the token a per-row argmax gives."""
    from infer.engine import backend as engine_backend

    tokens = prompts(model, 8)
    backend = model.scheduler(8, 512).backend

    def answers() -> dict:
        model._sched.slot_tokens[:] = [[] for _ in range(8)]
        for slot in range(8):
            backend.forget(slot, 0)
        q: queue.SimpleQueue = queue.SimpleQueue()
        with model._sched._cond:  # the scheduler's thread admits all eight at once: they generate in the same steps
            for i, t in enumerate(tokens):
                model._sched.submit(Request(t, Sampling(temperature=0, max_tokens=16, ignore_eos=True), id=str(i)),
                                    sink=q)
        texts, done = {}, 0
        while done < 8:
            handle, event = q.get(timeout=300)
            if isinstance(event, Text):
                texts[handle.request.id] = texts.get(handle.request.id, "") + event.text
            done += isinstance(event, Done)
        return texts

    whole_steps = []
    presample = backend.presample

    def counted(wanted):
        presample(wanted)
        whole_steps.append(len(backend._argmax))

    monkeypatch.setattr(backend, "presample", counted)
    at_once = answers()
    assert max(whole_steps) == 8  # the steps where all eight generated were argmaxed in one pass
    assert backend._pool is None  # on the CPU, one thread
    monkeypatch.setattr(engine_backend, "argmax_parts", lambda rows, n_vocab, on_gpu: 3)
    whole_steps.clear()
    split = answers()
    assert max(whole_steps) == 8 and backend._pool is not None  # split among threads, as on a GPU host
    monkeypatch.setattr(backend, "presample", lambda wanted: None)
    one_by_one = answers()
    assert at_once == split == one_by_one and len(at_once) == 8


def test_argmax_threads_only_for_many_long_rows_on_a_gpu_host():
    from infer.engine.backend import ARGMAX_THREADS, argmax_parts

    assert argmax_parts(64, 128256, on_gpu=False) == 1  # the CPU's cores are llama.cpp's
    assert argmax_parts(8, 49152, on_gpu=True) == 1  # small: one pass is quicker than handing it out
    assert argmax_parts(64, 128256, on_gpu=True) == min(8, ARGMAX_THREADS)
    assert 1 <= argmax_parts(40, 128256, on_gpu=True) <= 5


def test_the_bench_decodes_on_the_thread_that_warmed_the_context_up(model, monkeypatch):
    """llama.cpp's CPU workers belong to the thread that decodes: `infer bench` decoding from the main thread after
    the warm-up in the scheduler's made two sets of them compete (tg at 0.39x of llama-bench on 2 cores)."""
    from infer.engine.backend import LlamaBackend

    threads = []
    decode = LlamaBackend.decode

    def counted(self):
        threads.append(threading.current_thread())
        return decode(self)

    monkeypatch.setattr(LlamaBackend, "decode", counted)
    assert model.bench_pp(32, 512) > 0 and model.bench_tg(4, 512) > 0
    assert len(threads) == 1 + 4  # one prompt batch, four single-token decodes
    assert set(threads) == {model._sched._thread} and model._sched._thread is not threading.current_thread()
