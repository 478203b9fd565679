"""`infer batch --host`: the lines of a batch file sent to a running OpenAI-compatible server (`infer serve`,
llama-server, vLLM), `parallel` requests in flight; the output, resume and summary are batch.py's.

Each line not answered yet is one non-streaming POST of its body to the server's base URL + the line's url,
with the model (the body's, else -m's), --seed (a derived per-line seed, as locally) and --max-tokens filled
in where the body gives none. The short form is turned into an OpenAI body first (batch.parse_line checks
it). Here a line must only be a JSON object with a usable custom_id and, in the OpenAI form, a POST with a
supported url and an object body: the rest of a body is the server's to judge, and its 4xx answer becomes
the line's error line.

Retries: 429, 502, 503 and 504 answers and connection errors, TRIES tries in all, waiting Retry-After when
the server sends one, else an exponential backoff (INFER_RETRY_BACKOFF, doubled each time, with jitter). A
busy answer (429/503) also lowers how many requests are in flight to what the server holds (Gate), so the
lines beyond its queue wait for a place instead of spending their tries. A line still refused after its
last try is an error line. Where no line is at fault the batch stops instead, with the lines
already written kept and a rerun finishing the rest: the server unreachable after every retry (exit 6), a
refused API key (9), a URL that is no OpenAI API (404, exit 6), a model the server lacks when -m (not the
line) named it (3).

asyncio with httpx, not threads: cancelling a request's task closes its connection, which is how the server
learns to stop generating, and a Ctrl-C (asyncio.run cancels the main task) reaches every request at once.
Nothing here imports Typer, Rich or llama_cpp.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Callable, Iterator

from infer import batch as core, settings
from infer.client import CONNECT_TIMEOUT_S, HINT, Server, http_error
from infer.errors import AuthError, ModelNotFound, NetworkError, UsageError

URLS = {**core.URLS, "/v1/embeddings": "embedding"}
FORM_KEYS = frozenset({"custom_id", "prompt", "messages", "system", "raw"})  # the short form's own keys
TRIES = 6  # per line, the first included
RETRY_STATUS = frozenset({429, 502, 503, 504})  # busy, or a gateway that lost the server for a moment
BUSY_STATUS = frozenset({429, 503})  # the server is full: fewer requests in flight (Gate)
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 120.0  # a longer Retry-After is waited this long, then asked again
READ_TIMEOUT_S = 1800.0  # nothing arrives before a non-streamed answer is whole: queue and generation included


@dataclass(frozen=True)
class Defaults:
    """What the command line adds to a body that does not say it."""

    model: str
    seed: int | None = None  # base seed: each line gets batch.derive_seed(seed, custom_id)
    max_tokens: int | None = None


@dataclass(frozen=True)
class Call:
    """A line ready to send."""

    line: int
    custom_id: str
    url: str
    body: dict
    own_model: bool  # the line named its model (else it is -m's, and a server without it stops the batch)


@dataclass(frozen=True)
class Outcome:
    line: dict  # the output line
    ok: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0


# -- lines -> calls ---------------------------------------------------------------------------------
def parse_call(raw: bytes | None, line: int, defaults: Defaults) -> Call | core.BadLine | None:
    """One input line as a Call, a BadLine, or None for a blank line."""
    if raw is None or not raw.strip():
        return core.parse_line(raw, line)
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        obj = None
    if not isinstance(obj, dict):
        return core.parse_line(raw, line)  # its error line
    cid, problem = core.custom_id_of(obj, line)
    if problem:
        return core.BadLine(line, cid, "invalid_request", problem)
    try:
        if core.is_full_form(obj):
            url, body = core.envelope(obj, URLS)
            body = dict(body)
        else:
            job = core.parse_line(raw, line)
            if isinstance(job, core.BadLine):
                return job
            url, body = short_body(obj, job)
    except core.Invalid as e:
        return core.BadLine(line, cid, e.code, e.message)
    own_model = bool(body.get("model"))
    return Call(line, cid, url, fill(body, url, cid, defaults), own_model)


def short_body(obj: dict, job: core.Job) -> tuple[str, dict]:
    """The OpenAI request for a short-form line: its messages (the system prompt included) or raw prompt,
    with every other key of the line passed on as it is."""
    rest = {k: v for k, v in obj.items() if k not in FORM_KEYS}
    if job.kind == "chat":
        return "/v1/chat/completions", {**rest, "messages": list(job.messages)}
    return "/v1/completions", {**rest, "prompt": obj["prompt"]}


def fill(body: dict, url: str, custom_id: str, defaults: Defaults) -> dict:
    if not body.get("model"):
        body["model"] = defaults.model
    if URLS[url] == "embedding":
        return body
    body["stream"] = False
    body.pop("stream_options", None)
    if defaults.seed is not None and body.get("seed") is None:
        body["seed"] = core.derive_seed(defaults.seed, custom_id)
    if defaults.max_tokens is not None and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = defaults.max_tokens
    return body


def calls(path: Path, existing: core.Existing, defaults: Defaults) -> Iterator[Call | core.BadLine]:
    """The input's lines not answered yet, streamed."""
    with open(path, "rb") as f:
        for n, raw in core.iter_lines(f):
            item = parse_call(raw, n, defaults)
            if item is None or existing.has(item.custom_id):
                continue
            yield item


# -- one request, retried -----------------------------------------------------------------------------
def probe(server: Server) -> None:
    """Refuse a server nobody answers at before anything is written (a TCP connect: any server, any API)."""
    e = server.endpoint
    try:
        socket.create_connection((e.host, e.port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise NetworkError(f"cannot reach the server at {e}: {_reason(err)}", hint=HINT) from None


def backoff_s() -> float:
    text = settings.INFER_RETRY_BACKOFF.get()
    try:
        value = float(text) if text else 1.0
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UsageError(f"INFER_RETRY_BACKOFF={text!r} is not a number of seconds")
    return value


def retry_wait(attempt: int, backoff: float, retry_after: str | None) -> float:
    """Seconds before try `attempt + 1`: the server's Retry-After (seconds or an HTTP date), else the backoff
    doubled per try, with jitter so that parallel requests do not come back together."""
    if retry_after:
        try:
            wait = float(retry_after)
        except ValueError:
            try:
                wait = parsedate_to_datetime(retry_after).timestamp() - time.time()
            except (TypeError, ValueError, IndexError):
                wait = None
        if wait is not None and wait == wait:
            return min(RETRY_AFTER_MAX_S, max(0.0, wait))
    return min(BACKOFF_MAX_S, backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class Gate:
    """How many requests may be in flight: --parallel, lowered to what the server holds whenever it answers
    busy (429/503), and raised by one again after as many calm answers in a row as the limit (a server busy
    with other clients for a while gets the batch's full width back). Without it, the lines beyond the
    server's queue would spend their tries while the server works through the others."""

    def __init__(self, most: int):
        self.most = self.limit = most
        self.inside = 0  # requests sent and not answered yet
        self.calm = 0  # answers in a row that were not busy
        self.opened = asyncio.Event()

    async def enter(self) -> None:
        while self.inside >= self.limit:  # one event loop: nothing runs between this test and the count
            self.opened.clear()
            await self.opened.wait()
        self.inside += 1

    def leave(self, busy: bool) -> None:
        if busy:  # the server holds the others in flight, not this one
            self.limit, self.calm = max(1, self.inside - 1), 0
        else:
            self.calm += 1
            if self.calm >= self.limit and self.limit < self.most:
                self.limit, self.calm = self.limit + 1, 0
        self.inside -= 1
        self.opened.set()


async def send(http, gate: Gate, call: Call, server: Server, backoff: float) -> Outcome:
    """POST one line, retrying what is worth retrying. Raises the InferError that stops the batch."""
    import httpx

    where = str(server.endpoint)
    for attempt in range(1, TRIES + 1):
        r = lost = None
        await gate.enter()
        try:
            r = await http.post(server.endpoint.base + call.url, json=call.body)
        except httpx.TransportError as e:
            lost = e
        finally:
            gate.leave(busy=r is not None and r.status_code in BUSY_STATUS)
        if lost is not None:
            if attempt == TRIES:
                raise NetworkError(f"lost the server at {where}: {_reason(lost)} ({TRIES} tries); the lines written are "
                                   "kept", hint="rerun the same command once the server is back: the batch resumes")
            await asyncio.sleep(retry_wait(attempt, backoff, None))
            continue
        if r.status_code == 200:
            return answer(call, r.content, r.headers.get("x-request-id"))
        if r.status_code in RETRY_STATUS and attempt < TRIES:
            await asyncio.sleep(retry_wait(attempt, backoff, r.headers.get("retry-after")))
            continue
        return refusal(call, r.status_code, r.content, where, attempt)
    raise AssertionError("unreachable")


def answer(call: Call, content: bytes, request_id: str | None) -> Outcome:
    """A 200 answer as the line's result, the server's body as it is."""
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        return Outcome(core.error_line(call.line, call.custom_id, "invalid_response",
                                       "the server's answer (200) is not a JSON object"), ok=False)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    request_id = request_id or (body.get("id") if isinstance(body.get("id"), str) else None)
    return Outcome(core.response_line(call.custom_id, body, request_id), ok=True, prompt_tokens=_int(usage.get("prompt_tokens")),
                   completion_tokens=_int(usage.get("completion_tokens")))


def refusal(call: Call, status: int, content: bytes, where: str, tries: int) -> Outcome:
    """A non-200 answer: the line's error line, or the error that stops the batch when no line is at fault."""
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        text = content.decode("utf-8", "replace").strip()
        body = text.splitlines()[0][:200] if text else ""
    err = http_error(status, body, where, None)
    detail = body.get("error") if isinstance(body, dict) else None
    detail = detail if isinstance(detail, dict) else {"message": detail} if isinstance(detail, str) else {}
    if isinstance(err, AuthError):
        raise err
    if status == 404 and not isinstance(err, ModelNotFound):
        raise NetworkError(f"the server at {where} has no {call.url} (404)",
                           hint="--host takes the server's base URL, e.g. http://127.0.0.1:8080")
    if isinstance(err, ModelNotFound) and not call.own_model:
        raise err  # -m's model, the model of every line that names none: no such line would succeed
    code = detail.get("code") or detail.get("type")
    code = code if isinstance(code, str) and code else f"http_{status}"
    said = str(detail.get("message") or (body if isinstance(body, str) else "")).strip()
    message = f"the server answered {status}" + (f": {said}" if said else "") + (f" ({tries} tries)" if tries > 1 else "")
    return Outcome(core.error_line(call.line, call.custom_id, code, message), ok=False)


# -- the run ------------------------------------------------------------------------------------------
def execute(path: Path, writer: core.Writer, existing: core.Existing, server: Server, defaults: Defaults,
            parallel: int, total: int, progress: Callable[[core.Summary], None] = lambda s: None) -> core.Summary:
    """Send every line not yet answered; write each result as it comes. On Ctrl-C, requests in flight are
    cancelled, what finished is written and the summary says interrupted (the caller re-raises)."""
    summary = core.Summary(requests=total, done_before=existing.done, ok=len(existing.ok), failed=len(existing.failed))
    backoff = backoff_s()
    t0 = time.perf_counter()
    try:
        asyncio.run(_execute(calls(path, existing, defaults), server, writer, summary, parallel, backoff, progress, t0))
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.wall_s = time.perf_counter() - t0
        writer.flush()
    return summary


async def _execute(items: Iterator, server: Server, writer: core.Writer, summary: core.Summary, parallel: int,
                   backoff: float, progress, t0: float) -> None:
    import httpx

    def record(outcome: Outcome) -> None:
        writer.add(outcome.line)
        if outcome.ok:
            summary.ok += 1
            summary.prompt_tokens += outcome.prompt_tokens
            summary.completion_tokens += outcome.completion_tokens
        else:
            summary.failed += 1
        summary.wall_s = time.perf_counter() - t0
        progress(summary)

    e = server.endpoint
    headers = {"Accept": "application/json", "User-Agent": "infer"}
    if server.api_key:
        headers["Authorization"] = f"Bearer {server.api_key}"
    # trust_env=False: no proxy from the environment, as `run --host` (http.client) uses none
    async with httpx.AsyncClient(base_url=f"{e.scheme}://{e.host}:{e.port}", headers=headers, trust_env=False,
                                 timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                                 limits=httpx.Limits(max_connections=parallel, max_keepalive_connections=parallel)) as http:
        flights: dict[asyncio.Task, Call] = {}
        gate = Gate(parallel)
        try:
            more = True
            while True:
                while more and len(flights) < parallel:
                    item = next(items, None)
                    if item is None:
                        more = False
                    elif isinstance(item, core.BadLine):
                        record(Outcome(core.error_line(item.line, item.custom_id, item.code, item.message), ok=False))
                    else:
                        flights[asyncio.create_task(send(http, gate, item, server, backoff))] = item
                if not flights:
                    break
                done, _ = await asyncio.wait(flights, timeout=core.FLUSH_SECONDS, return_when=asyncio.FIRST_COMPLETED)
                writer.tick()
                for task in done:
                    del flights[task]
                    record(task.result())  # an error that stops the batch is raised here
        finally:  # Ctrl-C, or an error that stops the batch: cancel what is in flight, keep what finished
            for task in flights:
                task.cancel()
            for outcome in await asyncio.gather(*flights, return_exceptions=True):
                if isinstance(outcome, Outcome):
                    record(outcome)


def _reason(e: BaseException) -> str:
    import httpx

    if isinstance(e, socket.gaierror):
        return "unknown host"
    if isinstance(e, ConnectionRefusedError) or (isinstance(e, httpx.ConnectError) and "refused" in str(e).lower()):
        return "connection refused"
    if isinstance(e, (TimeoutError, socket.timeout, httpx.TimeoutException)):
        return "timed out"
    if isinstance(e, httpx.RemoteProtocolError):
        return "the server closed the connection"
    return str(e) or type(e).__name__


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
