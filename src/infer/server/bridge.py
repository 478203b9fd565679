"""From the scheduler's thread to the event loop: each request's events arrive through an asyncio.Queue
fed with loop.call_soon_threadsafe, so the loop never waits on llama.cpp; leaving early cancels."""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass
from typing import AsyncIterator

from infer.engine import Done, Failed, Sampling, Speculation, Text
from infer.engine.scheduler import Request


class QueueFull(Exception):
    """The bounded queue is full: the server answers 503 with Retry-After."""


class _Mailbox:
    """Events from the scheduler's thread for the event loop, delivered in bursts: one wake-up of the loop carries
    every event posted since the last one (a step of N streams is one wake-up, not N), so the loop takes as little
    CPU as possible from llama.cpp's threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        import threading

        self.loop = loop
        self._lock = threading.Lock()
        self._items: list = []

    def post(self, q: asyncio.Queue, item) -> None:  # any thread
        with self._lock:
            self._items.append((q, item))
            first = len(self._items) == 1
        if first:
            try:
                self.loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    def _deliver(self) -> None:  # the event loop
        with self._lock:
            items, self._items = self._items, []
        for q, item in items:
            q.put_nowait(item)


_MAILBOXES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # one per event loop


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    box = _MAILBOXES.get(loop)
    if box is None:
        box = _MAILBOXES[loop] = _Mailbox(loop)
    return box


class _Sink:
    def __init__(self, loop: asyncio.AbstractEventLoop, q: asyncio.Queue, metrics=None):
        self.box, self.q, self.metrics = _mailbox(loop), q, metrics

    def put(self, item) -> None:  # called from the scheduler's thread
        event = item[1]
        if self.metrics is not None and isinstance(event, (Done, Failed)):  # counted here: a client that left
            self.metrics.finished.labels(event.finish_reason if isinstance(event, Done) else "failed").inc()
        self.box.post(self.q, item)


@dataclass
class Job:
    tokens: list[int]
    sampling: Sampling
    logprobs: int | None = None  # alternatives per token to report (None: no logprobs)
    speculation: Speculation | None = None


class Stream:
    """One API request: `n` engine requests (choices of one prompt) submitted as a group, so the prompt is read
    once; iterate (index, event)."""

    def __init__(self, sched, jobs: list[Job], *, max_queue: int, request_id: str = "", metrics=None, model=""):
        self.sched = sched
        self.metrics = metrics
        self.model = model
        stats = sched.stats()
        if stats["free"] < len(jobs) and stats["waiting"] + len(jobs) > max_queue:
            raise QueueFull(f"{stats['waiting']} requests are already waiting (--max-queue {max_queue})")
        self.q: asyncio.Queue = asyncio.Queue()
        sink = _Sink(asyncio.get_running_loop(), self.q, metrics)
        self.handles = sched.submit_group([Request(job.tokens, job.sampling, f"{request_id}-{i}",
                                                   speculation=job.speculation, logprobs=job.logprobs)
                                           for i, job in enumerate(jobs)], sink=sink)
        self.index = {h: i for i, h in enumerate(self.handles)}
        self.t0 = time.perf_counter()

    def cancel(self) -> None:
        for h in self.handles:
            if not h.finished.is_set():
                h.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Text | Done | Failed]]:
        """Events of every choice until each has its Done or Failed; cancels the rest if left early."""
        left = len(self.handles)
        last = [None] * len(self.handles)
        try:
            while left:
                handle, event = await self.q.get()
                i = self.index[handle]
                if isinstance(event, Text) and self.metrics is not None:
                    now = time.perf_counter()
                    if last[i] is None:
                        self.metrics.ttft.labels(self.model).observe(now - self.t0)
                    else:
                        self.metrics.itl.labels(self.model).observe(now - last[i])
                    last[i] = now
                if isinstance(event, (Done, Failed)):
                    left -= 1
                yield i, event
        finally:
            self.cancel()
