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
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from infer import hardware
from infer.engine.events import Event
from infer.engine.sampling import Sampling
from infer.engine.scheduler import Request, Scheduler
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
        msg = text.decode("utf-8", "replace")
        if _LOG["verbose"]:
            import sys

            sys.stderr.write(msg)
        else:  # keep the last lines: they explain a failed load
            _LOG["lines"] = (_LOG["lines"] + [msg])[-20:]

    _LOG["callback"] = sink
    llama_cpp.llama_log_set(sink, ctypes.c_void_p(0))


def _last_log_error() -> str:
    for line in reversed(_LOG["lines"]):
        line = line.strip()
        if line and ("error" in line.lower() or "failed" in line.lower()):
            return line
    return ""


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
        params.use_mmap = options.mmap
        params.use_mlock = options.mlock
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
        self.n_layers = llama_cpp.llama_model_n_layer(self._model.model)
        self.where = "CPU" if options.n_gpu_layers == 0 else "GPU"

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

    def scheduler(self, n_seq: int, n_ctx_seq: int) -> Scheduler:
        """The scheduler that owns this model's one context: `n_seq` sequences of `n_ctx_seq` tokens each.
        An existing one is reused when it is as large; otherwise it is replaced (when idle)."""
        old = self._sched
        if old is not None and old.n_seq == n_seq and old.n_ctx_seq >= n_ctx_seq:
            return old
        if old is not None:
            old.close()
            old.backend.free()
            self._sched = None
        t0 = time.perf_counter()
        backend = LlamaBackend(self, n_seq, n_ctx_seq)
        self.load_s += time.perf_counter() - t0
        self._sched = Scheduler(backend, load_s=self.load_s)
        return self._sched

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

    def cancel_all(self) -> None:
        """Cancel whatever is generating (chat's Ctrl-C: called from the signal handler)."""
        if self._sched is not None:
            self._sched.cancel_all()

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
        if self._sched is not None:
            self._sched.close()
            self._sched.backend.free()
            self._sched = None
        self._model.close()


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
        threads = opts.n_threads or hardware.physical_cores()
        params.n_threads = threads
        params.n_threads_batch = threads
        params.flash_attn_type = {"auto": lib.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                                  "off": lib.LLAMA_FLASH_ATTN_TYPE_DISABLED}[opts.flash_attn]
        params.type_k = params.type_v = KV_TYPES[opts.kv_type]
        params.no_perf = True
        try:
            with _DeferredInterrupt():
                self._ctx = model._internals.LlamaContext(model=model._model, params=params, verbose=opts.verbose)
        except ValueError as e:
            detail = _last_log_error()
            raise InferError(f"llama.cpp could not create a {n_ctx}-token context" + (f": {detail}" if detail else ""),
                             hint="try a smaller --ctx-size, or --kv-type q8_0") from e
        self.ctx = self._ctx.ctx
        self.n_ctx_seq = lib.llama_n_ctx_seq(self.ctx)
        self.n_batch = lib.llama_n_batch(self.ctx)
        self.threads = threads
        self._mem = lib.llama_get_memory(self.ctx)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        b = self._batch
        self._token, self._pos, self._nseq, self._seq, self._logits = b.token, b.pos, b.n_seq_id, b.seq_id, b.logits
        self._n = 0
        self._one = (lib.llama_token * 1)()
        self._single = False  # the pending batch is one token of sequence 0: decode it through llama_batch_get_one
        self._buf = ctypes.create_string_buffer(256)
        self.vocab = model.vocab
        self._n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        import numpy  # llama_cpp depends on it and has imported it already

        self._np = numpy

    def add(self, token: int, pos: int, seq: int, logits: bool) -> None:
        i = self._n
        self._token[i] = token
        self._pos[i] = pos
        self._nseq[i] = 1
        self._seq[i][0] = seq
        self._logits[i] = logits
        self._n = i + 1
        self._single = i == 0 and seq == 0 and logits

    def decode(self) -> None:
        n, self._n = self._n, 0
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

    def sample(self, sampler, index: int) -> int:
        if sampler is _GREEDY:  # argmax over the row: what llama.cpp's greedy sampler picks (the first maximum),
            # without building its 100k-entry candidate array per token (the cost that caps batched decoding)
            row = self._lib.llama_get_logits_ith(self.ctx, index)
            return int(self._np.ctypeslib.as_array(row, shape=(self._n_vocab,)).argmax())
        return self._lib.llama_sampler_sample(sampler, self.ctx, index)

    def forget(self, seq: int, start: int) -> None:
        self._lib.llama_memory_seq_rm(self._mem, seq, start, -1)

    def new_sampler(self, sampling: Sampling):
        if sampling.temperature <= 0 and not sampling.grammar and sampling.repeat_penalty == 1.0:
            return _GREEDY
        return self.model.new_sampler(sampling)

    def free_sampler(self, sampler) -> None:
        if sampler is not _GREEDY:
            self._lib.llama_sampler_free(sampler)

    def is_eog(self, token: int) -> bool:
        return self._lib.llama_vocab_is_eog(self.vocab, token)

    def piece(self, token: int) -> bytes:
        n = self._lib.llama_token_to_piece(self.vocab, token, self._buf, len(self._buf), 0, False)
        if n < 0:  # a piece longer than the buffer: grow it once
            self._buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self.vocab, token, self._buf, len(self._buf), 0, False)
        return self._buf.raw[:n]

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
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str  # cpu | gpu | igpu | accel
    free: int
    total: int


def devices() -> list[Device]:
    """The compute devices this llama.cpp build sees (ggml's backend registry, through ctypes:
    llama-cpp-python does not bind these functions)."""
    import sys

    lib_dir = Path(_llama().__file__).parent / "lib"
    suffix = ".dylib" if sys.platform == "darwin" else ".dll" if sys.platform == "win32" else ".so"
    try:
        ggml = ctypes.CDLL(str(lib_dir / f"libggml{suffix}"))
    except OSError:
        try:
            ggml = ctypes.CDLL(str(lib_dir / f"ggml{suffix}"))
        except OSError:
            return []
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    for fn in (ggml.ggml_backend_dev_name, ggml.ggml_backend_dev_description):
        fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_char_p
    ggml.ggml_backend_dev_type.argtypes, ggml.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
    ggml.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    kinds = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}
    out = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(Device(name=(ggml.ggml_backend_dev_name(dev) or b"").decode(),
                          description=(ggml.ggml_backend_dev_description(dev) or b"").decode(),
                          kind=kinds.get(ggml.ggml_backend_dev_type(dev), "other"), free=free.value, total=total.value))
    return out


def system_info() -> str:
    return _llama().llama_print_system_info().decode("utf-8", "replace")


def supports_gpu_offload() -> bool:
    return bool(_llama().llama_supports_gpu_offload())
