"""The models a server holds: loaded on demand from the store (never the network), unloaded after
their keep-alive, and the least recently used unloaded first when the memory estimate says the next
one will not fit."""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from infer.errors import ContextOverflow, ModelNotFound, UsageError

FOREVER = math.inf
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value) -> float:
    """Seconds from Ollama's keep_alive: a number of seconds, or a Go duration ("5m", "1h30m", "-1m").
    A negative value means forever; 0 unloads as soon as the request ends."""
    if value is None:
        raise UsageError("a duration is missing")
    if isinstance(value, bool):
        raise UsageError(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        return FOREVER if value < 0 else float(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        sign = -1 if text.startswith("-") else 1
        body = text.lstrip("+-")
        parts = _DURATION.findall(body)
        if not parts or "".join(n + u for n, u in parts) != body:
            raise UsageError(f"invalid duration {value!r}", hint='use seconds or a duration like "30s", "5m", "1h"') from None
        number = sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
    return FOREVER if number < 0 else number


def canonical_name(name: str) -> str:
    """Ollama clients say `name:latest`; the store knows `name`."""
    return name[: -len(":latest")] if name.endswith(":latest") else name


@dataclass
class Loaded:
    name: str
    model: object  # infer.engine.Model
    sched: object  # infer.engine.scheduler.Scheduler
    path: str
    size: int  # bytes of the model's files
    estimate: int  # memory the model and its KV cache are estimated to use
    kv_bytes: int
    keep_alive: float
    pinned: bool = False  # named with -m: loaded at start
    defaults: dict = field(default_factory=dict)  # the catalog's per-model sampling defaults
    speculation: object = None  # engine.Speculation for every request to this model (`serve --lookup/--draft`)
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # held while submitting or resizing

    @property
    def expires_at(self) -> float:
        return self.last_used + self.keep_alive

    def idle(self) -> bool:
        s = self.sched.stats()
        return s["busy"] == 0 and s["waiting"] == 0


class Manager:
    """Loaded models by name. All methods run on the event loop; loading happens in a worker thread."""

    def __init__(self, load_options, *, parallel: int, ctx_size: int | None, keep_alive: float,
                 notice=lambda message: None, memory_limit: int | None = None, speculation=None):
        self.load_options = load_options
        self.speculation = speculation
        self.parallel = parallel
        self.ctx_size = ctx_size
        self.keep_alive = keep_alive
        self.notice = notice
        self.memory_limit = memory_limit
        self.loaded: dict[str, Loaded] = {}
        self.default: str | None = None
        self._loading: dict[str, asyncio.Lock] = {}
        self.closing = False

    # -- lookup and load ---------------------------------------------------------------------
    def resolve(self, name: str | None):
        """The store's file for a name, without the network; ModelNotFound otherwise."""
        from infer import resolve

        text = canonical_name(name) if name else self.default
        if not text:
            raise UsageError("no model named", hint="name a model in the request, or start `infer serve -m MODEL`")
        for loaded in self.loaded.values():  # a loaded model answers to the name it was loaded by
            if loaded.name == text:
                return loaded.name, None
        resolved = resolve.resolve(text, pull=None)
        return resolved.name, resolved

    async def get(self, name: str | None, *, keep_alive: float | None = None, pinned: bool = False) -> Loaded:
        if self.closing:
            raise UsageError("the server is shutting down")
        key, resolved = self.resolve(name)
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:
            loaded = self.loaded.get(key)
            if loaded is None:
                loaded = await self._load(key, resolved, pinned)
        loaded.last_used = time.monotonic()
        if keep_alive is not None:
            loaded.keep_alive = keep_alive
        return loaded

    async def _load(self, key: str, resolved, pinned: bool) -> Loaded:
        from infer import complete

        if resolved is None:
            raise ModelNotFound(f"model {key!r} is not loaded")
        ctx, estimate, kv = self._plan(resolved.path, resolved)
        await self._make_room(estimate)
        options = self._options_for(resolved, ctx)

        def load():
            model = complete.load(resolved, options, self.notice)
            spec = self.speculation
            try:
                if spec is not None and spec.draft:
                    try:
                        model.attach_draft(Path(spec.draft), self.notice)
                    except UsageError as e:  # a model of another family: served without the draft model
                        self.notice(f"{e.message}: {key} is served without speculative decoding")
                        spec = None
                sched = model.scheduler(n_seq=self.parallel, n_ctx_seq=ctx)
            except BaseException:
                model.close()
                raise
            return model, sched, spec

        model, sched, spec = await asyncio.to_thread(load)
        loaded = Loaded(name=key, model=model, sched=sched, path=str(resolved.path),
                        size=complete.model_files_size(resolved.path), estimate=estimate, kv_bytes=kv,
                        keep_alive=FOREVER if pinned else self.keep_alive, pinned=pinned, defaults=resolved.defaults,
                        speculation=spec)
        self.loaded[key] = loaded
        return loaded

    def _options_for(self, resolved, ctx: int):
        from dataclasses import replace

        return replace(self.load_options, n_ctx=ctx)

    def _plan(self, path, resolved) -> tuple[int, int, int]:
        """Context per sequence, the memory estimate for the whole model, and its KV cache bytes."""
        from infer import complete, hardware
        from infer.gguf_meta import read_info

        info = read_info(path)
        trained = info.context_length or 4096
        ctx = self.ctx_size or resolved.defaults.get("ctx_size") or min(trained, 4096)
        est = hardware.estimate(info, complete.model_files_size(path), ctx * self.parallel, self.load_options.kv_type)
        return ctx, est.total, est.kv_cache

    async def _make_room(self, need: int) -> None:
        """Unload idle models, least recently used first, while the estimate says `need` will not fit."""
        from infer import hardware

        def short() -> bool:
            if self.memory_limit is not None:
                return sum(m.estimate for m in self.loaded.values()) + need > self.memory_limit
            return need > hardware.available_memory() > 0

        for loaded in sorted(self.loaded.values(), key=lambda m: m.last_used):
            if not short():
                return
            if loaded.idle():
                self.notice(f"unloading {loaded.name} to make room")
                await self.unload(loaded.name)

    # -- context size per request ------------------------------------------------------------
    async def ensure_ctx(self, loaded: Loaded, need: int) -> None:
        """Grow the model's per-sequence context to `need` tokens (a request's num_ctx), when idle;
        never shrink, never beyond the trained context. Call with loaded.lock held."""
        if need <= loaded.sched.n_ctx_seq:
            return
        trained = loaded.model.n_ctx_train or need
        if need > trained:
            raise ContextOverflow(f"a context of {need} tokens was asked for, but the model was trained for {trained}",
                                  hint="lower num_ctx, or shorten the prompt")
        if not loaded.idle():
            raise ContextOverflow(
                f"a context of {need} tokens was asked for, but each sequence holds {loaded.sched.n_ctx_seq} "
                "and the model is busy, so it cannot be resized now",
                hint="retry when it is idle, or start `infer serve --ctx-size` larger")
        self.notice(f"{loaded.name}: resizing each sequence's context to {need} tokens")
        loaded.sched = await asyncio.to_thread(loaded.model.scheduler, self.parallel, need)

    # -- unload --------------------------------------------------------------------------------
    async def unload(self, key: str) -> None:
        loaded = self.loaded.pop(key, None)
        if loaded is not None:
            await asyncio.to_thread(loaded.model.close)

    async def reap(self) -> None:
        """Unload every idle model whose keep-alive has passed."""
        now = time.monotonic()
        for loaded in list(self.loaded.values()):
            if loaded.expires_at <= now and loaded.idle() and not loaded.lock.locked():
                await self.unload(loaded.name)

    async def reap_forever(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            await self.reap()

    def fail_all(self) -> None:
        """Shutdown: end every queued and running request with an error (the streams finish their framing)."""
        self.closing = True
        for loaded in self.loaded.values():
            loaded.sched.close()

    async def close(self) -> None:
        self.closing = True
        for key in list(self.loaded):
            await self.unload(key)
