"""The Ollama dialect: request bodies (pydantic) -> engine jobs, engine events -> NDJSON lines, with Ollama's
field names and timing fields (nanoseconds) so that the official `ollama` client works. Pure translation."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from infer.engine import Done, Sampling

MAX_PREDICT = 1 << 20


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Options(_Body):
    temperature: Optional[float] = Field(default=None, ge=0)
    top_p: Optional[float] = Field(default=None, ge=0, le=1)
    top_k: Optional[int] = Field(default=None, ge=0)
    min_p: Optional[float] = Field(default=None, ge=0, le=1)
    repeat_penalty: Optional[float] = Field(default=None, gt=0)
    repeat_last_n: Optional[int] = Field(default=None, ge=0)
    seed: Optional[int] = None
    num_predict: Optional[int] = Field(default=None, ge=-2, le=MAX_PREDICT)  # -1: no limit
    num_ctx: Optional[int] = Field(default=None, ge=16, le=1 << 24)
    stop: Union[str, list[str], None] = None


class Message(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: Optional[list[str]] = None


class _Generating(_Body):
    model: str = Field(min_length=1)
    stream: bool = True
    format: Union[Literal["", "json"], dict, None] = None
    options: Optional[Options] = None
    keep_alive: Union[float, str, None] = None


class ChatRequest(_Generating):
    messages: list[Message] = Field(default_factory=list)

    def chat_messages(self) -> list[dict]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


class GenerateRequest(_Generating):
    prompt: Optional[str] = None
    system: Optional[str] = None
    raw: bool = False
    suffix: Optional[str] = None


class EmbedRequest(_Body):
    model: str = Field(min_length=1)
    input: Union[str, list[str]]
    keep_alive: Union[float, str, None] = None
    options: Optional[Options] = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class ShowRequest(_Body):
    model: Optional[str] = None
    name: Optional[str] = None  # the older spelling

    def which(self) -> str:
        return self.model or self.name or ""


class PullRequest(_Body):
    model: Optional[str] = None
    name: Optional[str] = None
    stream: bool = True
    insecure: bool = False

    def which(self) -> str:
        return self.model or self.name or ""


# -- requests -> sampling ----------------------------------------------------------------------------
def sampling(options: Options | None, base: Sampling, grammar: str | None) -> Sampling:
    o = options or Options()
    given = {k: getattr(o, k) for k in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n",
                                        "seed") if getattr(o, k) is not None}
    limit = o.num_predict if o.num_predict is not None and o.num_predict > 0 else None
    stops = (o.stop,) if isinstance(o.stop, str) else tuple(o.stop or ())
    return replace(base, **given, max_tokens=limit, stop=stops or base.stop, grammar=grammar)


def format_of(fmt) -> tuple[bool, dict | None]:
    if fmt in (None, ""):
        return False, None
    if fmt == "json":
        return True, None
    return True, fmt


# -- events -> lines ------------------------------------------------------------------------------------
def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def done_fields(done: Done, total_s: float, load_s: float) -> dict:
    t, u = done.timings, done.usage
    ns = lambda s: int(max(s, 0.0) * 1e9)  # noqa: E731
    return {"done_reason": "length" if done.finish_reason == "length" else "stop",
            "total_duration": ns(total_s), "load_duration": ns(load_s),
            "prompt_eval_count": u.prompt_tokens, "prompt_eval_duration": ns(t.prompt_s),
            "eval_count": u.completion_tokens, "eval_duration": ns(t.gen_s)}


def chat_line(model: str, text: str, done: Done | None = None, *, total_s: float = 0.0, load_s: float = 0.0) -> dict:
    line = {"model": model, "created_at": now(), "message": {"role": "assistant", "content": text}, "done": done is not None}
    if done is not None:
        line.update(done_fields(done, total_s, load_s))
    return line


def generate_line(model: str, text: str, done: Done | None = None, *, total_s: float = 0.0, load_s: float = 0.0) -> dict:
    line = {"model": model, "created_at": now(), "response": text, "done": done is not None}
    if done is not None:
        line.update(done_fields(done, total_s, load_s))
    return line


def load_line(model: str, chat: bool, reason: str) -> dict:
    """The answer to an empty request: a model loaded (or unloaded), nothing generated."""
    line = {"model": model, "created_at": now(), "done": True, "done_reason": reason}
    line.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
    return line


def ndjson(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


def details(quant: str | None, family: str | None, params: str | None) -> dict:
    return {"parent_model": "", "format": "gguf", "family": family or "", "families": [family] if family else None,
            "parameter_size": params or "", "quantization_level": quant or ""}


def error_body(message: str) -> dict:
    return {"error": message}


def iso(ts: float | str | None) -> str:
    if isinstance(ts, str) and ts:
        return ts
    if isinstance(ts, (int, float)) and ts != float("inf"):
        return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")
    return "2262-04-11T23:47:16Z"  # Ollama's "never" (the largest time it can write)


def tag_entry(name: str, modified: str, size: int, digest: str, det: dict) -> dict[str, Any]:
    return {"name": name, "model": name, "modified_at": iso(modified), "size": size, "digest": digest, "details": det}
