"""Embeddings: a second llama.cpp context on a model's weights, pooled and L2-normalised."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from infer import hardware
from infer.engine.backend import KV_TYPES, _new_context
from infer.errors import InferError, UsageError

if TYPE_CHECKING:
    from infer.engine.model import Model

EMBED_BATCH_TOKENS = 2048  # the embedding context is sized to a batch of this many tokens (or the longest input)
POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}


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
