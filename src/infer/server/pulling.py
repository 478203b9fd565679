"""`/api/pull`: the same verified, resumable pull as `infer pull`, run in a thread, its progress as Ollama's
status objects ({"status", "digest", "total", "completed"}, then {"status": "success"} or {"error"})."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator

from infer.errors import InferError

PROGRESS_EVERY_S = 0.25


class _Reporter:
    def __init__(self, emit):
        self.emit = emit

    @contextlib.contextmanager
    def file(self, name: str, size: int, source: str):
        done, last = 0, 0.0
        self.emit({"status": f"pulling {name}", "digest": name, "total": size, "completed": 0})

        def advance(n: int) -> None:
            nonlocal done, last
            done = 0 if n < 0 else done + n
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                self.emit({"status": f"pulling {name}", "digest": name, "total": size, "completed": done})

        yield advance
        self.emit({"status": f"pulling {name}", "digest": name, "total": size, "completed": size or done})

    def notice(self, message: str) -> None:
        self.emit({"status": message})


async def pull_events(name: str) -> AsyncIterator[dict]:
    from infer import pull

    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    emit = lambda event: loop.call_soon_threadsafe(q.put_nowait, event)  # noqa: E731
    yield {"status": "pulling manifest"}
    task = asyncio.ensure_future(asyncio.to_thread(pull.pull, name, reporter=_Reporter(emit)))
    while not (task.done() and q.empty()):
        getter = asyncio.ensure_future(q.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield getter.result()
        else:
            getter.cancel()
    try:
        task.result()
    except InferError as e:
        status = {3: 404, 9: 401, 6: 502, 7: 502, 8: 507}.get(int(e.exit_code), 500)
        yield {"error": e.message + (f" ({e.hint})" if e.hint else ""), "_status": status}
        return
    yield {"status": "verifying sha256 digest"}
    yield {"status": "success"}
