"""The scheduler: one llama context, many sequences, one decode per step (continuous batching).

Every request — `run`, `chat`, `batch`, the server — goes through here. A request waits in a queue
until a sequence slot is free, then each step is one decode holding the next token of every
generating sequence plus a bounded chunk of the prompts being read (chunked prefill), after which
each sequence samples from its own logits with its own sampler chain. A finished or cancelled
sequence leaves its slot at once and the next waiting request takes it mid-flight.

A slot keeps the KV of its last sequence after it finishes; a new request goes to the free slot
whose cached tokens share the longest prefix with its prompt (as llama.cpp's server does), so a
chat that resends its history only reads the new turn. The n choices of one prompt are submitted as
a group: they start together, the first reads the prompt, and the others get a copy of its KV and
sample their first token from the same logits (one prefill, not n).

The step is three phases, as in nano-vllm: `_schedule()` builds the batch, the backend decodes it,
`_postprocess()` samples and emits. The decode loop runs in a thread of its own; callers get their
events through a thread-safe queue, so nothing that waits on a caller (a terminal, a socket) ever
holds up the other sequences, and a Ctrl-C in the caller's thread never lands inside llama.cpp.

The backend is everything that touches llama.cpp (see `LlamaBackend` in backend.py); unit tests drive
the scheduler with a fake one.
"""

from __future__ import annotations

import codecs
import itertools
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from infer.engine.events import Done, Failed, Text, Timings, TokenLogprob, Usage
from infer.engine.sampling import Sampling, StopMatcher
from infer.engine.speculate import Drafter, Lookup, Speculation
from infer.errors import ContextOverflow, InferError, UsageError

PREFILL_CHUNK = 512  # prompt tokens a step may add while one other sequence is generating (divided among more)
MIN_PREFILL_CHUNK = 64
STEP_BUDGET_S = 0.05  # ... or as many as this hardware reads in this time, when that is more (a GPU)
MIN_PREFIX_REUSE = 1  # the in-memory slot cache reuses any common prefix (it costs nothing to keep)


class Backend(Protocol):
    """What the scheduler needs from llama.cpp. One pending batch is filled, then decoded."""

    n_seq: int  # sequence slots
    n_ctx_seq: int  # KV cells per slot
    n_batch: int  # most tokens in one decode

    def add(self, token: int, pos: int, seq: int, logits: bool) -> None: ...
    def decode(self) -> None: ...  # decodes the pending batch and empties it; raises InferError
    def presample(self, wanted: list[tuple[object, int]]) -> None: ...  # the (sampler, index) pairs sample() will get
    def sample(self, sampler: object, index: int) -> int: ...  # index: position in the decoded batch
    def logprobs(self, index: int, token: int, top: int) -> tuple[float, list[tuple[int, float]]]: ...  # log-softmax
    def forget(self, seq: int, start: int) -> None: ...  # drop the slot's KV cells from `start` on
    def copy(self, src: int, dst: int) -> None: ...  # the slot dst's KV becomes a copy of src's
    def new_sampler(self, sampling: Sampling) -> object: ...
    def free_sampler(self, sampler: object) -> None: ...
    def is_eog(self, token: int) -> bool: ...
    def piece(self, token: int) -> bytes: ...


@dataclass
class Request:
    tokens: list[int]
    sampling: Sampling
    id: str = ""
    speculation: Speculation | None = None
    logprobs: int | None = None  # report each token's logprob and this many alternatives (None: computed never)
    stream: bool = True  # False: the whole text comes as one Text just before Done (a batch line, not a reader)


class Handle:
    """A submitted request: iterate it for events (Text..., then Done); cancel() from any thread."""

    def __init__(self, request: Request, sink: "queue.SimpleQueue | None" = None, wake=lambda: None,
                 on_finish=lambda handle: None):
        self.request = request
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.done: Done | None = None
        self.group: list[Handle] | None = None  # the choices of one prompt, submitted together
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._sink = sink
        self._wake = wake
        self._on_finish = on_finish

    def cancel(self) -> None:
        self.cancelled.set()
        self._wake()

    def _emit(self, event) -> None:
        if isinstance(event, (Done, Failed)):
            if isinstance(event, Done):
                self.done = event
            self._on_finish(self)
            self.finished.set()
        if self._sink is not None:
            self._sink.put((self, event))
        else:
            self._events.put(event)

    def __iter__(self) -> Iterator[Text | Done]:
        """Events until Done; a Failed event is raised as its error. Leaving early cancels the request."""
        try:
            while True:
                event = self._events.get()
                if isinstance(event, Failed):
                    raise event.error
                yield event
                if isinstance(event, Done):
                    return
        finally:
            if not self.finished.is_set():
                self.cancel()
                self.finished.wait()


@dataclass
class _Seq:
    """A request while it holds a slot."""

    handle: Handle
    slot: int
    prompt: list[int]
    budget: int  # tokens it may generate
    sampler: object
    cached: int  # prompt tokens whose KV was already in the slot
    read: int  # prompt tokens in the KV so far
    t_submit: float
    t_admit: float
    pending: int | None = None  # the last sampled token, decoded at the next step
    spec: Lookup | None = None  # prompt-lookup speculation, when the request asked for it
    draft: list[int] = field(default_factory=list)  # tokens proposed in the batch being decoded
    logits_at: int = -1  # its index in the batch being decoded, when it wants logits
    n_gen: int = 0
    t_first: float | None = None
    t_read: float | None = None
    decoder: object = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    stops: StopMatcher | None = None
    leader: "_Seq | None" = field(default=None, repr=False, compare=False)  # reads the prompt for this one
    followers: list["_Seq"] = field(default_factory=list, repr=False, compare=False)  # get a copy of its KV
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of tokens not yet sent with a Text
    text: list[str] | None = None  # the text so far, when the request does not stream


class Scheduler:
    def __init__(self, backend: Backend, *, load_s: float = 0.0, threaded: bool = True,
                 prefill_chunk: int | None = PREFILL_CHUNK, step_budget_s: float = STEP_BUDGET_S):
        self.backend = backend
        self.load_s = load_s
        self.prefill_chunk = prefill_chunk
        self.step_budget_s = step_budget_s
        self.waiting: deque[tuple[Handle, float]] = deque()
        self.active: dict[int, _Seq] = {}
        self.slot_tokens: list[list[int]] = [[] for _ in range(backend.n_seq)]  # what each slot's KV holds
        self.slot_used: list[int] = [0] * backend.n_seq  # LRU clock per slot
        self._clock = itertools.count(1)
        self._cond = threading.Condition(threading.RLock())  # re-entrant: a signal handler may cancel
        self._live: set[Handle] = set()  # submitted and not yet finished
        self._closed = False
        self._outbox: list[tuple[Handle, object]] = []  # events of this step, delivered when it ends
        self.rate = 0.0  # tokens per second a step decodes (a running average): what a prefill budget buys
        self._timed = (0, 0.0)  # (tokens, first step's start) decoded since the last step whose logits were read
        self._ema_n, self._ema_s = 0.0, 0.0  # running averages of a measured step's tokens and seconds
        self._close_lock = threading.Lock()
        self._calls: list[tuple[Callable, Future]] = []  # work for this thread between steps (call())
        self.steps = 0
        self._thread = None
        self._warm_error: BaseException | None = None
        if threaded:
            ready = threading.Event()
            self._thread = threading.Thread(target=self._loop, args=(ready,), name="infer-scheduler", daemon=True)
            self._thread.start()
            try:
                ready.wait()  # the warm-up decode
            except BaseException:  # Ctrl-C: let the decode end (it uses the context the caller will free), then go
                ready.wait()
                self.close()
                raise
            if self._warm_error is not None:
                raise self._warm_error
        else:
            self._warm_up()

    # -- the caller's side -----------------------------------------------------------------
    @property
    def n_seq(self) -> int:
        return self.backend.n_seq

    @property
    def n_ctx_seq(self) -> int:
        return self.backend.n_ctx_seq

    def check(self, n_prompt: int, max_tokens: int | None) -> None:
        """Refuse a request that cannot fit one slot: never truncate."""
        need = n_prompt + (max_tokens or 1)
        if need > self.n_ctx_seq:
            raise ContextOverflow(
                f"the prompt is {n_prompt} tokens and {max_tokens or 1} more were asked for, "
                f"but a sequence's context holds {self.n_ctx_seq}",
                hint="shorten the input, lower the token limit, or raise --ctx-size")

    def submit(self, request: Request, sink: "queue.SimpleQueue | None" = None) -> Handle:
        """Queue a request; its events come through the returned handle (or `sink`, as (handle, event))."""
        return self.submit_group([request], sink)[0]

    def submit_group(self, requests: list[Request], sink: "queue.SimpleQueue | None" = None) -> list[Handle]:
        """Queue requests for one prompt (the n choices of an API request): they are admitted together when n slots
        are free, and the prompt is read once for all of them."""
        tokens = requests[0].tokens
        if not tokens:
            raise InferError("an empty prompt cannot be evaluated")
        if any(r.tokens != tokens for r in requests):
            raise InferError("the requests of a group share one prompt")
        if len(requests) > self.n_seq:
            raise UsageError(f"{len(requests)} sequences were asked for at once, but there are {self.n_seq}",
                             hint="ask for fewer choices, or raise --parallel")
        for r in requests:
            self.check(len(tokens), r.sampling.max_tokens)
        handles = [Handle(r, sink, self._wake, self._forget_handle) for r in requests]
        for h in handles if len(handles) > 1 else ():
            h.group = handles
        with self._cond:
            if self._closed:
                raise InferError("the engine is shutting down")
            now = time.perf_counter()
            self.waiting.extend((h, now) for h in handles)
            self._live.update(handles)
            self._cond.notify()
        return handles

    def cancel_all(self) -> None:
        """Cancel every queued and running request (safe from a signal handler in any thread)."""
        with self._cond:
            for handle in self._live:
                handle.cancelled.set()
            self._cond.notify()

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict:
        with self._cond:
            return {"busy": len(self.active), "free": self.n_seq - len(self.active), "waiting": len(self.waiting)}

    def close(self) -> None:
        """Stop the loop; requests still queued or running end with an error."""
        with self._close_lock:  # two threads may close at once (a signal, a server's shutdown): one fails the rest
            with self._cond:
                self._closed = True
                self._cond.notify()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join()
            with self._cond:
                calls, self._calls = self._calls, []
            for _fn, future in calls:  # asked for as it closed: never run
                future.set_exception(InferError("the engine was closed"))
            self._fail_all(InferError("the engine was shut down before the request finished"))

    def _forget_handle(self, handle: Handle) -> None:
        with self._cond:
            self._live.discard(handle)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # -- the loop --------------------------------------------------------------------------
    def _warm_up(self) -> None:
        warm = getattr(self.backend, "warm_up", None)  # a real context has one (llama.cpp's first-decode costs)
        if warm is not None:
            warm()

    def _loop(self, ready: threading.Event) -> None:
        _keep_signals_for_the_main_thread()
        try:
            self._warm_up()  # here: the decoding threads llama.cpp starts are this thread's, and block signals too
        except BaseException as e:  # noqa: BLE001 - raised in the thread that made the scheduler
            self._warm_error = e if isinstance(e, InferError) else InferError(f"engine error: {type(e).__name__}: {e}")
            return
        finally:
            ready.set()
        while True:
            with self._cond:
                while not self._closed and not self.waiting and not self.active and not self._calls:
                    self._cond.wait()
                if self._closed:
                    return
                calls, self._calls = self._calls, []
            for fn, future in calls:
                try:
                    future.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - raised in the caller
                    future.set_exception(e)
            try:
                self.step()
            except BaseException as e:  # noqa: BLE001 - the thread must not die silently
                self._fail_all(e if isinstance(e, InferError) else InferError(f"engine error: {type(e).__name__}: {e}"))

    def call(self, fn):
        """fn() run on this scheduler's thread between steps; its result, or its exception raised here. For direct use
        of the backend (the bench's pp and tg): llama.cpp's CPU worker threads belong to the thread that decodes, and
        a second thread decoding the same model starts a second set, which then compete for the cores (on 2 cores,
        a tg from the main thread after the warm-up in this one ran at 0.39x of native)."""
        if self._thread is None or threading.current_thread() is self._thread:
            return fn()
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise InferError("the engine was closed")
            self._calls.append((fn, future))
            self._cond.notify()
        return future.result()

    def step(self) -> bool:
        """One scheduling step; False when there was nothing to do. Its events are delivered together at its end:
        a consumer in another thread then wakes once a step, and reads them while the next decode runs, instead of
        taking the interpreter lock from this thread at every token of every sequence."""
        try:
            return self._step()
        finally:
            self._flush()

    def _post(self, handle: Handle, event) -> None:
        self._outbox.append((handle, event))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        error = None
        for handle, event in outbox:  # every event is delivered, even when one consumer's raises
            try:
                handle._emit(event)
            except BaseException as e:  # noqa: BLE001 - re-raised once the others are delivered
                error = error or e
        if error is not None:
            raise error

    def _step(self) -> bool:
        self._reap_cancelled()
        self._admit()
        fed = self._schedule() if self.active else []
        if not fed:
            self._timed = (0, 0.0)  # idle time is not decode time
            return False
        t0, n = time.perf_counter(), self._n_batched
        try:
            self.backend.decode()
        except InferError as e:
            self._timed = (0, 0.0)
            for seq in fed:
                self._finish(seq, failed=e)
            return True
        self.steps += 1
        read = any(seq.logits_at >= 0 for seq in fed)
        self._postprocess(fed)
        self._measure(t0, n, read)
        return True

    def _measure(self, t0: float, n_step: int, read: bool) -> None:
        """Update the decode rate. A GPU decodes asynchronously: a step whose logits nobody reads (prompt chunks only)
        may return before its work is done, so its tokens are counted with the next step that reads logits (whose
        first sample waits for all of it), from the first one's start. Tokens and seconds are averaged apart, so a
        step of 500 prompt tokens weighs more than one of 4 generated ones."""
        n, since = self._timed
        n, since = n + n_step, since or t0
        if not read:
            self._timed = (n, since)
            return
        self._timed = (0, 0.0)
        took = time.perf_counter() - since
        if took <= 0:
            return
        if not self._ema_s:
            self._ema_n, self._ema_s = float(n), took
        else:
            self._ema_n, self._ema_s = 0.8 * self._ema_n + 0.2 * n, 0.8 * self._ema_s + 0.2 * took
        self.rate = self._ema_n / self._ema_s

    def _reap_cancelled(self) -> None:
        with self._cond:
            gone = [h for h, _ in self.waiting if h.cancelled.is_set()]
            for h in gone:
                self.waiting = deque((w, t) for w, t in self.waiting if w is not h)
        for h in gone:
            self._post(h, self._done(None, "cancelled", h.request, time.perf_counter()))
        for seq in [s for s in self.active.values() if s.handle.cancelled.is_set()]:
            self._finish(seq, reason="cancelled")

    def _admit(self) -> None:
        while True:
            with self._cond:
                free = [i for i in range(self.n_seq) if i not in self.active]
                if not free or not self.waiting:
                    return
                group = self.waiting[0][0].group
                n = 1 if group is None else sum(1 for _ in itertools.takewhile(lambda w: w[0].group is group,
                                                                               self.waiting))
                if n > len(free):  # a group starts together (and first in line: it is not overtaken)
                    return
                admitted = [self.waiting.popleft() for _ in range(n)]
            leader = None
            for handle, t_submit in admitted:
                seq = self._start(handle, t_submit, self._pick_slot([i for i in free if i not in self.active],
                                                                    handle.request.tokens))
                if seq is not None and leader is None:
                    leader = seq
                elif seq is not None:
                    seq.leader = leader
                    leader.followers.append(seq)

    def _pick_slot(self, free: list[int], tokens: list[int]) -> int:
        """The free slot whose cached tokens share the longest prefix; else the least recently used."""
        best, best_len = None, MIN_PREFIX_REUSE - 1
        for i in free:
            n = _common_prefix(self.slot_tokens[i], tokens)
            if n > best_len:
                best, best_len = i, n
        return best if best is not None else min(free, key=lambda i: self.slot_used[i])

    def _start(self, handle: Handle, t_submit: float, slot: int) -> _Seq | None:
        req, b = handle.request, self.backend
        cached = min(_common_prefix(self.slot_tokens[slot], req.tokens), len(req.tokens) - 1)
        b.forget(slot, cached)
        del self.slot_tokens[slot][cached:]
        try:
            sampler = b.new_sampler(req.sampling)
        except InferError as e:
            self._post(handle, Failed(e))
            return None
        budget = min(req.sampling.max_tokens or self.n_ctx_seq, self.n_ctx_seq - len(req.tokens))
        seq = _Seq(handle=handle, slot=slot, prompt=req.tokens, budget=budget, sampler=sampler, cached=cached,
                   read=cached, t_submit=t_submit, t_admit=time.perf_counter(),
                   stops=StopMatcher(req.sampling.stop), text=None if req.stream else [])
        spec = req.speculation
        if spec is not None and spec.lookup:
            seq.spec = Lookup(req.tokens, spec)
        elif spec is not None and spec.draft:
            try:
                seq.spec = Drafter(req.tokens, spec, b.model.draft_context(self.n_seq, self.n_ctx_seq), slot,
                                   b._n_vocab)
            except InferError as e:
                b.free_sampler(sampler)
                self._post(handle, Failed(e))
                return
        self.slot_used[slot] = next(self._clock)
        self.active[slot] = seq
        return seq

    def _schedule(self) -> list[_Seq]:
        """Fill the batch: every generating sequence's next token (and its draft, when it speculates), then
        prompt chunks in arrival order."""
        fed: list[_Seq] = []
        self._n_batched = 0
        generating = sum(1 for s in self.active.values() if s.pending is not None)
        for seq in self.active.values():
            seq.logits_at = -1
            if seq.pending is not None:
                seq.draft = self._draft(seq, generating)
                self._feed(seq, [seq.pending, *seq.draft], logits_from=0)
                seq.pending = None
                fed.append(seq)
        room = self.backend.n_batch - self._n_batched
        chunk = self.prefill_chunk  # read once: Model.scheduler() may set it from another thread
        if fed and chunk is not None:  # others wait for their next token: read prompts one bounded chunk
            # at a time, smaller the more sequences wait (each waits for the whole step): at 8 sequences 64 tokens, so
            # no step stalls them long; more where the hardware reads that many in STEP_BUDGET_S (a GPU: there the
            # share alone would hold the 64th prompt back for 100 steps). None (throughput first: `infer batch`):
            # prompts fill the rest of the batch
            share = max(min(MIN_PREFILL_CHUNK, chunk), chunk // len(fed))
            room = min(room, max(share, int(self.rate * self.step_budget_s)))
        for seq in sorted(self.active.values(), key=lambda s: s.t_admit):
            left = len(seq.prompt) - seq.read
            if room <= 0:
                break
            if left <= 0 or seq in fed:
                continue
            if seq.leader is not None:
                if self.active.get(seq.leader.slot) is seq.leader:
                    continue  # its leader reads the prompt for both
                seq.leader = None  # the leader left before it had read the prompt: read it alone
            take = min(left, room)
            self._feed(seq, seq.prompt[seq.read:seq.read + take], logits_from=take - 1 if take == left else take)
            seq.read += take
            room -= take
            fed.append(seq)
        return fed

    def _draft(self, seq: _Seq, generating: int) -> list[int]:
        """A speculative proposal to verify beside the pending token: never past the token budget or the batch."""
        if seq.spec is None or generating > seq.spec.spec.max_batch:
            return []
        room = min(seq.budget - seq.n_gen - 1, self.backend.n_batch - self._n_batched - generating)
        return seq.spec.propose()[:max(0, room)] if room >= seq.spec.spec.draft_min else []

    def _feed(self, seq: _Seq, tokens: list[int], *, logits_from: int) -> None:
        """Add tokens to the batch; those from index `logits_from` on get logits."""
        held = self.slot_tokens[seq.slot]
        start = self._n_batched
        for i, token in enumerate(tokens):
            self.backend.add(token, len(held), seq.slot, i >= logits_from)
            held.append(token)
        self._n_batched += len(tokens)
        if logits_from < len(tokens):
            seq.logits_at = start + logits_from

    def _postprocess(self, fed: list[_Seq]) -> None:
        now = time.perf_counter()
        self.backend.presample([(s.sampler, s.logits_at + j) for s in fed if s.logits_at >= 0
                                for j in range(len(s.draft) + 1)])
        for seq in fed:
            if seq.logits_at < 0:
                continue  # a prompt chunk that is not the last: nothing to sample yet
            group = [seq]
            if seq.t_read is None:  # its prompt is read
                seq.t_read = now
                group += self._share_prompt(seq, now)
            for member in group:
                self._sample(member)

    def _share_prompt(self, leader: _Seq, now: float) -> list[_Seq]:
        """The leader has read the prompt: each follower still waiting gets a copy of its KV and samples its first
        token from the same logits."""
        shared = []
        for f in leader.followers:
            if self.active.get(f.slot) is f and f.leader is leader:
                self.backend.copy(leader.slot, f.slot)
                self.slot_tokens[f.slot][:] = self.slot_tokens[leader.slot]
                f.read = f.cached = len(f.prompt)
                f.leader, f.logits_at, f.t_read = None, leader.logits_at, now
                shared.append(f)
        leader.followers = []
        return shared

    def _sample(self, seq: _Seq) -> None:
        """The sequence's next token from the batch just decoded; with a draft, the longest prefix the model agrees
        with is kept."""
        draft, seq.draft = seq.draft, []
        held = self.slot_tokens[seq.slot]
        base = len(held) - len(draft)  # where the draft starts in the KV
        accepted = 0
        for j in range(len(draft) + 1):
            token = self.backend.sample(seq.sampler, seq.logits_at + j)
            if not self._take(seq, token, seq.logits_at + j):  # finished: what follows in the KV is not the answer
                self._trim(seq.slot, base + j)
                break
            if j < len(draft) and token == draft[j]:
                accepted += 1  # the model produced the drafted token: it is in the KV already
                continue
            seq.pending = token
            self._trim(seq.slot, base + j)
            break
        if seq.spec is not None and draft:
            seq.spec.result(len(draft), accepted)

    def _trim(self, slot: int, n: int) -> None:
        held = self.slot_tokens[slot]
        if len(held) > n:
            self.backend.forget(slot, n)
            del held[n:]

    def _take(self, seq: _Seq, token: int, index: int) -> bool:
        """One sampled token (from the logits at `index` of the batch): emit its text, or finish the sequence
        (end of generation, stop string, budget). True while the sequence goes on."""
        b, req = self.backend, seq.handle.request
        if b.is_eog(token) and not req.sampling.ignore_eos:
            self._finish(seq, reason="stop")
            return False
        seq.n_gen += 1
        if seq.t_first is None:
            seq.t_first = time.perf_counter()
        if seq.spec is not None:
            seq.spec.extend([token])
        raw = b.piece(token)
        if req.logprobs is not None:
            seq.logprobs.append(self._logprob(index, token, raw, req.logprobs))
        piece = seq.decoder.decode(raw)
        if piece:
            text, hit = seq.stops.feed(piece)
            if text:
                self._emit_text(seq, text)
            if hit:
                self._finish(seq, reason="stop", flush=False)
                return False
        if seq.n_gen >= seq.budget:
            self._finish(seq, reason="length")
            return False
        return True

    def _finish(self, seq: _Seq, reason: str = "stop", *, flush: bool = True, failed: InferError | None = None) -> None:
        b = self.backend
        self.active.pop(seq.slot, None)
        b.free_sampler(seq.sampler)
        if failed is not None:  # the slot's KV is in an unknown state: start it afresh
            b.forget(seq.slot, 0)
            self.slot_tokens[seq.slot].clear()
            self._post(seq.handle, Failed(failed))
            return
        if reason != "cancelled":
            tail = seq.stops.flush() + seq.decoder.decode(b"", final=True) if flush else ""
            if tail or seq.logprobs:
                self._emit_text(seq, tail)
            if seq.text:
                self._post(seq.handle, Text("".join(seq.text), tuple(seq.logprobs)) if seq.logprobs
                           else Text("".join(seq.text)))
        self._post(seq.handle, self._done(seq, reason, seq.handle.request, time.perf_counter()))

    def _emit_text(self, seq: _Seq, text: str) -> None:
        """Text, with the logprobs of the tokens behind it (those of a stop string come with the last Text)."""
        if seq.text is not None:  # not streamed: kept for the one Text at the end, logprobs too
            seq.text.append(text)
        elif seq.logprobs:
            self._post(seq.handle, Text(text, tuple(seq.logprobs)))
            seq.logprobs.clear()
        else:
            self._post(seq.handle, Text(text))

    def _logprob(self, index: int, token: int, piece: bytes, top: int) -> TokenLogprob:
        logprob, alternatives = self.backend.logprobs(index, token, top)
        return TokenLogprob(piece, logprob, tuple((self.backend.piece(t), lp) for t, lp in alternatives))

    def _done(self, seq: _Seq | None, reason: str, request: Request, t_end: float) -> Done:
        if seq is None:  # cancelled while waiting
            return Done(finish_reason=reason, usage=Usage(len(request.tokens), 0, 0),
                        timings=Timings(load_s=self.load_s, ttft_s=0.0, prompt_s=0.0, gen_s=0.0, prompt_tps=0.0,
                                        gen_tps=0.0))
        t_read = seq.t_read or t_end
        first = seq.t_first or t_end
        prompt_s = t_read - seq.t_admit
        gen_s = t_end - first
        evaluated = len(seq.prompt) - seq.cached
        return Done(
            finish_reason=reason,
            usage=Usage(prompt_tokens=len(seq.prompt), completion_tokens=seq.n_gen, cached_tokens=seq.cached,
                        drafted=seq.spec.drafted if seq.spec else 0, accepted=seq.spec.accepted if seq.spec else 0),
            timings=Timings(load_s=self.load_s, ttft_s=first - seq.t_submit, prompt_s=prompt_s, gen_s=gen_s,
                            prompt_tps=evaluated / prompt_s if prompt_s > 0 else 0.0,
                            gen_tps=(seq.n_gen - 1) / gen_s if seq.n_gen > 1 and gen_s > 0 else 0.0,
                            queue_s=seq.t_admit - seq.t_submit),
        )

    def _fail_all(self, error: InferError) -> None:
        with self._cond:
            waiting, self.waiting = list(self.waiting), deque()
        for h, _ in waiting:
            self._post(h, Failed(error))
        for seq in list(self.active.values()):
            self._finish(seq, failed=error)
        self._flush()


def _keep_signals_for_the_main_thread() -> None:
    """Block Ctrl-C and SIGTERM in this thread (and in llama.cpp's worker threads, which inherit the mask when
    the first decode starts them here): a signal the kernel hands to this thread instead of the main one would
    never wake the main thread out of input() or select(), and a chat would hang at its prompt."""
    import signal

    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, OSError, ValueError):  # not on this platform
        pass


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
