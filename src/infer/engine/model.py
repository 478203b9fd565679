"""The model: loading, tokenizing, chat templates, contexts; the only module that imports llama_cpp.

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
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from infer import hardware
from infer.engine.events import Event
from infer.engine.sampling import Sampling
from infer.engine.scheduler import PREFILL_CHUNK, Request, Scheduler
from infer.engine.speculate import Speculation
from infer.errors import BadModel, ContextOverflow, InferError, UsageError
from infer.gguf_meta import check_gguf

# Used when a model carries no chat template (documented in the README).
GENERIC_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
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


KV_TYPES = {"f16": 1, "f32": 0, "q8_0": 8, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7}  # ggml_type ids


def _llama():
    """Import llama_cpp with its native logging silenced until we choose otherwise."""
    import llama_cpp

    _install_log_sink(llama_cpp)
    return llama_cpp


_LOG = {"verbose": False, "callback": None, "lines": []}


class _DeferredInterrupt:
    """Ctrl-C while llama.cpp loads: a KeyboardInterrupt raised inside a ctypes callback (llama.cpp
    logs through Python callbacks) is swallowed by ctypes. So while C code runs, SIGINT only sets a
    flag; the load's progress callback sees it and cancels the load; on exit, KeyboardInterrupt."""

    def __init__(self):
        self.hit = False
        self._prev = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            prev = signal.getsignal(signal.SIGINT)
            if prev not in (signal.SIG_IGN, signal.SIG_DFL, None):
                self._prev = prev
                signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, signum, frame):  # noqa: ARG002 - signal handler signature
        self.hit = True

    def __exit__(self, *exc):
        import signal

        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)
        if self.hit:
            raise KeyboardInterrupt
        return False


def _install_log_sink(llama_cpp) -> None:
    if _LOG["callback"] is not None:
        return

    @llama_cpp.llama_log_callback
    def sink(level, text, user_data):  # noqa: ARG001 - signature fixed by ggml
        try:
            msg = text.decode("utf-8", "replace")
            if _LOG["verbose"]:
                import sys

                sys.stderr.write(msg)
            else:  # keep the last lines: they explain a failed load
                _LOG["lines"] = (_LOG["lines"] + [msg])[-20:]
        except KeyboardInterrupt:  # ctypes would swallow it: deliver Ctrl-C again once this callback has returned
            _redeliver_sigint()

    _LOG["callback"] = sink
    llama_cpp.llama_log_set(sink, ctypes.c_void_p(0))


def _redeliver_sigint() -> None:
    from infer.interrupts import redeliver_sigint

    redeliver_sigint()


def _last_log_error() -> str:
    for line in reversed(_LOG["lines"]):
        line = line.strip()
        if line and ("error" in line.lower() or "failed" in line.lower()):
            return line
    return ""


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
        """Render messages with the model's own template (sandboxed Jinja, via llama-cpp-python)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        bos = self.token_text(self._model.token_bos())
        eos = self.token_text(self._model.token_eos())
        formatter = Jinja2ChatFormatter(template=self.chat_template or GENERIC_CHAT_TEMPLATE, eos_token=eos, bos_token=bos)
        try:
            prompt = formatter(messages=messages).prompt
        except Exception as e:  # a template may raise_exception() on roles it does not support
            raise UsageError(f"the model's chat template rejected the conversation: {e}",
                             hint="try --raw, or leave out --system if the model has no system role") from e
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
        t0 = time.perf_counter()
        for start in range(0, n, b.n_batch):
            chunk = tokens[start:start + b.n_batch]
            for i, token in enumerate(chunk):
                b.add(token, start + i, 0, i == len(chunk) - 1)
            b.decode()
        b.synchronize()
        return time.perf_counter() - t0

    def bench_tg(self, n: int, n_ctx: int) -> float:
        """Seconds to decode n tokens one at a time from an empty cache (llama-bench's tg)."""
        b = self._fresh(n_ctx)
        token = self._random_tokens(1, 7)[0]
        t0 = time.perf_counter()
        for i in range(n):
            b.add(token, i, 0, True)
            b.decode()
        b.synchronize()
        return time.perf_counter() - t0

    def close(self) -> None:
        self._free_embedder()
        if self._sched is not None:
            self._sched.close()
            self._sched.backend.free()
            self._sched = None
        self.detach_draft()
        self._model.close()


def _new_context(model: Model, params, what: str, hint: str):
    """A llama.cpp context for `model` (Ctrl-C deferred while it is made); a failure is one clear error."""
    try:
        with _DeferredInterrupt():
            return model._internals.LlamaContext(model=model._model, params=params, verbose=model.options.verbose)
    except ValueError as e:
        detail = _last_log_error()
        raise InferError(f"llama.cpp could not create a {what}" + (f": {detail}" if detail else ""), hint=hint) from e


ARGMAX_THREADS = max(1, min(8, (os.cpu_count() or 2) // 2))
ARGMAX_SPLIT = 1 << 22  # logits in a step (rows x vocabulary) from which their argmax is shared among threads


def argmax_parts(rows: int, n_vocab: int, on_gpu: bool) -> int:
    """How many threads share the argmax of a step's logits: on a GPU host, whose CPU idles while the GPU decodes,
    many long rows (64 x 128k = 32 MB: ~1 ms for one thread) in chunks of 8 rows or more; on the CPU, one (llama.cpp's
    own threads need the cores)."""
    if not on_gpu or rows * n_vocab < ARGMAX_SPLIT:
        return 1
    return max(1, min(rows // 8, ARGMAX_THREADS))
LOGPROB_FLOOR = -9999.0  # the logprob of an impossible token (vLLM's value): JSON has no -inf
_GREEDY = object()  # the sampler of a plain greedy request: an argmax, no llama.cpp sampler chain


class LlamaBackend:
    """One llama context with `n_seq` sequences (non-unified KV: each sequence has its own `n_ctx_seq` cells,
    so one never evicts another's), one batch the scheduler fills, and llama.cpp's samplers."""

    def __init__(self, model: Model, n_seq: int, n_ctx_seq: int):
        lib, opts = model._lib, model.options
        self.model, self._lib = model, lib
        self.n_seq = n_seq
        n_ctx = n_seq * n_ctx_seq
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_seq_max = n_seq
        params.kv_unified = False
        params.n_batch = max(min(n_ctx, opts.n_batch), n_seq)
        params.n_ubatch = min(params.n_batch, opts.n_ubatch)
        threads = opts.n_threads or hardware.default_threads()
        params.n_threads = threads
        params.n_threads_batch = threads
        params.flash_attn_type = {"auto": lib.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                  "off": lib.LLAMA_FLASH_ATTN_TYPE_DISABLED}[opts.flash_attn]
        params.type_k = params.type_v = KV_TYPES[opts.kv_type]
        params.no_perf = True
        self._ctx = _new_context(model, params, f"{n_ctx}-token context", "try a smaller --ctx-size, or --kv-type q8_0")
        self.ctx = self._ctx.ctx
        self.n_ctx_seq = lib.llama_n_ctx_seq(self.ctx)
        self.n_batch = lib.llama_n_batch(self.ctx)
        self.threads = threads
        self._mem = lib.llama_get_memory(self.ctx)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        b = self._batch
        self._token, self._pos, self._nseq, self._seq, self._logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        self._n = 0
        self._rows = [0] * self.n_batch  # batch index -> its row among the outputs (the logits llama.cpp returns)
        self._n_out = self._outputs = 0  # outputs in the batch being filled, and in the one decoded last
        self._argmax: dict[int, int] = {}  # batch index -> the argmax of its row, for the greedy rows of a step
        self._pool = None  # threads for the argmax of many long rows
        self._one = (lib.llama_token * 1)()
        self._single = False  # the pending batch is one token of sequence 0: decode it through llama_batch_get_one
        self._buf = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}  # token id -> its text (the vocabulary does not change)
        self._eog: dict[int, bool] = {}
        self.vocab = model.vocab
        self._n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        import numpy  # llama_cpp depends on it and has imported it already

        self._np = numpy

    def warm_up(self) -> None:
        """One throwaway decode as the context is made, as llama.cpp's tools and server do: the first decode pays
        one-time costs (a GPU's libraries and kernels, the compute buffers, the pages of a mapped model), which
        belong to loading, not to the first request's time to first token. The scheduler's thread calls it: the
        CPU worker threads it starts are that thread's, with its signal mask."""
        lib = self._lib
        ends = (lib.llama_vocab_bos(self.vocab), lib.llama_vocab_eos(self.vocab))
        warm = [t for t in ends if t != lib.LLAMA_TOKEN_NULL] or [0]
        tokens = (lib.llama_token * len(warm))(*warm)
        lib.llama_set_warmup(self.ctx, True)  # a mixture of experts runs every expert: all its weights are read
        try:
            rc = lib.llama_decode(self.ctx, lib.llama_batch_get_one(tokens, len(warm)))
        finally:
            lib.llama_set_warmup(self.ctx, False)
        lib.llama_memory_clear(self._mem, True)
        self.synchronize()
        if rc != 0:
            raise InferError(f"the model could not run in this context (llama_decode code {rc})",
                             hint="try a smaller --ctx-size or --parallel")

    def add(self, token: int, pos: int, seq: int, logits: bool) -> None:
        i = self._n
        self._token[i] = token
        self._pos[i] = pos
        self._nseq[i] = 1
        self._seq[i][0] = seq
        self._logits[i] = logits
        if logits:
            self._rows[i] = self._n_out
            self._n_out += 1
        self._n = i + 1
        self._single = i == 0 and seq == 0 and logits

    def decode(self) -> None:
        n, self._n = self._n, 0
        self._outputs, self._n_out, self._argmax = self._n_out, 0, {}
        if n == 0:
            return
        if n == 1 and self._single:  # the per-token path of one sequence: llama.cpp places it after the last one
            self._one[0] = self._token[0]
            rc = self._lib.llama_decode(self.ctx, self._lib.llama_batch_get_one(self._one, 1))
        else:
            self._batch.n_tokens = n
            rc = self._lib.llama_decode(self.ctx, self._batch)
        if rc != 0:
            reason = {1: "no room left in the KV cache", 2: "aborted"}.get(rc, "error")
            raise InferError(f"llama_decode failed ({reason}, code {rc})", hint="try a smaller --ctx-size or --parallel")

    def presample(self, wanted: list[tuple[object, int]]) -> None:
        """Before the step's samples: when every output of the batch just decoded is a greedy one, their argmaxes in
        one pass over llama.cpp's logits (64 rows of a 128k vocabulary are 32 MB a step; on a GPU host, several
        threads share it: the CPU is idle while the GPU decodes), instead of one call per row."""
        rows = [i for sampler, i in wanted if sampler is _GREEDY]
        if len(rows) < 8 or len(rows) != self._outputs or len(set(rows)) != self._outputs:
            return
        np = self._np
        logits = np.ctypeslib.as_array(self._lib.llama_get_logits(self.ctx), shape=(self._outputs, self._n_vocab))
        parts = argmax_parts(self._outputs, self._n_vocab, self.model.offloaded)
        if parts <= 1:
            best = logits.argmax(axis=1)
        else:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(ARGMAX_THREADS, thread_name_prefix="infer-argmax")
            bounds = [self._outputs * k // parts for k in range(parts + 1)]
            best = np.concatenate(list(self._pool.map(lambda k: logits[bounds[k]:bounds[k + 1]].argmax(axis=1),
                                                      range(parts))))
        self._argmax = {i: int(best[self._rows[i]]) for i in rows}

    def sample(self, sampler, index: int) -> int:
        if sampler is _GREEDY and index in self._argmax:
            return self._argmax[index]
        if sampler is _GREEDY:  # argmax over the row: what llama.cpp's greedy sampler picks (the first maximum),
            # without building its 100k-entry candidate array per token (the cost that caps batched decoding)
            row = self._lib.llama_get_logits_ith(self.ctx, index)
            return int(self._np.ctypeslib.as_array(row, shape=(self._n_vocab,)).argmax())
        return self._lib.llama_sampler_sample(sampler, self.ctx, index)

    def logprobs(self, index: int, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
        """The log-softmax of the raw logits at `index` (no temperature or grammar): `token`'s value and the `top`
        most likely tokens'. Computed only for a request that asks for logprobs."""
        np = self._np
        row = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self.ctx, index), shape=(self._n_vocab,))
        row = row.astype(np.float64)
        peak = row.max()
        row -= peak + np.log(np.exp(row - peak).sum())
        value = lambda t: max(float(row[t]), LOGPROB_FLOOR)  # noqa: E731 - finite: JSON has no -inf
        best = []
        if top > 0:
            ids = np.argpartition(-row, top - 1)[:top] if top < len(row) else np.arange(len(row))
            best = [(int(t), value(t)) for t in ids[np.argsort(-row[ids])]]
        return value(token), best

    def forget(self, seq: int, start: int) -> None:
        self._lib.llama_memory_seq_rm(self._mem, seq, start, -1)

    def copy(self, src: int, dst: int) -> None:
        """dst's KV becomes src's. Across the streams of a non-unified cache llama.cpp copies whole streams only
        (p0 = p1 = -1), and does it at the start of the next decode, before that batch writes any cell."""
        self._lib.llama_memory_seq_cp(self._mem, src, dst, -1, -1)

    def new_sampler(self, sampling: Sampling):
        if sampling.temperature <= 0 and not sampling.grammar and sampling.repeat_penalty == 1.0:
            return _GREEDY
        return self.model.new_sampler(sampling)

    def free_sampler(self, sampler) -> None:
        if sampler is not _GREEDY:
            self._lib.llama_sampler_free(sampler)

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:  # asked once per token id: a dict is 20x quicker than a call into llama.cpp
            eog = self._eog[token] = bool(self._lib.llama_vocab_is_eog(self.vocab, token))
        return eog

    def piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            n = self._lib.llama_token_to_piece(self.vocab, token, self._buf, len(self._buf), 0, False)
            if n < 0:  # a piece longer than the buffer: grow it once
                self._buf = ctypes.create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self.vocab, token, self._buf, len(self._buf), 0, False)
            piece = self._pieces[token] = ctypes.string_at(self._buf, n)
        return piece

    def save_seq(self, seq: int) -> bytes:
        """The sequence's KV state (llama.cpp's own format) as bytes."""
        lib = self._lib
        size = lib.llama_state_seq_get_size(self.ctx, seq)
        buf = (ctypes.c_uint8 * size)()
        n = lib.llama_state_seq_get_data(self.ctx, buf, size, seq)
        return ctypes.string_at(buf, n)

    def load_seq(self, seq: int, data: bytes) -> bool:
        """Restore a state saved by save_seq into `seq`; False (and the sequence empty) when llama.cpp refuses it."""
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if self._lib.llama_state_seq_set_data(self.ctx, buf, len(data), seq) == 0:
            self.forget(seq, 0)
            return False
        return True

    def synchronize(self) -> None:
        self._lib.llama_synchronize(self.ctx)

    def free(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()


EMBED_BATCH_TOKENS = 2048  # the embedding context is sized to a batch of this many tokens (or the longest input)
POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}


class DraftContext:
    """The draft model's context for speculative decoding: one sequence per scheduler slot, holding the KV of the
    tokens the draft model has read. A proposal first brings the slot up to date with the sequence's tokens
    (dropping what the target rejected), then continues greedily, one token per decode."""

    def __init__(self, model: "Model", n_seq: int, n_ctx_seq: int):
        self.backend = LlamaBackend(model, n_seq, n_ctx_seq)
        self.n_seq, self.n_ctx_seq = n_seq, n_ctx_seq
        self.read: list[list[int]] = [[] for _ in range(n_seq)]

    def propose(self, slot: int, tokens: list[int], n: int) -> list[int]:
        b, read = self.backend, self.read[slot]
        n = min(n, self.backend.n_ctx_seq - len(tokens) - 1)
        if n <= 0 or not tokens:
            return []
        keep = 0
        for a, c in zip(read, tokens):
            if a != c:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)  # the last token is always fed again: its logits start the draft
        b.forget(slot, keep)
        del read[keep:]
        while len(read) < len(tokens):  # catch up in batch-sized chunks; logits for the last token only
            chunk = tokens[len(read):len(read) + b.n_batch]
            for i, token in enumerate(chunk):
                b.add(token, len(read) + i, slot, len(read) + i == len(tokens) - 1)
            b.decode()
            read.extend(chunk)
        draft: list[int] = []
        while True:
            token = b.sample(_GREEDY, -1)  # the last output: the only one with logits
            if b.is_eog(token):
                break
            draft.append(token)
            if len(draft) >= n:
                break
            b.add(token, len(read), slot, True)
            b.decode()
            read.append(token)
        return draft

    def free(self) -> None:
        self.backend.free()


def check_draft_vocab(target: "Model", draft: "Model") -> None:
    """The rule llama.cpp's speculative decoding uses: same tokenizer type, same BOS/EOS, at most 128 tokens more
    or fewer, and the same text for every token id from 5 on that both have."""
    lib = target._lib
    tv, dv = target.vocab, draft.vocab
    n_t, n_d = lib.llama_vocab_n_tokens(tv), lib.llama_vocab_n_tokens(dv)
    why = ""
    if lib.llama_vocab_type(tv) != lib.llama_vocab_type(dv):
        why = "another kind of tokenizer"
    elif (lib.llama_vocab_bos(tv), lib.llama_vocab_eos(tv)) != (lib.llama_vocab_bos(dv), lib.llama_vocab_eos(dv)):
        why = "other begin/end tokens"
    elif abs(n_t - n_d) > 128:
        why = f"{n_d} tokens against {n_t}"
    else:
        for i in range(5, min(n_t, n_d)):
            if target.token_text(i) != draft.token_text(i):
                why = f"token {i} is {draft.token_text(i)!r} there and {target.token_text(i)!r} here"
                break
    if why:
        raise UsageError(f"the draft model {draft.path.name} has another vocabulary than {target.path.name} ({why})",
                         hint="pick a draft model of the same family (the same tokenizer)")


@dataclass(frozen=True)
class Embedding:
    vector: list[float]  # L2-normalised
    tokens: int  # the input's tokens (special tokens included)


class Embedder:
    """A second llama context on the model's weights, made for embeddings: pooled with the model's own pooling
    (mean for a generative model, which has none), several inputs decoded in one batch with one sequence id each.

    The KV buffer is unified: with llama.cpp's default (one KV stream per sequence) an input pooled in a batch
    did not give what it gives alone (cosine 0.61-0.94 in a prototype); with one buffer (and no flash attention,
    see below) the batch gives each input's own vector."""

    MAX_SEQ = 64  # inputs per decode

    def __init__(self, model: Model, n_ctx: int):
        lib, opts = model._lib, model.options
        self._lib = lib
        self.pooling = model_pooling(model.metadata)
        if self.pooling == POOLING["rank"]:
            raise UsageError("this is a reranking model: it scores pairs of texts and gives no embeddings")
        params = lib.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = self.pooling
        params.kv_unified = True
        params.n_ctx = n_ctx
        params.n_seq_max = self.MAX_SEQ
        # an encoder (non-causal attention) must see a whole batch in one ubatch
        params.n_batch = params.n_ubatch = n_ctx
        threads = opts.n_threads or hardware.default_threads()
        params.n_threads = params.n_threads_batch = threads
        # Flash attention only when asked for: ggml's CPU kernel takes another path once a batch holds more than
        # a few dozen tokens, and a pooled input then drifts from itself alone (cosine 0.9999); without it, exact.
        # The KV is short-lived here, so it stays f16 (a quantized KV would need flash attention).
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if opts.flash_attn == "on" else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.type_k = params.type_v = KV_TYPES["f16"]
        params.no_perf = True
        self._ctx = _new_context(model, params, f"{n_ctx}-token embedding context", "try a smaller --ctx-size")
        self.ctx = self._ctx.ctx
        self.n_ctx = n_ctx
        self.n_embd = lib.llama_model_n_embd(model._model.model)
        self._mem = lib.llama_get_memory(self.ctx)
        self._batch = lib.llama_batch_init(n_ctx, 0, 1)

    def run(self, token_lists: list[list[int]]) -> Iterator[list[float]]:
        """The inputs' vectors in order; each input fits the context (the caller checked)."""
        start = 0
        while start < len(token_lists):
            end, total = start, 0
            while end < len(token_lists) and end - start < self.MAX_SEQ and total + len(token_lists[end]) <= self.n_ctx:
                total += len(token_lists[end])
                end += 1
            yield from self._decode(token_lists[start:end])
            start = end

    def _decode(self, group: list[list[int]]) -> list[list[float]]:
        lib, b = self._lib, self._batch
        lib.llama_memory_clear(self._mem, True)
        n = 0
        for seq, tokens in enumerate(group):
            for pos, token in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = token, pos, 1, True
                b.seq_id[n][0] = seq
                n += 1
        b.n_tokens = n
        rc = lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise InferError(f"llama_decode failed while embedding (code {rc})")
        out = []
        for seq in range(len(group)):
            ptr = lib.llama_get_embeddings_seq(self.ctx, seq)
            if not ptr:
                raise InferError("llama.cpp returned no pooled embedding")
            out.append(_normalised(ptr[:self.n_embd]))
        return out

    def free(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()


def model_pooling(metadata: dict) -> int:
    """The model's pooling type from its GGUF metadata; mean for a model without one (a generative model)."""
    arch = metadata.get("general.architecture", "")
    try:
        value = int(metadata.get(f"{arch}.pooling_type", 0))
    except ValueError:
        value = 0
    return value if value > 0 else POOLING["mean"]


def _normalised(values: list[float]) -> list[float]:
    norm = sum(v * v for v in values) ** 0.5
    return [v / norm for v in values] if norm > 0 else list(values)


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str  # cpu | gpu | igpu | accel | rpc (a worker's device)
    free: int
    total: int


_GGML: dict = {}


def ggml_lib():
    """libggml through ctypes, with the backend-registry functions typed (llama-cpp-python binds none of them);
    None when the library cannot be found."""
    if "lib" in _GGML:
        return _GGML["lib"]
    import sys

    lib_dir = Path(_llama().__file__).parent / "lib"
    suffix = ".dylib" if sys.platform == "darwin" else ".dll" if sys.platform == "win32" else ".so"
    # The copy llama.cpp itself loaded: a wheel holds libggml.so, .so.0 and .so.0.x as separate files, and
    # another copy would have a registry of its own (workers registered there would be invisible to loads).
    candidates = [p for p in _loaded_libraries() if p.name.startswith(f"libggml{suffix}")]
    ggml = None
    for path in [*candidates, lib_dir / f"libggml{suffix}", lib_dir / f"ggml{suffix}"]:
        try:
            ggml = ctypes.CDLL(str(path))
            break
        except OSError:
            continue
    if ggml is not None:
        P, S = ctypes.c_void_p, ctypes.c_char_p
        for fn, args, res in (
            ("ggml_backend_dev_count", [], ctypes.c_size_t), ("ggml_backend_dev_get", [ctypes.c_size_t], P),
            ("ggml_backend_dev_name", [P], S), ("ggml_backend_dev_description", [P], S),
            ("ggml_backend_dev_type", [P], ctypes.c_int), ("ggml_backend_dev_backend_reg", [P], P),
            ("ggml_backend_dev_by_name", [S], P),
            ("ggml_backend_dev_memory", [P, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)], None),
            ("ggml_backend_reg_count", [], ctypes.c_size_t), ("ggml_backend_reg_get", [ctypes.c_size_t], P),
            ("ggml_backend_reg_name", [P], S), ("ggml_backend_reg_by_name", [S], P),
            ("ggml_backend_reg_get_proc_address", [P, S], P), ("ggml_backend_register", [P], None),
            ("ggml_backend_buft_name", [P], S),
        ):
            f = getattr(ggml, fn)
            f.argtypes, f.restype = args, res
    _GGML["lib"] = ggml
    return ggml


def _loaded_libraries() -> list[Path]:
    """Shared libraries mapped into this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            return list(dict.fromkeys(Path(line.split(None, 5)[5].strip()) for line in f if line.count(" ") >= 5
                                      and "/" in line))
    except (OSError, IndexError):
        return []


_RPC = {"registered": False}  # set by engine.rpc once workers are registered (they are then every load's default)


def _local_gpus() -> list[int]:
    """This machine's GPU devices (not RPC workers'), as ggml device pointers."""
    ggml = ggml_lib()
    out = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        reg = ggml.ggml_backend_dev_backend_reg(dev)
        if ggml.ggml_backend_dev_type(dev) in (1, 2) and not (ggml.ggml_backend_reg_name(reg) or b"").startswith(b"RPC"):
            out.append(dev)
    return out


def devices() -> list[Device]:
    """The compute devices this llama.cpp build sees (ggml's backend registry), RPC workers' devices included
    (kind "rpc") once they are registered."""
    ggml = ggml_lib()
    if ggml is None:
        return []
    kinds = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}
    out = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        reg = ggml.ggml_backend_dev_backend_reg(dev)
        kind = kinds.get(ggml.ggml_backend_dev_type(dev), "other")
        if reg and (ggml.ggml_backend_reg_name(reg) or b"").startswith(b"RPC"):
            kind = "rpc"
        out.append(Device(name=(ggml.ggml_backend_dev_name(dev) or b"").decode(),
                          description=(ggml.ggml_backend_dev_description(dev) or b"").decode(),
                          kind=kind, free=free.value, total=total.value))
    return out


def cpu_weight_buffers() -> list[str]:
    """The CPU backend's extra weight buffer types in this build on this CPU, in llama.cpp's order of preference
    (weights repacked for faster kernels: "AMX", "CPU_REPACK", ...)."""
    if "cpu_bufts" in _GGML:
        return _GGML["cpu_bufts"]
    ggml, names = ggml_lib(), []
    for i in range(ggml.ggml_backend_dev_count() if ggml is not None else 0):
        dev = ggml.ggml_backend_dev_get(i)
        reg = ggml.ggml_backend_dev_backend_reg(dev)
        if ggml.ggml_backend_dev_type(dev) != 0 or (ggml.ggml_backend_reg_name(reg) or b"").startswith(b"RPC"):
            continue
        addr = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
        if addr:
            bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)(dev)
            k = 0
            while bufts and bufts[k]:
                names.append((ggml.ggml_backend_buft_name(bufts[k]) or b"").decode())
                k += 1
        break
    _GGML["cpu_bufts"] = names
    return names


def amx_avoided() -> bool:
    """Whether loads keep weights out of llama.cpp's AMX buffers. Its AMX kernels crash (SIGSEGV in
    ggml_backend_amx_mul_mat on the first decode; ggml-org/llama.cpp#20824, seen here with SmolLM2 Q4_1 on a Xeon
    with AMX, in llama-cpp-python's own Llama too), so a build made on such a CPU would crash on every model of
    the quant types they take. Weight repacking is then off as a whole (llama.cpp has one switch for both);
    INFER_CPU_AMX=1 keeps it."""
    return "AMX" in cpu_weight_buffers() and os.environ.get("INFER_CPU_AMX", "").lower() not in ("1", "on", "true", "yes")


def system_info() -> str:
    return _llama().llama_print_system_info().decode("utf-8", "replace")


def supports_gpu_offload() -> bool:
    """Whether this build has a GPU backend (llama.cpp's own answer also says yes for the RPC backend alone)."""
    if not _llama().llama_supports_gpu_offload():
        return False
    ggml = ggml_lib()
    if ggml is None:
        return True
    names = {(ggml.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)) or b"").decode()
             for i in range(ggml.ggml_backend_reg_count())}
    return any(n not in ("CPU", "BLAS") and not n.startswith("RPC") for n in names) or \
        any(d.kind in ("gpu", "igpu") for d in devices())
