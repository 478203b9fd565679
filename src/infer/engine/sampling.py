"""What to sample and when to stop: sampling parameters, JSON grammars, stop strings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from infer.errors import UsageError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    max_tokens: int | None = None  # None: until end of generation or the context is full
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF text
    ignore_eos: bool = False  # keep going past end-of-generation tokens (benchmarks: fixed answer lengths)


def json_grammar(schema: dict | None) -> str:
    """GBNF for any JSON value (schema None) or for a JSON schema, via llama-cpp-python."""
    from infer.engine.native import _llama

    _llama()
    from llama_cpp import llama_grammar

    if schema is None:
        return llama_grammar.JSON_GBNF
    try:
        return llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # the converter raises many kinds on bad schemas
        raise UsageError(f"invalid JSON schema: {e}", hint="pass a JSON schema object, e.g. '{\"type\": \"object\"}'") from e


class StopMatcher:
    """Holds back text that may be the start of a stop string; reports the cut point."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buf = self.held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held = ""
            return buf[:cut], True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held
