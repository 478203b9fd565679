"""The context the scheduler drives: one llama.cpp context of n_seq sequences and its batch (LlamaBackend), the
draft model's context for speculative decoding, and the whole-step argmax."""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING

from infer import hardware
from infer.engine.native import _DeferredInterrupt, _last_log_error
from infer.errors import InferError, UsageError

if TYPE_CHECKING:
    from infer.engine.model import Model
    from infer.engine.sampling import Sampling

KV_TYPES = {"f16": 1, "f32": 0, "q8_0": 8, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7}  # ggml_type ids


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
