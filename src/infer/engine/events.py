"""The values every caller of the engine sees: text chunks as they are decoded, then one Done."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability: the log-softmax of the raw logits of the position that produced it
    (before temperature, penalties or grammar, as vLLM reports), and the most likely tokens there."""

    piece: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()  # (piece, logprob), most likely first


@dataclass(frozen=True)
class Text:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens decoded since the last Text, when the request asked


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    drafted: int = 0  # tokens proposed by speculation
    accepted: int = 0  # of which the model kept


@dataclass(frozen=True)
class Timings:
    load_s: float
    ttft_s: float
    prompt_s: float
    gen_s: float
    prompt_tps: float
    gen_tps: float
    queue_s: float = 0.0  # waiting for a free sequence slot


@dataclass(frozen=True)
class Done:
    finish_reason: str  # stop | length | cancelled
    usage: Usage
    timings: Timings


@dataclass(frozen=True)
class Failed:
    """A request the engine could not finish (the handle raises `error` in the caller's thread)."""

    error: Exception


Event = Text | Done
