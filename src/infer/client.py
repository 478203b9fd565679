"""A client for a running OpenAI-compatible server (`infer serve`, llama.cpp's llama-server, vLLM): `run` and
`chat` with `--host` send their request there instead of loading the model, and get the engine's own events back
(Text chunks, then one Done), so the views, `--json` and exit codes are the same.

Requests are streamed (`stream: true`, server-sent events); time to first token is measured here, from the
request to the first text. Leaving the iteration early, or `cancel()` from a signal handler, closes the
connection: that is how a server learns that its client went away and stops generating.

Why http.client and not httpx: httpx is installed (huggingface_hub brings it) but costs about 0.35 s more to
import, and a warm server is used for start-up time; http.client is what urllib is built on, minus urllib's
own cost, and gives the socket that cancel() must close. Nothing here imports Typer, Rich or llama_cpp.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit

from infer.engine.events import Done, Text, Timings, Usage
from infer.errors import AuthError, ContextOverflow, InferError, ModelNotFound, NetworkError, UsageError

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 600.0  # between two bytes of a response: a long prompt, or a wait in the server's queue
HINT = "is the server running (`infer serve`)? check --host or INFER_HOST"


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    base: str  # path prefix before /v1, without a trailing slash

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.base}"


def parse_url(url: str) -> Endpoint:
    """`http://host:port`, optionally with a path prefix or a trailing /v1; a bare host:port means http."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--host {url!r} is not an http:// or https:// URL", hint="e.g. --host http://127.0.0.1:8080")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"--host {url!r} has an invalid port") from None
    base = parts.path.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return Endpoint(parts.scheme, parts.hostname, port, base)


def request_body(model: str, sampling, *, messages: list[dict] | None = None, prompt: str | None = None,
                 schema: dict | None = None, json_mode: bool = False) -> dict:
    """The OpenAI request for a chat (messages) or a plain completion (prompt), with every sampling value sent,
    so the server samples as a local run would. top_k, min_p and repeat_penalty are llama.cpp's names (vLLM
    and infer serve take them too)."""
    body: dict = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    if messages is not None:
        body["messages"] = messages
    else:
        body["prompt"] = prompt
    body.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k, min_p=sampling.min_p,
                repeat_penalty=sampling.repeat_penalty)
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.max_tokens is not None:
        body["max_tokens"] = sampling.max_tokens
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    elif json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


class Server:
    """One OpenAI-compatible server. Each call is one streaming request."""

    def __init__(self, url: str, api_key: str | None = None):
        self.endpoint = parse_url(url)
        self.api_key = api_key

    def chat(self, model: str, messages: list[dict], sampling, **fmt) -> "Stream":
        return Stream(self, "/v1/chat/completions", request_body(model, sampling, messages=messages, **fmt), model)

    def complete(self, model: str, prompt: str, sampling, **fmt) -> "Stream":
        return Stream(self, "/v1/completions", request_body(model, sampling, prompt=prompt, **fmt), model)

    def connect(self):
        import http.client

        e = self.endpoint
        if e.scheme == "https":
            return http.client.HTTPSConnection(e.host, e.port, timeout=CONNECT_TIMEOUT_S)
        return http.client.HTTPConnection(e.host, e.port, timeout=CONNECT_TIMEOUT_S)

    def headers(self) -> dict:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream", "User-Agent": "infer"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h


class Stream:
    """A streaming request: iterate it for Text events, then one Done. `model` is the server's name for the model
    once it has answered. cancel() may be called from a signal handler: the connection is closed and the
    iteration ends with Done(finish_reason="cancelled"), the text so far kept."""

    def __init__(self, server: Server, path: str, body: dict, model: str):
        self.server = server
        self.path = server.endpoint.base + path
        self.body = body
        self.model = model
        self.cancelled = False
        self._conn = None
        self._sock = None

    def cancel(self) -> None:
        self.cancelled = True
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a recv() in progress; the server sees the disconnect
            except OSError:
                pass

    def close(self) -> None:
        conn, self._conn, self._sock = self._conn, None, None
        if conn is not None:
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            conn.close()

    def __iter__(self) -> Iterator[Text | Done]:
        t0 = time.perf_counter()
        try:
            response = self._send()
            yield from self._events(response, t0)
        finally:
            self.close()

    def _send(self):
        import http.client

        conn = self._conn = self.server.connect()
        where = str(self.server.endpoint)
        try:
            conn.connect()
            self._sock = conn.sock
            conn.sock.settimeout(READ_TIMEOUT_S)
            conn.request("POST", self.path, body=json.dumps(self.body).encode("utf-8"), headers=self.server.headers())
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            if self.cancelled:
                raise KeyboardInterrupt from None
            raise NetworkError(f"cannot reach the server at {where}: {_reason(e)}", hint=HINT) from None
        if response.status != 200:
            raise http_error(response.status, _read_small(response), where, response.getheader("Retry-After"))
        return response

    def _events(self, response, t0: float) -> Iterator[Text | Done]:
        if (response.getheader("Content-Type") or "").startswith("application/json"):
            yield from self._whole(response, t0)  # a server (or proxy) that does not stream
            return
        n_chunks, finish, usage, timings = 0, None, None, None
        t_first = None
        try:
            for data in sse_data(response):
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                except json.JSONDecodeError:
                    raise NetworkError(f"the server sent a malformed event: {data[:80]!r}", hint=HINT) from None
                if not isinstance(event, dict):
                    raise NetworkError(f"the server sent a malformed event: {data[:80]!r}", hint=HINT)
                if "error" in event:
                    raise http_error(400, event, str(self.server.endpoint), None, mid_stream=True)
                self.model = event.get("model") or self.model
                usage = event.get("usage") or usage
                timings = event.get("timings") or timings
                for choice in event.get("choices") or []:
                    text = _choice_text(choice)
                    if text:
                        if t_first is None:
                            t_first = time.perf_counter()
                        n_chunks += 1
                        yield Text(text)
                    finish = choice.get("finish_reason") or finish
            else:
                if not self.cancelled and finish is None:
                    raise NetworkError("the server closed the connection before the answer finished", hint=HINT)
        except (OSError, ValueError) as e:  # http.client raises ValueError-kinds for broken chunked framing
            if not self.cancelled:
                raise NetworkError(f"the connection to the server broke mid-answer: {_reason(e)}", hint=HINT) from None
        if self.cancelled:
            finish = "cancelled"
        yield self._done(finish or "stop", usage, timings, n_chunks, t0, t_first)

    def _whole(self, response, t0: float) -> Iterator[Text | Done]:
        try:
            answer = json.loads(response.read())
            choice = answer["choices"][0]
            message = choice.get("message")
            text = (message or {}).get("content") if isinstance(message, dict) else choice.get("text")
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise NetworkError("the server sent a malformed answer", hint=HINT) from None
        t_first = time.perf_counter()
        self.model = answer.get("model") or self.model
        if text:
            yield Text(str(text))
        yield self._done(choice.get("finish_reason") or "stop", answer.get("usage"), answer.get("timings"),
                         1 if text else 0, t0, t_first)

    def _done(self, finish: str, usage: dict | None, timings: dict | None, n_chunks: int, t0: float,
              t_first: float | None) -> Done:
        t_end = time.perf_counter()
        usage = usage if isinstance(usage, dict) else {}
        prompt_tokens = _int(usage.get("prompt_tokens"))
        completion_tokens = _int(usage.get("completion_tokens"), n_chunks)
        details = usage.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        drafts = usage.get("completion_tokens_details")  # `infer serve --lookup`: drafts kept and dropped
        drafts = drafts if isinstance(drafts, dict) else {}
        accepted = _int(drafts.get("accepted_prediction_tokens"))
        ttft = (t_first or t_end) - t0
        gen_s = t_end - (t_first or t_end)
        prompt_tps = _float((timings or {}).get("prompt_per_second")) if isinstance(timings, dict) else 0.0
        if not prompt_tps and prompt_tokens and ttft > 0:
            prompt_tps = prompt_tokens / ttft  # as this client sees it: queue and network included
        return Done(
            finish_reason=finish if finish in ("stop", "length", "cancelled") else "stop",
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cached_tokens=cached,
                        drafted=accepted + _int(drafts.get("rejected_prediction_tokens")), accepted=accepted),
            timings=Timings(load_s=0.0, ttft_s=ttft, prompt_s=ttft, gen_s=gen_s, prompt_tps=prompt_tps,
                            gen_tps=(completion_tokens - 1) / gen_s if completion_tokens > 1 and gen_s > 0 else 0.0))


def sse_data(response) -> Iterator[str]:
    """The `data` of each server-sent event (several data lines joined by newlines); comments and other fields
    are skipped. A stream may end without a blank line after its last event."""
    lines: list[str] = []
    while True:
        raw = response.readline()
        if not raw:
            break
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            lines.append(value[1:] if value.startswith(" ") else value)
    if lines:
        yield "\n".join(lines)


def http_error(status: int, body, where: str, retry_after: str | None, *, mid_stream: bool = False) -> InferError:
    """An HTTP error (or an error event in a stream) as the error a local run would raise, with its exit code."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, str):
        err = {"message": err}
    err = err if isinstance(err, dict) else {}
    message = str(err.get("message") or (body if isinstance(body, str) else "") or "").strip()
    code, kind = str(err.get("code") or ""), str(err.get("type") or "")
    if mid_stream and code.isdigit():  # llama-server puts the HTTP status in `code`
        status = int(code)
    said = f": {message}" if message else ""
    if code == "context_length_exceeded" or kind in ("exceed_context_size_error", "context_length_exceeded"):
        return ContextOverflow(f"the server refused the prompt: it does not fit the context{said}",
                               hint="shorten the input or lower --max-tokens")
    if status == 413:
        return ContextOverflow(f"the server refused a request this large (413){said}", hint="shorten the input")
    if status in (401, 403) or kind == "authentication_error":
        return AuthError(f"bad API key: the server at {where} refused the request ({status}){said}",
                         hint="pass the server's key with --api-key or INFER_API_KEY")
    if status == 404 and ("model" in code or "model" in message.lower()):
        return ModelNotFound(f"the server has no such model{said}", hint="`infer list` on the server's machine")
    if status == 404:
        return NetworkError(f"the server at {where} has no OpenAI API here (404){said}",
                            hint="--host takes the server's base URL, e.g. http://127.0.0.1:8080")
    if status in (429, 503):
        wait = f" (retry after {retry_after} s)" if retry_after else ""
        return NetworkError(f"the server is busy ({status}){said}{wait}", hint="try again shortly")
    if 400 <= status < 500:
        return UsageError(f"the server refused the request ({status}){said}")
    return NetworkError(f"the server failed ({status}){said}" if not mid_stream else f"the server failed mid-answer{said}",
                        hint=HINT)


def _read_small(response) -> object:
    """An error response's body: JSON when it parses, else its first line of text."""
    try:
        raw = response.read(65536)
    except (OSError, ValueError):
        return ""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip().splitlines()[0][:200] if raw.strip() else ""


def _choice_text(choice) -> str:
    if not isinstance(choice, dict):
        return ""
    delta = choice.get("delta")
    if isinstance(delta, dict):
        content = delta.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def _reason(e: BaseException) -> str:
    if isinstance(e, socket.gaierror):
        return "unknown host"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "timed out"
    return str(e) or type(e).__name__


def _int(value, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


# -- what run and chat need to name the model and sample as a local run would ------------------------------


def model_name(model: str | None, quant: str | None = None) -> tuple[str, dict]:
    """The model to ask the server for (what `-m` would resolve to here: -m, INFER_MODEL, config, the catalog
    default), and the catalog's sampling defaults for it. A name the catalog does not know goes as typed."""
    from infer import catalog, refs, resolve

    text, _ = resolve.choose(model)
    try:
        name, entry = resolve.store_name(refs.parse(text), quant, catalog.load())
    except InferError:
        if quant:
            raise UsageError(f"--quant {quant} needs a model reference infer knows",
                             hint="name the quant in -m instead: -m owner/repo:QUANT") from None
        return text, {}
    return name, dict(entry.defaults) if entry else {}


MAX_MATERIAL_CHARS = 8 << 20  # far beyond any context: the server counts tokens, this only bounds memory


def read_material(material, notice=lambda message: None) -> str:
    """Piped stdin for a server, read whole (the server counts its tokens and refuses what does not fit), with
    undecodable bytes replaced and reported; past MAX_MATERIAL_CHARS it is refused here, never cut."""
    from infer.complete import InputTooLong, read_bounded

    try:
        return read_bounded(material, len, MAX_MATERIAL_CHARS, notice)
    except InputTooLong:
        raise ContextOverflow(f"stdin is more than {MAX_MATERIAL_CHARS} characters: more than a server's context holds",
                              hint="split or shorten the input") from None


class RemoteModel:
    """What a chat session needs from a model, answered by the server: the server applies the chat template
    and counts tokens, so the history is fitted with an estimate (characters per token, corrected by the
    server's own prompt count after every turn) and the server refuses a prompt that does not fit."""

    chat_template = "the server's"

    def __init__(self, server: Server, name: str, n_ctx: int | None = None):
        from types import SimpleNamespace

        self.server = server
        self.name = name
        self.options = SimpleNamespace(n_ctx=n_ctx)
        self.where = f"the server at {server.endpoint}"
        self.n_ctx_train = 0
        self._chars_per_token = 3.0
        self._stream: Stream | None = None

    def format_chat(self, messages: list[dict]) -> tuple[str, "Messages"]:
        return "", Messages(messages, self._chars_per_token)

    def generate(self, tokens: "Messages", sampling) -> Iterator[Text | Done]:
        from dataclasses import replace

        n_ctx = self.options.n_ctx or 4096
        if sampling.max_tokens is not None and sampling.max_tokens >= n_ctx - len(tokens):
            sampling = replace(sampling, max_tokens=None)  # only what the context leaves: the server's call
        self._stream = self.server.chat(self.name, tokens.messages, sampling)
        for event in self._stream:
            if isinstance(event, Done) and event.usage.prompt_tokens > 0:
                self._chars_per_token = max(1.0, tokens.chars / event.usage.prompt_tokens)
            yield event

    def cancel_all(self) -> None:
        if self._stream is not None:
            self._stream.cancel()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


class Messages:
    """A chat's messages standing in for its prompt tokens: len() is the estimated token count."""

    def __init__(self, messages: list[dict], chars_per_token: float):
        self.messages = messages
        self.chars = sum(len(str(m.get("content") or "")) + 8 for m in messages)  # 8: a role's template overhead
        self._n = int(self.chars / chars_per_token) + 1

    def __len__(self) -> int:
        return self._n
