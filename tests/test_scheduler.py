"""The scheduler's logic with a fake decoder: admission, chunked prefill, slot reuse, cancellation, failures.

The fake keeps a KV cache per sequence and checks every position the scheduler gives it, so a batch
that skips, repeats or mixes up positions fails the test."""

from __future__ import annotations

import queue

import pytest

from infer.engine import Done, Failed, Sampling, Text
from infer.engine.scheduler import Request, Scheduler
from infer.errors import ContextOverflow, InferError, UsageError

EOG = 0


class FakeBackend:
    """Each sequence 'generates' its last token + 1 (EOG at `eog_after` tokens); pieces are 't<N> '."""

    def __init__(self, n_seq=2, n_ctx_seq=64, n_batch=16, eog_after=None, cycle=None):
        self.n_seq, self.n_ctx_seq, self.n_batch = n_seq, n_ctx_seq, n_batch
        self.kv = [[] for _ in range(n_seq)]
        self.pending = []
        self.batches = []  # each decoded batch as [(token, pos, seq, logits)]
        self.samplers_live = 0
        self.eog_after = eog_after
        self.fail_next = False
        self.cycle = cycle  # tokens follow 1..cycle round and round (text that repeats: speculation hits)
        self.logprob_reads = 0
        self.copies = []
        self.clock = None
        self.samples = 0  # calls of sample(), all steps together

    def add(self, token, pos, seq, logits):
        assert len(self.pending) < self.n_batch, "batch overflow"
        self.pending.append((token, pos, seq, logits))

    def decode(self):
        batch, self.pending = self.pending, []
        if self.clock is not None:  # the time this hardware would take for the batch
            self.clock.now += self.clock.per_token * len(batch)
        if self.fail_next:
            self.fail_next = False
            raise InferError("decode failed")
        for token, pos, seq, _ in batch:
            assert pos == len(self.kv[seq]), f"seq {seq}: position {pos} but the KV holds {len(self.kv[seq])}"
            assert pos < self.n_ctx_seq
            self.kv[seq].append(token)
        self.batches.append(batch)
        self.outputs = [(seq, token) for token, _, seq, logits in batch if logits]

    def presample(self, wanted):
        self.presampled = [i for _, i in wanted]

    def sample(self, sampler, index):
        assert index in self.presampled, "sampled a row that presample was not told of"
        token, _, seq, logits = self.batches[-1][index]
        assert logits, "sampled a position that has no logits"
        self.samples += 1
        n_gen = sampler["n"]
        sampler["n"] += 1
        if self.eog_after is not None and n_gen >= self.eog_after:
            return EOG
        return self.follows(token)

    def follows(self, token):
        if self.cycle:
            return token % self.cycle + 1
        return token + 1 if token + 1 != EOG else 1

    def logprobs(self, index, token, top):
        """A made-up distribution; checks that it is read from the row the token was sampled from."""
        before, _, _, logits = self.batches[-1][index]
        assert logits and token == self.follows(before), "logprobs read from another row than the token's"
        self.logprob_reads += 1
        return -0.5, [(token, -0.5), (EOG, -1.5), (99, -2.5)][:top]

    def forget(self, seq, start):
        del self.kv[seq][start:]

    def copy(self, src, dst):
        self.kv[dst] = list(self.kv[src])
        self.copies.append((src, dst))

    def new_sampler(self, sampling):
        self.samplers_live += 1
        return {"n": 0}

    def free_sampler(self, sampler):
        self.samplers_live -= 1

    def is_eog(self, token):
        return token == EOG

    def piece(self, token):
        return f"t{token} ".encode()


class FakeClock:
    """The scheduler's clock: decoding a batch takes `per_token` seconds a token (FakeBackend advances it)."""

    def __init__(self, per_token: float):
        self.now, self.per_token = 1000.0, per_token

    def perf_counter(self) -> float:
        return self.now


def timed(b: FakeBackend, monkeypatch, per_token: float) -> FakeBackend:
    import infer.engine.scheduler as scheduler_module

    b.clock = FakeClock(per_token)
    monkeypatch.setattr(scheduler_module, "time", b.clock)
    return b


def run_all(sched: Scheduler, limit: int = 1000) -> None:
    for _ in range(limit):
        if not sched.step() and not sched.waiting:
            return
    raise AssertionError("the scheduler did not settle")


def collect(handle_events: list) -> tuple[str, Done | None]:
    text = "".join(e.text for e in handle_events if isinstance(e, Text))
    done = next((e for e in handle_events if isinstance(e, Done)), None)
    return text, done


def drain(q: queue.SimpleQueue) -> dict:
    out: dict = {}
    while not q.empty():
        handle, event = q.get()
        out.setdefault(handle.request.id, []).append(event)
    return out


def req(rid: str, tokens, max_tokens=4, **kw) -> Request:
    return Request(tokens=list(tokens), sampling=Sampling(temperature=0, max_tokens=max_tokens, **kw), id=rid)


def test_one_request_reads_its_prompt_then_generates_to_the_limit():
    b = FakeBackend(n_seq=1)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    s.submit(req("a", [5, 6, 7], max_tokens=3), sink=q)
    run_all(s)
    text, done = collect(drain(q)["a"])
    assert text == "t8 t9 t10 "
    assert done.finish_reason == "length" and done.usage.completion_tokens == 3 and done.usage.prompt_tokens == 3
    # prompt in one decode, then one token per step; the last sampled token is never decoded
    assert [len(x) for x in b.batches] == [3, 1, 1]
    assert b.samplers_live == 0


def test_eog_ends_with_stop_and_stop_strings_cut_the_text():
    b = FakeBackend(n_seq=1, eog_after=2)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    s.submit(req("eog", [1], max_tokens=10), sink=q)
    s.submit(req("stop", [20], max_tokens=10, stop=("t23",)), sink=q)
    run_all(s)
    events = drain(q)
    assert collect(events["eog"])[1].finish_reason == "stop"
    text, done = collect(events["stop"])
    assert done.finish_reason == "stop" and "t23" not in text and text.startswith("t21 ")


def test_many_requests_share_steps_and_a_freed_slot_is_taken_mid_flight():
    b = FakeBackend(n_seq=2, n_batch=32)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    s.submit(req("short", [1, 2], max_tokens=1), sink=q)
    s.submit(req("long", [10, 11], max_tokens=6), sink=q)
    s.submit(req("late", [30, 31], max_tokens=2), sink=q)
    run_all(s)
    events = drain(q)
    assert {k: collect(v)[1].usage.completion_tokens for k, v in events.items()} == {"short": 1, "long": 6, "late": 2}
    # the first decode holds both prompts; "late" is admitted into short's slot while "long" still generates
    assert {seq for _, _, seq, _ in b.batches[0]} == {0, 1}
    late_prompt = next(i for i, batch in enumerate(b.batches) if any(t == 30 for t, *_ in batch))
    assert any(t not in (30, 31) for t, *_ in b.batches[late_prompt]), "late's prompt should share a step with long"
    assert b.samplers_live == 0


def test_chunked_prefill_never_stalls_a_generating_sequence(monkeypatch):
    b = timed(FakeBackend(n_seq=2, n_ctx_seq=256, n_batch=64), monkeypatch, per_token=0.01)  # 100 tokens a second
    s = Scheduler(b, threaded=False, prefill_chunk=8)
    q = queue.SimpleQueue()
    s.submit(req("gen", [1], max_tokens=30), sink=q)
    s.step()  # gen's prompt read; it now has a token pending
    s.submit(req("big", range(100, 200), max_tokens=1), sink=q)
    run_all(s)
    events = drain(q)
    assert collect(events["big"])[1].usage.prompt_tokens == 100
    # while "gen" was generating, every step carried its token and at most 8 prompt tokens of "big"
    for batch in b.batches[1:]:
        big = [t for t, _, seq, _ in batch if t >= 100 and t < 200]
        if big:
            assert len(big) <= 8
            assert len(batch) == len(big) + 1


def test_the_prefill_chunk_is_shared_among_the_sequences_that_wait(monkeypatch):
    # four sequences generating: each step carries their four tokens and at most 512 / 4 prompt tokens, so the
    # more sequences wait on a step, the shorter it is (never below 64, or the configured chunk if smaller)
    b = timed(FakeBackend(n_seq=5, n_ctx_seq=512, n_batch=256), monkeypatch, per_token=0.005)  # a CPU's 200 tok/s
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    for i in range(4):
        s.submit(req(f"gen{i}", [1 + i], max_tokens=60), sink=q)
    s.step()  # their prompts read: each has a token pending
    s.submit(req("big", range(1000, 1300), max_tokens=1), sink=q)
    run_all(s)
    assert collect(drain(q)["big"])[1].usage.prompt_tokens == 300
    sizes = [n for n in (len([t for t, *_ in batch if 1000 <= t < 1300]) for batch in b.batches[1:]) if n]
    assert sizes == [128, 128, 44]


def test_a_prompt_longer_than_the_batch_is_read_in_several_decodes():
    b = FakeBackend(n_seq=1, n_ctx_seq=128, n_batch=16)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    s.submit(req("a", range(1, 51), max_tokens=2), sink=q)
    run_all(s)
    assert [len(x) for x in b.batches[:4]] == [16, 16, 16, 2]
    assert [logits for *_, logits in b.batches[3]] == [False, True]  # only the prompt's last token wants logits


def test_the_slot_with_the_longest_common_prefix_is_reused():
    b = FakeBackend(n_seq=2, n_batch=64)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    s.submit(req("a", [1, 2, 3, 4, 5], max_tokens=1), sink=q)
    s.submit(req("b", [9, 9, 9], max_tokens=1), sink=q)
    run_all(s)
    drain(q)
    before = len(b.batches)
    s.submit(req("a2", [1, 2, 3, 4, 5, 6, 7], max_tokens=1), sink=q)
    run_all(s)
    done = collect(drain(q)["a2"])[1]
    assert done.usage.cached_tokens == 5
    assert sum(len(x) for x in b.batches[before:]) == 2  # only the two new tokens were read


def test_an_identical_prompt_still_reads_its_last_token():
    b = FakeBackend(n_seq=1)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    for rid in ("x", "y"):
        s.submit(req(rid, [4, 5, 6], max_tokens=1), sink=q)
        run_all(s)
    assert collect(drain(q)["y"])[1].usage.cached_tokens == 2


def test_cancel_while_queued_while_reading_and_while_generating():
    b = FakeBackend(n_seq=1, n_ctx_seq=512, n_batch=8)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    running = s.submit(req("running", [1], max_tokens=100), sink=q)
    queued = s.submit(req("queued", [2], max_tokens=5), sink=q)
    s.step()
    s.step()
    queued.cancel()
    running.cancel()
    s.step()
    events = drain(q)
    assert collect(events["queued"])[1].finish_reason == "cancelled"
    assert collect(events["running"])[1].finish_reason == "cancelled"
    assert not s.active and not s.waiting and b.samplers_live == 0
    reading = s.submit(req("reading", range(10, 40), max_tokens=5), sink=q)
    s.step()  # 8 of 30 prompt tokens read
    reading.cancel()
    s.step()
    assert collect(drain(q)["reading"])[1].finish_reason == "cancelled"
    assert not s.active


def test_cancelling_one_request_leaves_the_others_untouched():
    def tokens_of(events):
        return collect(events)[0]

    alone = FakeBackend(n_seq=3)
    s = Scheduler(alone, threaded=False)
    q = queue.SimpleQueue()
    s.submit(req("keep", [7, 8], max_tokens=6), sink=q)
    run_all(s)
    expected = tokens_of(drain(q)["keep"])
    b = FakeBackend(n_seq=3)
    s = Scheduler(b, threaded=False)
    keep = s.submit(req("keep", [7, 8], max_tokens=6), sink=q)
    victim = s.submit(req("victim", [50, 51], max_tokens=6), sink=q)
    s.step()
    s.step()
    victim.cancel()
    run_all(s)
    events = drain(q)
    assert tokens_of(events["keep"]) == expected and keep.done.finish_reason == "length"
    assert victim.done.finish_reason == "cancelled"


def test_a_request_that_cannot_fit_is_refused_before_it_is_queued():
    s = Scheduler(FakeBackend(n_seq=1, n_ctx_seq=16), threaded=False)
    with pytest.raises(ContextOverflow):
        s.submit(req("big", range(1, 15), max_tokens=5))
    assert not s.waiting


def test_a_failed_decode_fails_its_sequences_and_the_next_request_works():
    b = FakeBackend(n_seq=1)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    s.submit(req("bad", [1, 2], max_tokens=3), sink=q)
    b.fail_next = True
    run_all(s)
    assert any(isinstance(e, Failed) for e in drain(q)["bad"])
    assert b.kv[0] == [] and s.slot_tokens[0] == []
    s.submit(req("good", [1, 2], max_tokens=3), sink=q)
    run_all(s)
    assert collect(drain(q)["good"])[1].usage.completion_tokens == 3


def test_threaded_handles_stream_and_an_abandoned_iteration_cancels():
    b = FakeBackend(n_seq=2, n_ctx_seq=4096, n_batch=64)
    s = Scheduler(b)
    try:
        events = list(s.submit(req("a", [3], max_tokens=5)))
        assert isinstance(events[-1], Done) and collect(events)[1].usage.completion_tokens == 5
        long = s.submit(req("long", [3], max_tokens=4000))
        for i, _ in enumerate(long):
            if i == 3:
                break  # the consumer leaves: the request is cancelled and its slot freed
        assert long.finished.is_set() and long.done.finish_reason == "cancelled"
        assert s.stats()["busy"] == 0
    finally:
        s.close()


def test_call_runs_on_the_scheduler_thread_where_the_warm_up_decoded():
    """The bench decodes through call(): llama.cpp's CPU workers belong to the thread that decodes, and a second
    decoding thread starts a second set (tg at 0.39x native on 2 cores, after the warm-up in the scheduler's thread)."""
    import threading

    b = FakeBackend(n_seq=1)
    warmed = []
    b.warm_up = lambda: warmed.append(threading.current_thread())
    s = Scheduler(b)
    try:
        assert s.call(threading.current_thread) is warmed[0] is s._thread
        with pytest.raises(ZeroDivisionError):
            s.call(lambda: 1 / 0)
        assert collect(list(s.submit(req("after", [1], max_tokens=2))))[1].usage.completion_tokens == 2
    finally:
        s.close()
    assert Scheduler(FakeBackend(n_seq=1), threaded=False).call(threading.current_thread) is threading.current_thread()


def test_a_call_pending_when_the_scheduler_closes_fails_instead_of_hanging():
    from concurrent.futures import Future

    s = Scheduler(FakeBackend(n_seq=1))
    s.close()
    with pytest.raises(InferError):
        s.call(lambda: 1)
    future: Future = Future()
    s._calls.append((lambda: 1, future))  # queued as the loop ended: close() answers it
    s._closed = False
    s.close()
    assert future.done() and isinstance(future.exception(), InferError)


def test_close_fails_what_is_still_queued():
    s = Scheduler(FakeBackend(n_seq=1), threaded=False)
    h = s.submit(req("q", [1], max_tokens=3))
    s.close()
    with pytest.raises(InferError):
        list(h)


def test_cancel_all_ends_queued_and_running_requests():
    b = FakeBackend(n_seq=1, n_ctx_seq=512)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    s.submit(req("run", [1], max_tokens=100), sink=q)
    s.submit(req("wait", [2], max_tokens=100), sink=q)
    s.step()
    s.cancel_all()
    s.step()
    events = drain(q)
    assert {k: collect(v)[1].finish_reason for k, v in events.items()} == {"run": "cancelled", "wait": "cancelled"}
    assert not s._live


def test_ignore_eos_generates_the_full_budget():
    b = FakeBackend(n_seq=1, eog_after=1)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    s.submit(req("a", [1], max_tokens=5, ignore_eos=True), sink=q)
    run_all(s)
    done = collect(drain(q)["a"])[1]
    assert done.finish_reason == "length" and done.usage.completion_tokens == 5


def spec_run(prompt, max_tokens, lookup, cycle=5, **kw):
    from infer.engine.speculate import Speculation

    b = FakeBackend(n_seq=1, n_ctx_seq=256, n_batch=64, cycle=cycle)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    s.submit(Request(list(prompt), Sampling(temperature=0, max_tokens=max_tokens, **kw), id="a",
                     speculation=Speculation(lookup=lookup, ngram=2)), sink=q)
    run_all(s)
    text, done = collect(drain(q)["a"])
    return text, done, b, s


def test_lookup_gives_the_same_text_in_fewer_decodes():
    prompt = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]
    plain, pdone, pb, _ = spec_run(prompt, 40, lookup=False)
    fast, fdone, fb, s = spec_run(prompt, 40, lookup=True)
    assert fast == plain and fdone.usage.completion_tokens == pdone.usage.completion_tokens == 40
    assert fdone.usage.accepted > 20 and fdone.usage.accepted <= fdone.usage.drafted
    assert len(fb.batches) < len(pb.batches) / 2
    assert fb.kv[0] == s.slot_tokens[0]  # the KV holds exactly what the scheduler thinks


def test_rejected_drafts_are_removed_from_the_kv():
    prompt = [1, 2, 3, 4, 9, 9, 9, 1, 2, 3]  # after the first answer token (4), "3 4" was once followed by 9: wrong
    plain, pdone, _, _ = spec_run(prompt, 12, lookup=False, cycle=9)
    fast, fdone, fb, s = spec_run(prompt, 12, lookup=True, cycle=9)
    assert fast == plain and fdone.usage.drafted > fdone.usage.accepted
    assert fb.kv[0] == s.slot_tokens[0]


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
def test_speculation_never_passes_the_token_budget_or_a_stop_string(limit):
    prompt = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]
    plain, pdone, _, _ = spec_run(prompt, limit, lookup=False)
    fast, fdone, _, _ = spec_run(prompt, limit, lookup=True)
    assert fast == plain and fdone.usage.completion_tokens == limit
    plain, _, _, _ = spec_run(prompt, 30, lookup=False, stop=("t5 t1",))
    fast, fdone, fb, s = spec_run(prompt, 30, lookup=True, stop=("t5 t1",))
    assert fast == plain and fdone.finish_reason == "stop"
    assert fb.kv[0] == s.slot_tokens[0]


def test_drafting_stops_when_many_sequences_generate():
    from infer.engine.speculate import Speculation

    b = FakeBackend(n_seq=3, n_ctx_seq=256, n_batch=64, cycle=5)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    for i in range(3):
        s.submit(Request([1, 2, 3, 4, 5, 1, 2], Sampling(temperature=0, max_tokens=10), id=str(i),
                         speculation=Speculation(lookup=True, ngram=2, max_batch=2)), sink=q)
    run_all(s)
    assert all(collect(v)[1].usage.drafted == 0 for v in drain(q).values())


@pytest.mark.parametrize("lookup", [False, True])
@pytest.mark.parametrize("stop", [(), ("t5 t1",)])
def test_logprobs_come_with_the_text_one_per_generated_token(lookup, stop):
    from infer.engine.speculate import Speculation

    b = FakeBackend(n_seq=1, n_ctx_seq=256, n_batch=64, cycle=5)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    s.submit(Request([1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2], Sampling(temperature=0, max_tokens=20, stop=stop), id="a",
                     speculation=Speculation(lookup=lookup, ngram=2), logprobs=2), sink=q)
    run_all(s)
    events = drain(q)["a"]
    text, done = collect(events)
    entries = [e for event in events if isinstance(event, Text) for e in event.logprobs]
    assert len(entries) == done.usage.completion_tokens == b.logprob_reads
    assert b"".join(e.piece for e in entries).decode().startswith(text)  # a stop string's tokens are counted too
    assert all(e.logprob == -0.5 and [lp for _, lp in e.top] == [-0.5, -1.5] for e in entries)
    if not stop:  # the stop string ends the answer at its 4th token
        assert (done.usage.drafted > 0) == lookup


def test_logprobs_are_computed_only_when_asked_for():
    b = FakeBackend(n_seq=1)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    s.submit(req("a", [5], max_tokens=3), sink=q)
    s.submit(Request([5], Sampling(temperature=0, max_tokens=3), id="b", logprobs=0), sink=q)
    run_all(s)
    events = drain(q)
    assert all(e.logprobs == () for e in events["a"] if isinstance(e, Text))
    assert [e.top for ev in events["b"] if isinstance(ev, Text) for e in ev.logprobs] == [()] * 3
    assert b.logprob_reads == 3


def prompt_reads(b: FakeBackend, prompt) -> dict:
    """How many of the prompt's tokens each slot decoded."""
    reads: dict = {}
    for batch in b.batches:
        for token, _, seq, _ in batch:
            if token in prompt:
                reads[seq] = reads.get(seq, 0) + 1
    return reads


def test_a_group_reads_its_prompt_once_and_the_others_copy_its_kv():
    b = FakeBackend(n_seq=3, n_batch=64)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    prompt = list(range(100, 120))
    s.submit_group([req(str(i), prompt, max_tokens=3) for i in range(3)], sink=q)
    run_all(s)
    events = drain(q)
    dones = {k: collect(v)[1] for k, v in events.items()}
    assert {k: d.usage.completion_tokens for k, d in dones.items()} == {"0": 3, "1": 3, "2": 3}
    assert {k: collect(v)[0] for k, v in events.items()} == {k: "t120 t121 t122 " for k in "012"}
    assert prompt_reads(b, prompt) == {0: 20}  # one prefill; the copies are whole streams
    assert b.copies == [(0, 1), (0, 2)]
    assert [dones[k].usage.cached_tokens for k in "012"] == [0, 20, 20]
    assert all(b.kv[i] == s.slot_tokens[i] for i in range(3))  # each KV holds exactly what the scheduler thinks


def test_a_group_waits_for_enough_free_slots_and_is_not_overtaken():
    b = FakeBackend(n_seq=2, n_batch=64)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    s.submit(req("busy", [1], max_tokens=5), sink=q)
    s.step()
    s.submit_group([req("g0", [7, 8], max_tokens=2), req("g1", [7, 8], max_tokens=2)], sink=q)
    s.submit(req("late", [9], max_tokens=1), sink=q)
    s.step()
    assert set(s.active) == {0}  # one slot is free, but the group needs two; "late" waits behind it
    run_all(s)
    events = drain(q)
    assert all(collect(events[k])[1].finish_reason == "length" for k in ("g0", "g1", "late"))
    assert prompt_reads(b, [7, 8]) in ({0: 2}, {1: 2})


def test_a_group_larger_than_the_slots_is_refused():
    s = Scheduler(FakeBackend(n_seq=2), threaded=False)
    with pytest.raises(UsageError):
        s.submit_group([req(str(i), [1], max_tokens=1) for i in range(3)])
    assert not s.waiting


def test_when_the_leader_leaves_before_reading_the_prompt_a_follower_reads_it():
    b = FakeBackend(n_seq=2, n_batch=8)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    prompt = list(range(100, 120))
    leader, follower = s.submit_group([req("a", prompt, max_tokens=2), req("b", prompt, max_tokens=2)], sink=q)
    s.step()  # 8 of 20 prompt tokens read
    leader.cancel()
    run_all(s)
    events = drain(q)
    assert collect(events["a"])[1].finish_reason == "cancelled"
    assert collect(events["b"])[0] == "t120 t121 " and not b.copies


@pytest.mark.parametrize("logprobs", [None, 2])
@pytest.mark.parametrize("stop", [(), ("t5 t1",)])
def test_a_request_that_does_not_stream_gets_its_whole_text_once_before_done(logprobs, stop):
    b = FakeBackend(n_seq=2, n_ctx_seq=256, n_batch=64, cycle=5)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    for rid, stream in (("streamed", True), ("whole", False)):
        s.submit(Request([1, 2, 3], Sampling(temperature=0, max_tokens=20, stop=stop), id=rid, logprobs=logprobs,
                         stream=stream), sink=q)
    run_all(s)
    events = drain(q)
    streamed, whole = events["streamed"], events["whole"]
    assert len([e for e in streamed if isinstance(e, Text)]) > (1 if not stop else 0)
    assert [type(e) for e in whole] == [Text, Done]
    assert collect(whole)[0] == collect(streamed)[0] != ""
    assert collect(whole)[1].usage == collect(streamed)[1].usage
    assert whole[0].logprobs == tuple(e for ev in streamed if isinstance(ev, Text) for e in ev.logprobs)
    assert len(whole[0].logprobs) == (whole[1].usage.completion_tokens if logprobs else 0)


def test_a_request_that_does_not_stream_and_is_cancelled_gets_no_text():
    b = FakeBackend(n_seq=1, n_ctx_seq=512)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    h = s.submit(Request([1], Sampling(temperature=0, max_tokens=100), id="a", stream=False), sink=q)
    for _ in range(5):
        s.step()
    assert q.empty()  # nothing was sent while it generated
    h.cancel()
    s.step()
    assert [type(e) for e in drain(q)["a"]] == [Done]


def test_the_events_of_a_step_are_delivered_when_it_ends():
    """Each step's events reach the consumer together, after the step's decode: one wake-up a step."""
    b = FakeBackend(n_seq=4, n_ctx_seq=64, n_batch=16)
    s = Scheduler(b, threaded=False)
    seen = []

    class Sink:
        def put(self, item):
            seen.append((b.samples, item[0].request.id))

    for i in range(4):
        s.submit(req(str(i), [10 * i + 1], max_tokens=5), sink=Sink())
    steps = 0
    while s.step():
        steps += 1
        # nothing reached the consumer before the step's last sample (sent as each token was taken, the first
        # sequence's text would have gone out after one sample of four)
        assert [n for n, _ in seen if n != b.samples] == []
        assert {rid for _, rid in seen} == {"0", "1", "2", "3"}  # every generating sequence, in one burst
        seen.clear()
    assert steps == 5


def test_a_consumer_that_raises_does_not_cost_the_others_their_events():
    """One sink's error is raised once every event of the step is delivered: the other requests still get theirs."""
    b = FakeBackend(n_seq=3, n_ctx_seq=64, n_batch=16)
    s = Scheduler(b, threaded=False)
    good = queue.SimpleQueue()

    class Broken:
        def put(self, item):
            raise RuntimeError("the consumer broke")

    s.submit(req("a", [1], max_tokens=3), sink=good)
    s.submit(req("broken", [5], max_tokens=3), sink=Broken())
    s.submit(req("c", [9], max_tokens=3), sink=good)
    with pytest.raises(RuntimeError, match="the consumer broke"):
        s.step()
    got = drain(good)
    assert sorted(got) == ["a", "c"] and all(isinstance(events[0], Text) for events in got.values())
    assert s._outbox == []  # nothing left behind for a later step to send out of order


def test_without_a_prefill_chunk_prompts_fill_the_rest_of_every_batch(monkeypatch):
    """Throughput first (`infer batch`): beside generating sequences, prompts take all the room the batch has,
    even on slow hardware (a CPU's 100 tokens a second), where a chunked step would take 8."""
    b = timed(FakeBackend(n_seq=4, n_ctx_seq=512, n_batch=64), monkeypatch, per_token=0.01)
    s = Scheduler(b, threaded=False, prefill_chunk=None)
    q = queue.SimpleQueue()
    s.submit(req("first", [1], max_tokens=50), sink=q)
    s.step()  # its prompt
    for i in range(3):
        s.submit(req(str(i), range(100 + 100 * i, 160 + 100 * i), max_tokens=5), sink=q)
    s.step()
    assert len(b.batches[-1]) == 64  # 1 generating token + 63 prompt tokens
    slow = FakeBackend(n_seq=4, n_ctx_seq=512, n_batch=64)
    slow.clock = b.clock
    chunked = Scheduler(slow, threaded=False, prefill_chunk=8)
    chunked.submit(req("first", [1], max_tokens=50), sink=q)
    chunked.step()
    for i in range(3):
        chunked.submit(req(str(i), range(100 + 100 * i, 160 + 100 * i), max_tokens=5), sink=q)
    chunked.step()
    assert len(chunked.backend.batches[-1]) == 1 + 8
    run_all(s)
    run_all(chunked)


def test_the_rate_counts_prompt_steps_that_a_gpu_decodes_asynchronously(monkeypatch):
    """A step of prompt chunks only returns before the hardware is done (nothing reads its logits); the next step's
    first sample waits for both. Their tokens are counted together, so the rate is the hardware's, not half of it."""
    b = timed(FakeBackend(n_seq=2, n_ctx_seq=1024, n_batch=256), monkeypatch, per_token=0.0001)
    owed = []
    decode = b.decode

    def asynchronous():  # the work is queued; the clock moves when a result is read
        now = b.clock.now
        decode()
        owed.append(b.clock.now - now)
        b.clock.now = now

    def wait(wanted):
        b.clock.now += sum(owed)
        owed.clear()
        b.presampled = [i for _, i in wanted]

    b.decode, b.presample = asynchronous, wait
    s = Scheduler(b, threaded=False)
    s.submit(req("long", range(1000, 1400), max_tokens=1), sink=queue.SimpleQueue())
    s.step()  # 256 prompt tokens, no logits: it seems to take no time
    assert s.rate == 0.0  # not measured yet
    s.step()  # the other 144 and the first sample, which waits for all 400
    assert s.rate == pytest.approx(10_000)


def test_hardware_that_reads_a_prompt_fast_gets_more_of_it_in_a_step(monkeypatch):
    """Where a step reads STEP_BUDGET_S worth of tokens beyond the sequences' share (a GPU), prompts get that much:
    four generating sequences, 20,000 tokens a second: 1,000 tokens in 50 ms, capped by the batch."""
    b = timed(FakeBackend(n_seq=5, n_ctx_seq=1024, n_batch=256), monkeypatch, per_token=0.00005)
    s = Scheduler(b, threaded=False)
    q = queue.SimpleQueue()
    for i in range(4):
        s.submit(req(f"gen{i}", [1 + i], max_tokens=60), sink=q)
    s.step()
    s.step()  # a step of generation only: its speed is measured
    assert s.rate == pytest.approx(20_000)
    s.submit(req("big", range(1000, 1600), max_tokens=1), sink=q)
    run_all(s)
    sizes = [n for n in (len([t for t, *_ in batch if 1000 <= t < 1600]) for batch in b.batches) if n]
    assert sizes == [252, 252, 96]  # the batch's room beside the four tokens, not 512 / 4
