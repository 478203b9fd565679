"""`infer batch`: JSONL requests in, JSONL results out, resumable after any kill.

Input, one JSON object a line (blank lines are skipped):
  * the OpenAI Batch request form: {"custom_id", "method": "POST", "url": "/v1/chat/completions" or
    "/v1/completions", "body": {...}};
  * a short form for hand-written files: {"messages": [...]} or {"prompt": "..."} (a user message
    through the chat template, as `infer run`; "raw": true sends it as-is, as `--raw`), with
    sampling keys beside it and an optional "custom_id". A line without one is "line-N".

Output: the OpenAI Batch output form, one line per input line, in the order lines finish:
{"id", "custom_id", "response": {"status_code": 200, "request_id", "body": <chat.completion or
text_completion>}, "error": null}, or for a line that failed {"response": null, "error": {"code",
"message", "line"}}. Lines are written in small groups, each flushed and fsynced.

Resume: a sidecar file OUTPUT.infer.json records the input's sha256 and the model (name, file, size; for
a batch sent to a server by batch_remote.py, the server's URL and the model's name).
A rerun with the same input and model repairs a torn last line (a kill -9 inside a write), skips the
custom_ids already in the output and finishes the rest; an output from another input or model is
refused unless `force` (which starts it afresh).

Knows nothing of Typer or Rich; the model only through `format_chat`, `tokenize` and `scheduler`.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator

from infer.errors import ContextOverflow, InferError, NoSpace, UsageError

if TYPE_CHECKING:
    from infer.engine.speculate import Speculation

URLS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
SIDECAR_SUFFIX = ".infer.json"
SIDECAR_FORMAT = 1
MAX_LINE = 64 << 20  # a longer line is an error line, never read into memory whole
FLUSH_LINES = 16  # output lines per flush + fsync ...
FLUSH_SECONDS = 1.0  # ... or sooner, when this much time has passed
DRAIN_S = 10.0  # after Ctrl-C, how long to wait for the lines in flight to end (they end within a step)


# -- input lines ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """A request line that parsed: what to ask, how to sample."""

    line: int
    custom_id: str
    kind: str  # chat | completion
    messages: tuple | None = None
    prompt: str | tuple | None = None  # text, or token ids
    params: dict = field(default_factory=dict)  # Sampling fields given by the line, plus "response_format"


@dataclass(frozen=True)
class BadLine:
    """A line that cannot be run: it becomes an error line, and the batch goes on."""

    line: int
    custom_id: str
    code: str
    message: str


def line_id(line: int) -> str:
    return f"line-{line}"


def iter_lines(f: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the newline), streamed; None for a line longer than MAX_LINE."""
    n = 0
    while True:
        raw = f.readline(MAX_LINE + 1)
        if not raw:
            return
        n += 1
        if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # skip the rest of the long line
                raw = f.readline(MAX_LINE)
            yield n, None
            continue
        yield n, raw.rstrip(b"\r\n")


def custom_id_of(obj, line: int) -> tuple[str, str | None]:
    """The line's id, and a complaint if its custom_id is unusable."""
    cid = obj.get("custom_id") if isinstance(obj, dict) else None
    if cid is None:
        return line_id(line), None
    if isinstance(cid, str) and cid.strip():
        return cid, None
    return line_id(line), "custom_id must be a non-empty string"


def parse_line(raw: bytes | None, line: int) -> Job | BadLine | None:
    """One input line as a Job, a BadLine, or None for a blank line."""
    if raw is None:
        return BadLine(line, line_id(line), "invalid_request", f"the line is longer than {MAX_LINE >> 20} MiB")
    if not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return BadLine(line, line_id(line), "invalid_json", f"not valid JSON: {getattr(e, 'msg', e)}")
    if not isinstance(obj, dict):
        return BadLine(line, line_id(line), "invalid_request", f"a request line must be a JSON object, not {_kind(obj)}")
    cid, problem = custom_id_of(obj, line)
    if problem:
        return BadLine(line, cid, "invalid_request", problem)
    try:
        if is_full_form(obj):
            return _full_form(obj, line, cid)
        return _short_form(obj, line, cid)
    except Invalid as e:
        return BadLine(line, cid, e.code, e.message)


class Invalid(Exception):
    """A request line that cannot run: its error line's code and message."""

    def __init__(self, message: str, code: str = "invalid_request"):
        super().__init__(message)
        self.message, self.code = message, code


def _kind(value) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def envelope(obj: dict, urls) -> tuple[str, dict]:
    """The url and body of a line in the OpenAI Batch request form, checked against the urls supported."""
    method = obj.get("method", "POST")
    if method != "POST":
        raise Invalid(f"method {method!r} is not supported: use POST")
    url = obj.get("url")
    if url not in urls:
        *most, last = urls
        supported = f"{', '.join(most)} or {last}" if most else last
        raise Invalid(f"url {url!r} is not supported: use {supported}", code="invalid_url")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise Invalid("body must be a JSON object")
    return url, body


def is_full_form(obj: dict) -> bool:
    return "url" in obj or "body" in obj or "method" in obj


def _full_form(obj: dict, line: int, cid: str) -> Job:
    url, body = envelope(obj, URLS)
    if URLS[url] == "chat":
        return Job(line, cid, "chat", messages=_messages(body.get("messages")), params=_params(body))
    return Job(line, cid, "completion", prompt=_prompt(body.get("prompt")), params=_params(body))


def _short_form(obj: dict, line: int, cid: str) -> Job:
    if "messages" in obj:
        return Job(line, cid, "chat", messages=_messages(obj["messages"]), params=_params(obj))
    if "prompt" not in obj:
        raise Invalid("the line has no messages or prompt (or an OpenAI Batch url and body)")
    prompt = _prompt(obj["prompt"])
    raw = obj.get("raw", False) or isinstance(prompt, tuple)
    if not isinstance(raw, bool):
        raise Invalid("raw must be true or false")
    if raw:
        return Job(line, cid, "completion", prompt=prompt, params=_params(obj))
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        raise Invalid("system must be a string")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return Job(line, cid, "chat", messages=tuple(messages), params=_params(obj))


def _messages(value) -> tuple:
    if value is None:
        raise Invalid("the request has no messages")
    if not isinstance(value, list) or not value:
        raise Invalid("messages must be a non-empty array")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise Invalid(f"messages[{i}] must be an object with a role")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise Invalid(f"messages[{i}].content: only text parts are supported")
            content = "".join(p["text"] for p in content)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise Invalid(f"messages[{i}].content must be a string or an array of text parts")
        out.append({"role": m["role"], "content": content})
    return tuple(out)


def _prompt(value) -> str | tuple:
    """A string, or token ids (OpenAI's array of integers); an array of one of either is the same."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if value is None:
        raise Invalid("the request has no prompt")
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                 for t in value):
        return tuple(value)
    if not isinstance(value, str):
        raise Invalid("prompt must be a string or an array of token ids (or an array of one of those)")
    return value


def _number(body: dict, key: str, lo: float | None = None, hi: float | None = None, integer: bool = False,
            above: bool = False):
    value = body[key]
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise Invalid(f"{key} must be {'an integer' if integer else 'a number'}")
    if (lo is not None and (value <= lo if above else value < lo)) or (hi is not None and value > hi):
        bounds = f"greater than {lo}" if above else f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise Invalid(f"{key} must be {bounds}")
    return value


def _params(body: dict) -> dict:
    """The sampling keys a line gives, checked. Other OpenAI keys (user, logit_bias, ...) are ignored."""
    p: dict = {}
    checks = {"temperature": dict(lo=0), "top_p": dict(lo=0, hi=1), "min_p": dict(lo=0, hi=1),
              "top_k": dict(lo=0, integer=True), "repeat_penalty": dict(lo=0, above=True),
              "seed": dict(integer=True)}
    for key, spec in checks.items():
        if body.get(key) is not None:
            p[key] = _number(body, key, **spec)
    for key in ("max_tokens", "max_completion_tokens"):
        if body.get(key) is not None:
            p["max_tokens"] = _number(body, key, lo=1, integer=True)
    if body.get("ignore_eos") is not None:  # llama.cpp server's extension: a fixed answer length
        if not isinstance(body["ignore_eos"], bool):
            raise Invalid("ignore_eos must be true or false")
        p["ignore_eos"] = body["ignore_eos"]
    if body.get("n") is not None and body["n"] != 1:
        raise Invalid("n must be 1: one completion per line")
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise Invalid("stop must be a string or an array of strings")
        p["stop"] = tuple(s for s in stops if s)
    fmt = body.get("response_format")
    if fmt is not None:
        p["response_format"] = _response_format(fmt)
    return p


def _response_format(fmt) -> dict | None:
    """None: any JSON; a dict: a JSON schema; {"type": "text"} means no constraint (returned as False)."""
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise Invalid("response_format.type must be text, json_object or json_schema")
    if fmt["type"] == "text":
        return {"kind": "text"}
    if fmt["type"] == "json_object":
        return {"kind": "json"}
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise Invalid("response_format.json_schema.schema must be a JSON schema object", code="invalid_schema")
    _check_schema(schema, "schema")
    return {"kind": "json", "schema": schema}


_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


def _check_schema(node, where: str) -> None:
    """What llama.cpp's grammar converter would accept silently (as `infer run --schema` checks)."""
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        raise Invalid(f"{where} must be an object", code="invalid_schema")
    t = node.get("type")
    for name in (t if isinstance(t, list) else [t] if t is not None else []):
        if name not in _TYPES:
            raise Invalid(f"{where}.type is {name!r}, not one of {', '.join(sorted(_TYPES))}", code="invalid_schema")
    props = node.get("properties", {})
    if not isinstance(props, dict):
        raise Invalid(f"{where}.properties must be an object", code="invalid_schema")
    for key, sub in props.items():
        _check_schema(sub, f"{where}.properties.{key}")
    if isinstance(node.get("items"), dict):
        _check_schema(node["items"], f"{where}.items")


# -- seeds ------------------------------------------------------------------------------------
def derive_seed(base: int | None, custom_id: str) -> int | None:
    """A line's seed from the batch's --seed and its custom_id: the same for a line whatever ran beside it.
    None without --seed (each line then samples with fresh randomness). Never 0xFFFFFFFF (llama.cpp's 'random')."""
    if base is None:
        return None
    digest = hashlib.sha256(f"{base}\x00{custom_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % 0xFFFFFFFF


# -- the first pass: identity, count, duplicates ----------------------------------------------
@dataclass(frozen=True)
class Scan:
    path: Path
    sha256: str
    requests: int  # non-blank lines


def scan(path: Path) -> Scan:
    """Stream the input once: its sha256, how many requests, and a refusal of duplicate custom_ids."""
    digest = hashlib.sha256()
    seen: dict[str, int] = {}
    requests = 0

    class Hashing:
        def __init__(self, f):
            self.f = f

        def readline(self, limit: int = -1) -> bytes:
            data = self.f.readline(limit)
            digest.update(data)
            return data

    try:
        with open(path, "rb") as f:
            for n, raw in iter_lines(Hashing(f)):
                item = parse_id(raw, n)
                if item is None:
                    continue
                requests += 1
                if item in seen:
                    raise UsageError(f"custom_id {item!r} appears twice in {path} (lines {seen[item]} and {n})",
                                     hint="every line needs its own custom_id; nothing was run")
                seen[item] = n
    except OSError as e:
        raise _os_error(e, path, reading=True) from e
    return Scan(path=path, sha256=digest.hexdigest(), requests=requests)


def parse_id(raw: bytes | None, line: int) -> str | None:
    """Only the id of a line (None for a blank one): the first pass does not validate requests."""
    if raw is None:
        return line_id(line)
    if not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return line_id(line)
    return custom_id_of(obj, line)[0]


def spool_stdin(stream: IO[bytes]) -> Path:
    """Copy stdin to a temporary file, streamed, so that it can be read twice and fingerprinted."""
    fd, name = tempfile.mkstemp(prefix="infer-batch-", suffix=".jsonl")
    with os.fdopen(fd, "wb") as f:
        shutil.copyfileobj(stream, f, 1 << 20)
    return Path(name)


# -- the output: sidecar, repair, what is done ------------------------------------------------
def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + SIDECAR_SUFFIX)


@dataclass
class Existing:
    """What an earlier run left in the output."""

    ok: set = field(default_factory=set)
    failed: set = field(default_factory=set)
    repaired: int = 0  # bytes of a torn last line that were cut

    @property
    def done(self) -> int:
        return len(self.ok) + len(self.failed)

    def has(self, custom_id: str) -> bool:
        return custom_id in self.ok or custom_id in self.failed


def fingerprint(scan_: Scan, model: dict) -> dict:
    return {"format": SIDECAR_FORMAT, "input_sha256": scan_.sha256, "model": model}


def open_output(output: Path, print_: dict, *, force: bool = False) -> Existing:
    """Make `output` ready to append to: resume it when it belongs to this input and model, else refuse
    (or, with force, start afresh). Writes the sidecar before the first output byte."""
    side = sidecar_path(output)
    try:
        has_lines = output.exists() and output.stat().st_size > 0
        if has_lines:
            theirs = _read_sidecar(side)
            if theirs != print_:
                if not force:
                    raise UsageError(f"{output} holds results of {_describe(theirs, print_)}",
                                     hint="choose another -o, or add --force to overwrite it")
                output.write_bytes(b"")
                has_lines = False
        if not has_lines:
            _write_atomic(side, json.dumps(print_, indent=2) + "\n")
            with open(output, "ab"):
                pass
            return Existing()
        return read_existing(output, force=force)
    except OSError as e:
        raise _os_error(e, output) from e


def _describe(theirs: dict | None, ours: dict) -> str:
    if theirs is None:
        return "another run (no readable " + SIDECAR_SUFFIX + " file beside it)"
    if theirs.get("input_sha256") != ours["input_sha256"]:
        return "another input (its sha256 differs)"
    if theirs.get("model") != ours["model"]:
        m = theirs.get("model") or {}
        if m.get("host"):
            return f"a run on the server at {m['host']} (model {m.get('name', '?')})"
        if ours["model"].get("host"):
            return f"a local run (model {m.get('name', '?')}, {m.get('file', '?')})"
        return f"another model ({m.get('name', '?')}, {m.get('file', '?')})"
    return "another version of infer's batch format"


def _read_sidecar(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def repair_tail(path: Path) -> int:
    """Cut a torn last line (bytes after the last newline); returns how many bytes were cut."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        pos, keep = size, 0
        while pos > 0:
            step = min(1 << 16, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = pos - step + nl + 1
                break
            pos -= step
        if keep == size:
            return 0
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


def read_existing(output: Path, *, force: bool = False) -> Existing:
    """The custom_ids already answered in `output`, after repairing a torn last line."""
    existing = Existing(repaired=repair_tail(output))
    with open(output, "rb") as f:
        for n, raw in iter_lines(f):
            try:
                obj = json.loads(raw) if raw is not None else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                obj = None
            if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
                if force:
                    continue
                raise UsageError(f"{output} line {n} is not a batch result line",
                                 hint="choose another -o, or add --force to redo the lines it does not hold")
            (existing.failed if obj.get("error") else existing.ok).add(obj["custom_id"])
    return existing


class Writer:
    """Appends result lines; flushes and fsyncs them in small groups. A failed write (disk full) is cut
    back to the last whole line, so the file never ends in a torn line."""

    def __init__(self, path: Path | None, *, group: int = FLUSH_LINES, seconds: float = FLUSH_SECONDS):
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if path else os.dup(1)
        except OSError as e:
            raise _os_error(e, path or Path("<stdout>")) from e
        self.regular = path is not None
        self.size = os.fstat(self.fd).st_size if self.regular else 0
        self.group, self.seconds = group, seconds
        self.pending: list[bytes] = []
        self.last = time.monotonic()
        self.written = 0  # lines made durable by this writer

    def add(self, line: dict) -> None:
        self.pending.append((json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
        self.tick()

    def tick(self) -> None:
        if len(self.pending) >= self.group or (self.pending and time.monotonic() - self.last >= self.seconds):
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        data = b"".join(self.pending)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            if self.regular:
                os.fsync(self.fd)
        except BaseException as e:  # disk full, or a Ctrl-C between two writes: cut back to whole lines
            if self.regular:
                try:
                    os.ftruncate(self.fd, self.size)
                except OSError:
                    pass
            if isinstance(e, OSError):
                self.pending.clear()
                raise _os_error(e, self.path or Path("<stdout>")) from e
            raise
        self.size += len(data)
        self.written += len(self.pending)
        self.pending.clear()
        self.last = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            os.close(self.fd)


def _os_error(e: OSError, path: Path, *, reading: bool = False) -> InferError:
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"the disk is full writing {path}: what was written is kept, whole lines only",
                       hint="free some space and rerun the same command: it resumes")
    if isinstance(e, FileNotFoundError) and reading:
        return UsageError(f"{path}: no such file")
    if isinstance(e, (PermissionError, IsADirectoryError)) or e.errno in (errno.EROFS, errno.EACCES):
        verb = "read" if reading else "write"
        return UsageError(f"cannot {verb} {path}: {e.strerror}", hint=None if reading else "choose another -o")
    return InferError(f"{'reading' if reading else 'writing'} {path} failed: {e.strerror or e}")


# -- result lines -----------------------------------------------------------------------------
def _hex() -> str:
    return uuid.uuid4().hex


def result_line(job: Job, text: str, done, model: str, created: int | None = None, *, drafts: bool = False) -> dict:
    """A successful line: the OpenAI Batch output form with a chat.completion or text_completion body. With
    `drafts` (speculation on), the usage says how many drafted tokens the model kept, in OpenAI's words for
    predicted outputs."""
    u = done.usage
    created = int(time.time()) if created is None else created
    usage = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
             "total_tokens": u.prompt_tokens + u.completion_tokens}
    if drafts:
        usage["completion_tokens_details"] = {"accepted_prediction_tokens": u.accepted,
                                              "rejected_prediction_tokens": u.drafted - u.accepted}
    reason = done.finish_reason
    if job.kind == "chat":
        body = {"id": f"chatcmpl-{_hex()}", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": reason}], "usage": usage}
    else:
        body = {"id": f"cmpl-{_hex()}", "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}], "usage": usage}
    return response_line(job.custom_id, body)


def response_line(custom_id: str, body: dict, request_id: str | None = None) -> dict:
    """A successful line of the OpenAI Batch output form, around a response body."""
    return {"id": f"batch_req_{_hex()}", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id or f"req_{_hex()}", "body": body}, "error": None}


def error_line(line: int, custom_id: str, code: str, message: str) -> dict:
    return {"id": f"batch_req_{_hex()}", "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message, "line": line}}


def error_code(e: Exception) -> str:
    if isinstance(e, ContextOverflow):
        return "context_length_exceeded"
    if isinstance(e, UsageError):
        return "invalid_request"
    return "server_error"


# -- running ----------------------------------------------------------------------------------
@dataclass
class Summary:
    requests: int
    done_before: int = 0
    ok: int = 0  # in the whole output, earlier runs included
    failed: int = 0
    prompt_tokens: int = 0  # this run
    completion_tokens: int = 0
    drafted_tokens: int = 0  # this run, by prompt-lookup speculation (--lookup)
    accepted_tokens: int = 0  # of which the model kept
    wall_s: float = 0.0
    interrupted: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def complete(self) -> bool:
        return not self.interrupted and self.ok + self.failed >= self.requests

    def as_dict(self) -> dict:
        return {"requests": self.requests, "ok": self.ok, "failed": self.failed, "done_before": self.done_before,
                "interrupted": self.interrupted, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "drafted_tokens": self.drafted_tokens,
                "accepted_tokens": self.accepted_tokens, "wall_s": round(self.wall_s, 3),
                "tokens_per_s": round(self.tokens_per_s, 2)}


@dataclass
class Settings:
    parallel: int
    ctx_size: int  # per sequence
    seed: int | None = None
    max_tokens: int | None = None  # for lines that give none
    defaults: dict = field(default_factory=dict)  # the model's sampling defaults (catalog)
    model_name: str = ""
    speculation: Speculation | None = None  # prompt-lookup speculation for every line (--lookup)


class _Prompts:
    """Turns Jobs into engine Requests: chat template or plain tokens, sampling, grammar (cached)."""

    def __init__(self, model, settings: Settings):
        self.model = model
        self.settings = settings
        self.grammars: dict[str, str | None] = {}

    def request(self, job: Job):
        from infer.engine import Sampling
        from infer.engine.scheduler import Request

        params = dict(job.params)
        fmt = params.pop("response_format", None)
        merged = {k: v for k, v in self.settings.defaults.items() if k in Sampling.__dataclass_fields__}
        if self.settings.max_tokens is not None:
            merged["max_tokens"] = self.settings.max_tokens
        merged.update(params)
        if "seed" not in params:
            merged["seed"] = derive_seed(self.settings.seed, job.custom_id)
        if "stop" in merged:
            merged["stop"] = tuple(merged["stop"])
        merged["grammar"] = self.grammar(fmt)
        if job.kind == "chat":
            _, tokens = self.model.format_chat(list(job.messages))
        elif isinstance(job.prompt, tuple):
            tokens = list(job.prompt)
            n_vocab = self.n_vocab()
            if n_vocab and max(tokens) >= n_vocab:  # llama_decode would fail the whole step, others included
                raise Invalid(f"token id {max(tokens)} is outside the model's vocabulary ({n_vocab} tokens)")
        else:
            tokens = self.model.tokenize(job.prompt)
        return Request(tokens=tokens, sampling=Sampling(**merged), id=job.custom_id,
                       speculation=self.settings.speculation, stream=False)  # a line needs its whole text only

    def n_vocab(self) -> int | None:
        if not hasattr(self, "_n_vocab"):
            m = self.model
            # Model has no public vocabulary size yet: ask llama.cpp through the model's own handle
            self._n_vocab = getattr(m, "n_vocab", None) or (
                m._lib.llama_vocab_n_tokens(m.vocab) if hasattr(m, "_lib") else None)
        return self._n_vocab

    def grammar(self, fmt: dict | None) -> str | None:
        if not fmt or fmt["kind"] == "text":
            return None
        from infer.engine import json_grammar

        key = json.dumps(fmt.get("schema"), sort_keys=True)
        if key not in self.grammars:
            try:
                self.grammars[key] = json_grammar(fmt.get("schema"))
            except UsageError as e:
                self.grammars[key] = None
                raise Invalid(e.message, code="invalid_schema") from e
            if len(self.grammars) > 256:
                self.grammars.pop(next(iter(self.grammars)))
        if self.grammars[key] is None:
            raise Invalid("invalid JSON schema", code="invalid_schema")
        return self.grammars[key]


def jobs(path: Path, existing: Existing) -> Iterator[Job | BadLine]:
    """The input's lines not answered yet, streamed."""
    with open(path, "rb") as f:
        for n, raw in iter_lines(f):
            item = parse_line(raw, n)
            if item is None or existing.has(item.custom_id):
                continue
            yield item


@dataclass
class _Flight:
    job: Job
    chunks: list = field(default_factory=list)


def execute(path: Path, writer: Writer, existing: Existing, model, settings: Settings, total: int,
            progress: Callable[[Summary], None] = lambda s: None) -> Summary:
    """Run every line not yet answered; write each result as it finishes. On KeyboardInterrupt, what
    finished is written and the summary says interrupted (the caller re-raises)."""
    summary = Summary(requests=total, done_before=existing.done, ok=len(existing.ok), failed=len(existing.failed))
    # throughput first: prompts fill each step's batch beside the generating sequences (no reader waits on a token)
    sched = model.scheduler(n_seq=settings.parallel, n_ctx_seq=settings.ctx_size, prefill_chunk=None)
    prompts = _Prompts(model, settings)
    sink: queue.SimpleQueue = queue.SimpleQueue()
    flights: dict = {}
    window = settings.parallel * 2 + 2  # keep the scheduler's queue fed, without reading the whole input
    todo = jobs(path, existing)
    t0 = time.perf_counter()

    def fail(line: int, cid: str, code: str, message: str) -> None:
        writer.add(error_line(line, cid, code, message))
        summary.failed += 1

    try:
        more = True
        while True:
            while more and len(flights) < window:
                item = next(todo, None)
                if item is None:
                    more = False
                    break
                if isinstance(item, BadLine):
                    fail(item.line, item.custom_id, item.code, item.message)
                    continue
                try:
                    handle = sched.submit(prompts.request(item), sink=sink)
                except Invalid as e:
                    fail(item.line, item.custom_id, e.code, e.message)
                    continue
                except InferError as e:
                    fail(item.line, item.custom_id, error_code(e), e.message)
                    continue
                flights[handle] = _Flight(item)
            if not flights:
                break
            try:
                handle, event = sink.get(timeout=0.25)
            except queue.Empty:
                writer.tick()
                continue
            if _on_event(handle, event, flights, writer, summary, settings, fail):
                summary.wall_s = time.perf_counter() - t0
                progress(summary)
    except KeyboardInterrupt:
        summary.interrupted = True
        for handle in flights:
            handle.cancel()
        # lines that finished before the Ctrl-C, or in the step it interrupted, are kept: every flight ends within a
        # step (finished, or cancelled at the next one); the deadline only guards against an engine that hangs
        deadline = time.monotonic() + DRAIN_S
        while flights and time.monotonic() < deadline:
            try:
                handle, event = sink.get(timeout=0.25)
            except queue.Empty:
                continue
            _on_event(handle, event, flights, writer, summary, settings, fail)
    finally:
        summary.wall_s = time.perf_counter() - t0
        sched.close()
        writer.flush()
    return summary


def _on_event(handle, event, flights: dict, writer: Writer, summary: Summary, settings: Settings, fail) -> bool:
    """Collect a Text; write the line on Done or Failed. True when a line finished."""
    from infer.engine import Done, Failed, Text

    flight = flights.get(handle)
    if flight is None:
        return False
    if isinstance(event, Text):
        flight.chunks.append(event.text)
        return False
    del flights[handle]
    job = flight.job
    if isinstance(event, Failed):
        err = event.error
        message = getattr(err, "message", None) or str(err)
        fail(job.line, job.custom_id, error_code(err), message)
    elif isinstance(event, Done) and event.finish_reason != "cancelled":
        writer.add(result_line(job, "".join(flight.chunks), event, settings.model_name,
                               drafts=settings.speculation is not None))
        summary.ok += 1
        summary.prompt_tokens += event.usage.prompt_tokens
        summary.completion_tokens += event.usage.completion_tokens
        summary.drafted_tokens += event.usage.drafted
        summary.accepted_tokens += event.usage.accepted
    return True
