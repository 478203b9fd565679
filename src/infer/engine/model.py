"""The model: loading, tokenizing, contexts sized to the need, embeddings and llama-bench's measures.

It loads a GGUF model, sizes the context to the need, formats chats with the model's own
template, and generates through llama.cpp's sampler chain, yielding typed events:
`Text` chunks as they are decoded, then one `Done` with usage and timings.

Why not `Llama.create_completion`: its streaming re-detokenizes all pending text on every
token while a UTF-8 sequence is incomplete and adds per-token Python work; the context must
be created before we can count the prompt's tokens; and its default thread count is half
the CPUs. Here the model is loaded first, the prompt tokenized, and only then the context
created with the size it needs. Decoding is incremental (codecs), one call per token.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from infer.engine import templates
from infer.engine.backend import DraftContext, LlamaBackend, check_draft_vocab
from infer.engine.embed import EMBED_BATCH_TOKENS, Embedder, Embedding
from infer.engine.events import Event
from infer.engine.native import (
    _LOG,
    _RPC,
    _DeferredInterrupt,
    _last_log_error,
    _llama,
    _local_gpus,
    amx_avoided,
    system_info,
)
from infer.engine.sampling import Sampling
from infer.engine.scheduler import PREFILL_CHUNK, Request, Scheduler
from infer.engine.speculate import Speculation
from infer.errors import BadModel, ContextOverflow, UsageError
from infer.gguf_meta import check_gguf

CTX_GRANULE = 256  # contexts are sized in multiples of this
DEFAULT_MAX_TOKENS_RESERVE = 1024  # room kept for the answer when -n is not given
MIN_CTX = 512


@dataclass(frozen=True)
class LoadOptions:
    n_ctx: int | None = None  # None: sized to prompt + answer, capped by the trained context
    n_threads: int | None = None  # None: physical cores
    n_gpu_layers: int = 0  # -1: all; -2: auto (decided by complete.plan before loading)
    flash_attn: str = "auto"  # auto | on | off
    kv_type: str = "f16"
    mlock: bool = False
    mmap: bool = True
    n_batch: int = 2048
    n_ubatch: int = 512
    verbose: bool = False
    rpc: tuple[str, ...] = ()  # RPC workers HOST:PORT, registered (infer.rpc) before the load
    tensor_split: tuple[float, ...] = ()  # share of the layers per device: the RPC workers first, then local GPUs
    force_rpc: bool = False  # split even where the split is predicted slower than this machine alone





class Vocab:
    """A model's tokenizer alone (llama.cpp's vocab-only load: no weights, a few MB), to count a large input
    before the weights and their CPU copies are in memory; `complete.run` refuses an overlong pipe with it."""

    def __init__(self, path: Path):
        check_gguf(path)
        llama_cpp = _llama()
        from llama_cpp import _internals

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        try:
            self._model = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
        except ValueError as e:
            detail = _last_log_error()
            raise BadModel(f"llama.cpp could not read the tokenizer of {path}" + (f": {detail}" if detail else ""),
                           hint="the file may be truncated or corrupt (`infer verify`)") from e
        meta = self._model.metadata()  # a vocab-only load reads no hyperparameters: the trained context is metadata
        try:
            self.n_ctx_train = int(meta.get(f"{meta.get('general.architecture')}.context_length", 0))
        except ValueError:
            self.n_ctx_train = 0

    def tokenize(self, text: str, *, add_bos: bool | None = None, special: bool = True) -> list[int]:
        if add_bos is None:
            add_bos = self._model.add_bos_token()
        return self._model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def close(self) -> None:
        self._model.close()


class Model:
    """A loaded model; the context is created lazily at the size the first request needs."""

    def __init__(self, path: Path, options: LoadOptions = LoadOptions()):
        check_gguf(path)
        self.path = path
        self.options = options
        llama_cpp = _llama()
        from llama_cpp import _internals

        self._lib = llama_cpp
        self._internals = _internals
        _LOG["verbose"] = options.verbose
        _LOG["lines"] = []
        t0 = time.perf_counter()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0x7FFFFFFF if options.n_gpu_layers == -1 else max(0, options.n_gpu_layers)
        if "load_mode" in dict(type(params)._fields_):  # llama.cpp replaced use_mmap/use_mlock with one mode
            params.load_mode = {(True, False): -1, (True, True): 3, (False, True): 2, (False, False): 0}[
                (options.mmap, options.mlock)]  # AUTO (mmap where the devices allow), MMAP_MLOCK, MLOCK, NONE
        else:
            params.use_mmap = options.mmap
            params.use_mlock = options.mlock
        if "use_extra_bufts" in dict(type(params)._fields_) and amx_avoided():
            params.use_extra_bufts = False
        if options.tensor_split:
            if len(options.tensor_split) > llama_cpp.llama_max_devices():
                raise UsageError(f"--tensor-split has more shares than llama.cpp's {llama_cpp.llama_max_devices()} "
                                 "devices")
            split = (ctypes.c_float * llama_cpp.llama_max_devices())(*options.tensor_split)
            params.tensor_split = ctypes.cast(split, ctypes.POINTER(ctypes.c_float))
        if not options.rpc and _RPC["registered"]:  # workers are registered for another load: keep this one local
            local = _local_gpus()
            devices = (ctypes.c_void_p * (len(local) + 1))(*local, None)
            params.devices = ctypes.addressof(devices)
        with _DeferredInterrupt() as interrupt:
            # returning False from the progress callback makes llama.cpp cancel the load
            keep_going = llama_cpp.llama_progress_callback(lambda progress, user_data: not interrupt.hit)
            params.progress_callback = keep_going
            try:
                self._model = _internals.LlamaModel(path_model=str(path), params=params, verbose=options.verbose)
            except ValueError as e:
                if interrupt.hit:
                    raise KeyboardInterrupt from None
                detail = _last_log_error()
                raise BadModel(
                    f"llama.cpp could not load {path}" + (f": {detail}" if detail else ""),
                    hint="the file may be truncated or corrupt (`infer verify`), or need a newer llama-cpp-python",
                ) from e
        self.load_s = time.perf_counter() - t0
        self.vocab = self._model.vocab
        self.n_ctx_train = self._model.n_ctx_train()
        self.metadata = self._model.metadata()
        self._sched: Scheduler | None = None
        self.draft_model: Model | None = None  # for draft-model speculation (attach_draft)
        self._draft_ctx: DraftContext | None = None
        self.n_layers = llama_cpp.llama_model_n_layer(self._model.model)
        self.where = "CPU" if options.n_gpu_layers == 0 else "GPU"  # for people: complete.load() writes a sentence
        self.offloaded = options.n_gpu_layers != 0  # layers run on a GPU (or RPC workers): the CPU idles in a decode

    # -- text <-> tokens -------------------------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool | None = None, special: bool = True) -> list[int]:
        if add_bos is None:
            add_bos = self._model.add_bos_token()
        return self._model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    @property
    def bos_token(self) -> int:
        return self._model.token_bos()

    def token_text(self, token: int) -> str:
        return self._model.token_get_text(token) if token >= 0 else ""

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    def format_chat(self, messages: list[dict]) -> tuple[str, list[int]]:
        """Render messages with the model's own template (see `templates`); the prompt text and its tokens."""
        bos = self.token_text(self._model.token_bos())
        eos = self.token_text(self._model.token_eos())
        prompt = templates.render(self.chat_template, messages, bos_token=bos, eos_token=eos)
        add_bos = self._model.add_bos_token() and not (bos and prompt.startswith(bos))
        return prompt, self.tokenize(prompt, add_bos=add_bos, special=True)

    # -- context ---------------------------------------------------------------------------
    def plan_ctx(self, n_prompt: int, max_tokens: int | None) -> int:
        """The context size for a request: the user's, or prompt + answer rounded up, capped by training."""
        if self.options.n_ctx:
            return self.options.n_ctx
        want = n_prompt + (max_tokens if max_tokens else DEFAULT_MAX_TOKENS_RESERVE)
        want = max(MIN_CTX, -(-want // CTX_GRANULE) * CTX_GRANULE)
        return min(want, self.n_ctx_train) if self.n_ctx_train > 0 else want

    def scheduler(self, n_seq: int, n_ctx_seq: int, prefill_chunk: int | None = PREFILL_CHUNK) -> Scheduler:
        """The scheduler that owns this model's one context: `n_seq` sequences of `n_ctx_seq` tokens each.
        An existing one is reused when it is as large; otherwise it is replaced (when idle). `prefill_chunk`: prompt
        tokens a step may add beside generating sequences (None: as many as the batch holds, for throughput)."""
        old = self._sched
        if old is not None and not old.closed and old.n_seq == n_seq and old.n_ctx_seq >= n_ctx_seq:
            old.prefill_chunk = prefill_chunk
            return old
        if old is not None:
            old.close()  # a second close is harmless
            old.backend.free()
            self._sched = None
        t0 = time.perf_counter()
        backend = LlamaBackend(self, n_seq, n_ctx_seq)
        try:
            sched = Scheduler(backend, load_s=self.load_s, prefill_chunk=prefill_chunk)  # it warms the context up
        except BaseException:
            backend.free()
            raise
        self.load_s += time.perf_counter() - t0
        sched.load_s = self.load_s
        self._sched = sched
        return sched

    @property
    def n_ctx(self) -> int:
        return self._sched.n_ctx_seq if self._sched else 0

    # -- generation ------------------------------------------------------------------------
    def new_sampler(self, s: Sampling):
        """A sampler chain for one sequence: grammar, penalties, then greedy or top-k/top-p/min-p/temperature."""
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lambda smpl: lib.llama_sampler_chain_add(chain, smpl)  # noqa: E731
        if s.grammar:
            g = lib.llama_sampler_init_grammar(self.vocab, s.grammar.encode("utf-8"), b"root")
            if not g:
                lib.llama_sampler_free(chain)
                raise UsageError("the output grammar could not be compiled", hint="check --schema")
            add(g)
        if s.repeat_penalty != 1.0:
            add(lib.llama_sampler_init_penalties(s.repeat_last_n, s.repeat_penalty, 0.0, 0.0))
        if s.temperature <= 0:
            add(lib.llama_sampler_init_greedy())
        else:
            if s.top_k > 0:
                add(lib.llama_sampler_init_top_k(s.top_k))
            add(lib.llama_sampler_init_top_p(s.top_p, 1))
            add(lib.llama_sampler_init_min_p(s.min_p, 1))
            add(lib.llama_sampler_init_temp(s.temperature))
            seed = lib.LLAMA_DEFAULT_SEED if s.seed is None else s.seed & 0xFFFFFFFF
            add(lib.llama_sampler_init_dist(seed))
        return chain

    def check_fits(self, n_prompt: int, max_tokens: int | None, n_ctx: int) -> None:
        need = n_prompt + (max_tokens or 1)
        if need > n_ctx:
            limit = "the model's trained context" if n_ctx == self.n_ctx_train and not self.options.n_ctx else "--ctx-size"
            raise ContextOverflow(
                f"the prompt is {n_prompt} tokens and {max_tokens or 1} more were asked for, "
                f"but the context holds {n_ctx} ({limit})",
                hint="shorten the input, lower --max-tokens, or raise --ctx-size"
                + (f" (this model was trained for {self.n_ctx_train})" if self.n_ctx_train else ""),
            )

    def generate(self, tokens: list[int], sampling: Sampling, speculation: Speculation | None = None) -> Iterator[Event]:
        """One request through the scheduler (one sequence; the cached prefix of the last request is reused).
        Leaving the iteration early (Ctrl-C, a closed generator) cancels the request and waits for its slot."""
        n_ctx = self.plan_ctx(len(tokens), sampling.max_tokens)
        self.check_fits(len(tokens), sampling.max_tokens, n_ctx)
        sched = self.scheduler(1, n_ctx)
        if sampling.max_tokens is None:  # as before: the answer may use the planned context, no more
            sampling = replace(sampling, max_tokens=n_ctx - len(tokens))
        yield from sched.submit(Request(tokens, sampling, speculation=speculation))

    def restore_prefix(self, tokens: list[int], state: bytes, n_ctx: int) -> bool:
        """Put a saved KV state of `tokens` into the one-sequence context of size n_ctx (as generate() will plan it),
        so that the next request starting with `tokens` reads only the rest."""
        sched = self.scheduler(1, n_ctx)
        ok = sched.backend.load_seq(0, state)
        sched.slot_tokens[0][:] = list(tokens) if ok else []
        return ok

    def snapshot_prefix(self, n: int) -> tuple[list[int], bytes]:
        """The first n tokens of the one-sequence context and their KV state (the rest is dropped)."""
        sched = self._sched
        sched.backend.forget(0, n)
        del sched.slot_tokens[0][n:]
        return list(sched.slot_tokens[0]), sched.backend.save_seq(0)

    def cache_key(self) -> dict:
        """What a saved KV state depends on (see prompt_cache)."""
        from infer.prompt_cache import model_identity

        lib, o = self._lib, self.options
        return {"model": model_identity(self.path), "llama_cpp": getattr(lib, "__version__", "?"),
                "build": system_info(), "kv_type": o.kv_type, "flash_attn": o.flash_attn, "where": self.where,
                "gpu_layers": o.n_gpu_layers}

    def attach_draft(self, path: Path, notice=lambda m: None) -> None:
        """Load a draft model for `Speculation(draft=...)` requests, with this model's load options; refuse one
        whose vocabulary differs, warn about one that is not smaller."""
        if self.draft_model is not None and self.draft_model.path == path:
            return
        self.detach_draft()
        draft = Model(path, replace(self.options, n_ctx=None, rpc=(), tensor_split=(), force_rpc=False))
        try:
            check_draft_vocab(self, draft)
        except UsageError:
            draft.close()
            raise
        if path.stat().st_size >= self.path.stat().st_size:
            notice(f"the draft model {path.name} is not smaller than the model: speculation will likely be slower")
        self.draft_model = draft

    def draft_context(self, n_seq: int, n_ctx_seq: int) -> DraftContext:
        """The draft model's context for the scheduler (its thread only), made or remade at the scheduler's size."""
        if self.draft_model is None:
            raise UsageError("a request asked for draft-model speculation but no draft model is loaded")
        ctx = self._draft_ctx
        if ctx is None or ctx.n_seq != n_seq or ctx.n_ctx_seq < n_ctx_seq:
            if ctx is not None:
                ctx.free()
            self._draft_ctx = ctx = DraftContext(self.draft_model, n_seq, n_ctx_seq)
        return ctx

    def detach_draft(self) -> None:
        if self._draft_ctx is not None:
            self._draft_ctx.free()
            self._draft_ctx = None
        if self.draft_model is not None:
            self.draft_model.close()
            self.draft_model = None

    def cancel_all(self) -> None:
        """Cancel whatever is generating (chat's Ctrl-C: called from the signal handler)."""
        if self._sched is not None:
            self._sched.cancel_all()

    # -- embeddings ------------------------------------------------------------------------
    def embed(self, texts: list[str]) -> list[list[float]]:
        """One L2-normalised vector per text, in order (see `Embedder`)."""
        return [e.vector for e in self.embeddings(texts)]

    def embeddings(self, texts: list[str]) -> Iterator["Embedding"]:
        """Each text's embedding and token count, in order. Every input is checked before any is embedded:
        an empty one is a usage error, one longer than the context a ContextOverflow (never truncated)."""
        limit = self.options.n_ctx or (self.n_ctx_train if self.n_ctx_train > 0 else EMBED_BATCH_TOKENS)
        tokens = [self.tokenize(text, add_bos=True, special=False) for text in texts]
        for i, toks in enumerate(tokens):
            if not toks:
                raise UsageError(f"input {i} is empty: there is nothing to embed")
            if len(toks) > limit:
                where = "--ctx-size" if self.options.n_ctx else "the model's trained context"
                raise ContextOverflow(f"input {i} is {len(toks)} tokens, but the context holds {limit} ({where})",
                                      hint="shorten or split the input" + (", or raise --ctx-size" if self.options.n_ctx else ""))
        if not tokens:
            return
        need = max(max(map(len, tokens)), min(sum(map(len, tokens)), EMBED_BATCH_TOKENS))
        need = min(limit, -(-need // CTX_GRANULE) * CTX_GRANULE)
        import threading

        with self.__dict__.setdefault("_embed_lock", threading.Lock()):  # callers in several threads share one context
            embedder = getattr(self, "_embedder", None)
            if embedder is None or embedder.n_ctx < need:
                self._free_embedder()
                t0 = time.perf_counter()
                embedder = self._embedder = Embedder(self, need)
                self.load_s += time.perf_counter() - t0
            vectors = list(embedder.run(tokens))
        for vector, toks in zip(vectors, tokens):
            yield Embedding(vector, len(toks))

    def _free_embedder(self) -> None:
        embedder = getattr(self, "_embedder", None)
        if embedder is not None:
            embedder.free()
            self._embedder = None

    # -- llama-bench's measures -------------------------------------------------------------
    def _fresh(self, n_ctx: int) -> "LlamaBackend":
        backend = self.scheduler(1, n_ctx).backend
        backend.forget(0, 0)
        self._sched.slot_tokens[0].clear()
        return backend

    def _random_tokens(self, n: int, seed: int) -> list[int]:
        import random

        rng = random.Random(seed)
        n_vocab = self._lib.llama_vocab_n_tokens(self.vocab)
        return [rng.randrange(n_vocab) for _ in range(n)]

    def bench_pp(self, n: int, n_ctx: int) -> float:
        """Seconds to evaluate n prompt tokens in batches from an empty cache (llama-bench's pp)."""
        b = self._fresh(n_ctx)
        tokens = self._random_tokens(n, n)

        def run() -> float:
            t0 = time.perf_counter()
            for start in range(0, n, b.n_batch):
                chunk = tokens[start:start + b.n_batch]
                for i, token in enumerate(chunk):
                    b.add(token, start + i, 0, i == len(chunk) - 1)
                b.decode()
            b.synchronize()
            return time.perf_counter() - t0

        return self._sched.call(run)  # decoded where every other decode of this context is: the scheduler's thread

    def bench_tg(self, n: int, n_ctx: int) -> float:
        """Seconds to decode n tokens one at a time from an empty cache (llama-bench's tg)."""
        b = self._fresh(n_ctx)
        token = self._random_tokens(1, 7)[0]

        def run() -> float:
            t0 = time.perf_counter()
            for i in range(n):
                b.add(token, i, 0, True)
                b.decode()
            b.synchronize()
            return time.perf_counter() - t0

        return self._sched.call(run)

    def close(self) -> None:
        self._free_embedder()
        if self._sched is not None:
            self._sched.close()
            self._sched.backend.free()
            self._sched = None
        self.detach_draft()
        self._model.close()
