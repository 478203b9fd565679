"""The OpenAI dialect: request bodies (pydantic) -> engine jobs, engine events -> response JSON and SSE chunks.
Pure translation: no I/O, no engine calls beyond building Sampling values."""

from __future__ import annotations

import codecs
import json
import time
import uuid
from dataclasses import replace
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from infer.engine import Done, Sampling, TokenLogprob

MAX_TOKENS_LIMIT = 1 << 20  # beyond any context: an absurd value is malformed, not a long answer
MAX_N = 128


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None
    tool_call_id: Optional[str] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchema(_Body):
    name: Optional[str] = None
    schema_: Optional[dict] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchema] = None


class _Sampled(_Body):
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, ge=0, le=1)
    top_k: Optional[int] = Field(default=None, ge=0)  # an extension, as llama-server and vLLM accept
    min_p: Optional[float] = Field(default=None, ge=0, le=1)
    repeat_penalty: Optional[float] = Field(default=None, gt=0)
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2)  # accepted, not used
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)  # accepted, not used
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    options: Optional[dict[str, Any]] = None  # Ollama-style options (num_ctx ...), honoured on /v1 too
    ignore_eos: bool = False  # an extension (llama-server, vLLM): fixed answer lengths for benchmarks
    user: Optional[str] = None

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    response_format: Optional[ResponseFormat] = None

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_top(self) -> int | None:
        """Alternatives to report per token when logprobs are asked for; None when they are not."""
        if not self.logprobs:
            if self.top_logprobs:
                raise ValueError("top_logprobs: needs logprobs: true")
            return None
        return self.top_logprobs or 0

    def chat_messages(self) -> list[dict]:
        out = []
        for m in self.messages:
            role = "system" if m.role == "developer" else m.role
            out.append({"role": role, "content": m.text()})
        return out


class CompletionRequest(_Sampled):
    prompt: Union[str, list[str]]
    logprobs: Optional[int] = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: Optional[str] = None

    def limit(self) -> int | None:
        return self.max_tokens  # None: until the model stops or the context is full, as llama-server (not OpenAI's 16)

    def logprobs_top(self) -> int | None:
        return self.logprobs

    def prompt_text(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise ValueError("prompt: give one string (a list of several prompts is not supported; use n for choices)")
            return self.prompt[0]
        return self.prompt


class EmbeddingRequest(_Body):
    model: Optional[str] = None
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"  # the official client asks for base64 by default

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# -- requests -> sampling ------------------------------------------------------------------------
def sampling(body: _Sampled, base: Sampling, limit: int | None, grammar: str | None) -> Sampling:
    given = {k: getattr(body, k) for k in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed")
             if getattr(body, k) is not None}
    return replace(base, **given, max_tokens=limit, stop=body.stops() or base.stop, grammar=grammar,
                   ignore_eos=body.ignore_eos)


def schema_of(body: ChatRequest) -> tuple[bool, dict | None]:
    """(json wanted, schema) from response_format."""
    rf = body.response_format
    if rf is None or rf.type == "text":
        return False, None
    if rf.type == "json_object":
        return True, None
    if rf.json_schema is None or rf.json_schema.schema_ is None:
        raise ValueError("response_format.json_schema.schema is required for type json_schema")
    return True, rf.json_schema.schema_


def seeds(base: Sampling, n: int) -> list[Sampling]:
    """n choices of one prompt: seeds seed, seed+1, ... so that they differ and stay reproducible."""
    if n == 1 or base.seed is None:
        return [base] * n
    return [replace(base, seed=base.seed + i) for i in range(n)]


# -- events -> responses ---------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def usage(dones: list[Done]) -> dict:
    """OpenAI's usage; drafts of `serve --lookup` the model kept or not are OpenAI's predicted-output counts."""
    prompt = dones[0].usage.prompt_tokens if dones else 0
    completion = sum(d.usage.completion_tokens for d in dones)
    cached = dones[0].usage.cached_tokens if dones else 0
    accepted = sum(d.usage.accepted for d in dones)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"accepted_prediction_tokens": accepted,
                                          "rejected_prediction_tokens": sum(d.usage.drafted for d in dones) - accepted}}


class Logprobs:
    """One choice's token logprobs in the route's shape: chat's `{"content": [...]}`, or the legacy completions
    object, whose `top_logprobs` always hold the sampled token (up to N+1 entries, as OpenAI's) and whose
    `text_offset` counts characters from the start of the answer, across the chunks of a stream."""

    def __init__(self, chat: bool):
        self.chat = chat
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._at = 0

    def __call__(self, entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict:
        if self.chat:
            return {"content": [{**_token(e.piece, e.logprob), "top_logprobs": [_token(p, lp) for p, lp in e.top]}
                                for e in entries], "refusal": None}
        out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in entries:
            token = e.piece.decode("utf-8", "replace")
            out["tokens"].append(token)
            out["token_logprobs"].append(e.logprob)
            out["top_logprobs"].append({**{p.decode("utf-8", "replace"): lp for p, lp in e.top}, token: e.logprob})
            out["text_offset"].append(self._at)
            self._at += len(self._decoder.decode(e.piece))
        return out


def _token(piece: bytes, logprob: float) -> dict:
    return {"token": piece.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(piece)}


def chat_response(rid: str, model: str, texts: list[str], dones: list[Done], logprobs: list | None = None) -> dict:
    logprobs = logprobs or [None] * len(texts)
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": lp,
                     "finish_reason": finish(d.finish_reason)}
                    for i, (t, d, lp) in enumerate(zip(texts, dones, logprobs))],
        "usage": usage(dones), "system_fingerprint": None,
    }


def completion_response(rid: str, model: str, texts: list[str], dones: list[Done],
                        logprobs: list | None = None) -> dict:
    logprobs = logprobs or [None] * len(texts)
    return {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "text": t, "logprobs": lp, "finish_reason": finish(d.finish_reason)}
                    for i, (t, d, lp) in enumerate(zip(texts, dones, logprobs))],
        "usage": usage(dones), "system_fingerprint": None,
    }


def chat_chunk(rid: str, model: str, created: int, index: int, delta: dict, finish_reason: str | None = None,
               logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}


def completion_chunk(rid: str, model: str, created: int, index: int, text: str, finish_reason: str | None = None,
                     logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": None,
            "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}


def usage_chunk(rid: str, model: str, created: int, obj: str, dones: list[Done]) -> dict:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage(dones)}


def embeddings_response(model: str, vectors: list[list[float]], prompt_tokens: int, encoding: str = "float") -> dict:
    def encode(v: list[float]):
        if encoding != "base64":
            return v
        import array
        import base64

        return base64.b64encode(array.array("f", v).tobytes()).decode("ascii")  # little-endian float32, as OpenAI

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def models_response(names: list[tuple[str, int]]) -> dict:
    return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "infer"}
                                       for n, created in names]}


def sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode("utf-8")


def error_body(message: str, code: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
