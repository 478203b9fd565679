"""The ASGI app: routes of both dialects, auth, body cap, CORS, access log, lifespan.

A route parses its body (pydantic), asks the model manager for the model, translates the body into engine
jobs (openai.py / ollama.py), submits them through bridge.Stream and translates the events back. Errors
are ApiError values rendered in the dialect of the path (/api/... is Ollama's, the rest OpenAI's)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from infer import __version__
from infer.engine import Done, Failed, Text
from infer.errors import ContextOverflow, InferError, ModelNotFound, UsageError
from infer.server import ollama, openai
from infer.server.bridge import Job, QueueFull, Stream
from infer.server.metrics import CONTENT_TYPE_LATEST, Metrics
from infer.server.models import Loaded, Manager, parse_duration

MAX_BODY = 8 * 1024 * 1024  # bytes; a larger body is refused with 413 before it is read
RETRY_AFTER_S = 1


@dataclass
class Config:
    api_key: str | None = None
    max_queue: int = 64
    max_body: int = MAX_BODY
    cors_origins: list[str] = field(default_factory=list)
    verbose: bool = False
    preload: list[str] = field(default_factory=list)
    on_ready: Callable[[list[Loaded]], None] = lambda loaded: None
    on_fail: Callable[[BaseException], None] = lambda error: None
    log: Callable[[str], None] = lambda line: (sys.stderr.write(line + "\n"), sys.stderr.flush())


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error",
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.kind, self.param = status, message, code, kind, param
        self.headers = headers or {}


def api_error(e: BaseException) -> ApiError:
    """The HTTP meaning of an engine or validation error."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, QueueFull):
        return ApiError(503, f"the server is busy: {e}; retry later", "queue_full", "server_error",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(e, ModelNotFound):
        return ApiError(404, e.message, "model_not_found", param="model")
    if isinstance(e, ContextOverflow):
        return ApiError(400, e.message + (f" ({e.hint})" if e.hint else ""), "context_length_exceeded", param="messages")
    if isinstance(e, UsageError):
        return ApiError(400, e.message, "invalid_request_error")
    if isinstance(e, ValidationError):
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return ApiError(400, f"{where}: {first.get('msg', 'invalid value')}", "invalid_request_error", param=where)
    if isinstance(e, InferError):
        return ApiError(500, e.message, "engine_error", "server_error")
    return ApiError(500, f"internal error: {type(e).__name__}: {e}", "internal_error", "server_error")


def is_ollama(path: str) -> bool:
    return path.startswith("/api/")


def error_response(path: str, e: ApiError) -> JSONResponse:
    body = ollama.error_body(e.message) if is_ollama(path) else openai.error_body(e.message, e.code, e.kind, e.param)
    return JSONResponse(body, status_code=e.status, headers=e.headers)


async def parse(request: Request, model: type[BaseModel]):
    body = await request.body()
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not valid UTF-8", "invalid_json") from None
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", "invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", "invalid_request_error")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise api_error(e) from None


class Gate:
    """Pure ASGI middleware: API key (constant time; every route but /health), body cap, access log."""

    KNOWN = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/api/chat", "/api/generate",
             "/api/embed", "/api/tags", "/api/ps", "/api/show", "/api/version", "/api/pull", "/health", "/metrics"}

    def __init__(self, app, config: Config, metrics: Metrics):
        self.app, self.config, self.metrics = app, config, metrics
        self.key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path, method = scope["path"], scope["method"]
        state = scope.setdefault("state", {})
        status = {"code": 0}

        async def logged_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._refuse(scope)
            if refusal is None and method in ("POST", "PUT", "PATCH"):
                body, refusal = await self._read_body(scope, receive)
                if refusal is None:
                    receive = _replay(body, receive)
                    if self.config.verbose:
                        self.config.log(f"{method} {path} body: {body[:2000].decode('utf-8', 'replace')}")
            if refusal is not None:
                await error_response(path, refusal)(scope, receive, logged_send)
            else:
                await self.app(scope, receive, logged_send)
        finally:
            endpoint = path if path in self.KNOWN else "other"
            self.metrics.requests.labels(endpoint, str(status["code"] or 499)).inc()
            tokens = state.get("tokens")
            self.config.log(f"{method} {path} {status['code'] or 499}"
                            + (f" {tokens[0]}+{tokens[1]} tokens" if tokens else "")
                            + f" {time.perf_counter() - t0:.3f} s")

    def _refuse(self, scope) -> ApiError | None:
        if self.key is None or scope["path"] == "/health" or scope["method"] == "OPTIONS":
            return None
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"")
        token = given[7:].strip() if given[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        if not hmac.compare_digest(token, self.key):
            return ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)", "invalid_api_key")
        return None

    async def _read_body(self, scope, receive) -> tuple[bytes, ApiError | None]:
        too_big = ApiError(413, f"the request body is larger than {self.config.max_body} bytes", "request_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.config.max_body:
            return b"", too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.config.max_body:
                return b"", too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), None


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _watch_disconnect(request: Request, stream: Stream) -> None:
    """Cancel the engine's work when the client goes away (the body has been read: the next message is the end)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            stream.cancel()
            return


def create_app(manager: Manager, config: Config) -> FastAPI:
    metrics = Metrics()
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def preload():
            loaded = []
            try:
                for name in config.preload:
                    loaded.append(await manager.get(name, pinned=True))
            except Exception as e:  # noqa: BLE001 - reported by the command, which exits with its code
                config.on_fail(e)
                return
            state["ready"] = True
            config.on_ready(loaded)

        starting = asyncio.create_task(preload())
        reaper = asyncio.create_task(manager.reap_forever())
        app.state.starting = starting
        try:
            yield
        finally:
            reaper.cancel()
            starting.cancel()
            await manager.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError):
        return error_response(request.url.path, e)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return error_response(request.url.path, ApiError(e.status_code, message, code))

    @app.exception_handler(Exception)
    async def on_error(request: Request, e: Exception):
        return error_response(request.url.path, api_error(e))

    # -- engine plumbing ---------------------------------------------------------------------------
    async def model_for(name: str | None, keep_alive=None) -> Loaded:
        try:
            ka = parse_duration(keep_alive) if keep_alive is not None else None
            return await manager.get(name, keep_alive=ka)
        except (InferError, ValueError) as e:
            raise api_error(e) from None

    async def start(loaded: Loaded, tokens: list[int], samplings, num_ctx: int | None, rid: str,
                    logprobs: int | None = None) -> Stream:
        async with loaded.lock:
            try:
                if num_ctx:
                    await manager.ensure_ctx(loaded, num_ctx)
                return Stream(loaded.sched, [Job(tokens, s, logprobs, loaded.speculation) for s in samplings],
                              max_queue=config.max_queue, request_id=rid, metrics=metrics, model=loaded.name)
            except (InferError, QueueFull) as e:
                raise api_error(e) from None

    async def tokens_for(loaded: Loaded, *, messages=None, prompt=None, system=None, raw=False) -> list[int]:
        def build():
            if messages is not None:
                return loaded.model.format_chat(messages)[1]
            if raw:
                return loaded.model.tokenize(prompt)
            chat = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            return loaded.model.format_chat(chat)[1]

        try:
            tokens = await asyncio.to_thread(build)
        except InferError as e:
            raise api_error(e) from None
        if not tokens:
            raise ApiError(400, "the prompt is empty", "invalid_request_error", param="prompt")
        return tokens

    async def grammar(json_mode: bool, schema: dict | None) -> str | None:
        if not json_mode:
            return None
        from infer.engine import json_grammar

        try:
            return await asyncio.to_thread(json_grammar, schema)
        except InferError as e:
            raise ApiError(400, e.message, "invalid_schema", param="response_format") from None

    def base_sampling(loaded: Loaded):
        from infer.cli.options import build_sampling  # pure: merges the catalog's per-model defaults

        return build_sampling({}, loaded.defaults)

    def account(request: Request, loaded: Loaded, dones: list[Done]) -> None:
        prompt = dones[0].usage.prompt_tokens if dones else 0
        completion = sum(d.usage.completion_tokens for d in dones)
        request.state.tokens = (prompt, completion)
        metrics.prompt_tokens.labels(loaded.name).inc(prompt)
        evaluated = sum(d.usage.prompt_tokens - d.usage.cached_tokens for d in dones)
        metrics.prefill_tokens.labels(loaded.name).inc(evaluated)
        metrics.completion_tokens.labels(loaded.name).inc(completion)
        loaded.last_used = time.monotonic()

    def settle(request: Request, loaded: Loaded, stream: Stream, dones: list[Done]) -> None:
        """A streamed answer is over (finished, failed or abandoned): free its sequences, count its tokens."""
        stream.cancel()
        if dones:
            account(request, loaded, dones)
        loaded.last_used = time.monotonic()

    async def collect(request: Request, loaded: Loaded, stream: Stream) -> tuple[list[str], list[Done], list[list]]:
        """Each choice's text, Done and token logprobs (empty unless asked for)."""
        n = len(stream.handles)
        texts, dones, logprobs = [[] for _ in range(n)], [None] * n, [[] for _ in range(n)]
        watcher = asyncio.create_task(_watch_disconnect(request, stream))
        try:
            async for i, event in stream.events():
                if isinstance(event, Text):
                    texts[i].append(event.text)
                    logprobs[i].extend(event.logprobs)
                elif isinstance(event, Done):
                    dones[i] = event
                elif isinstance(event, Failed):
                    raise api_error(event.error)
        finally:
            watcher.cancel()
            loaded.last_used = time.monotonic()
        account(request, loaded, dones)
        return ["".join(t) for t in texts], dones, logprobs

    # -- OpenAI -----------------------------------------------------------------------------------
    async def openai_generate(request: Request, body, *, chat: bool):
        loaded = await model_for(body.model, (body.options or {}).get("keep_alive"))
        name = body.model or loaded.name
        if chat:
            json_mode, schema = _or_400(lambda: openai.schema_of(body), "response_format")
            tokens = await tokens_for(loaded, messages=body.chat_messages())
        else:
            json_mode, schema = False, None
            tokens = await tokens_for(loaded, prompt=_or_400(body.prompt_text, "prompt"), raw=True)
        if body.n > loaded.sched.n_seq:
            raise ApiError(400, f"n={body.n} is more than this server's {loaded.sched.n_seq} sequences (--parallel)",
                           "invalid_request_error", param="n")
        top = _or_400(body.logprobs_top, "top_logprobs")
        base = openai.sampling(body, base_sampling(loaded), body.limit(), await grammar(json_mode, schema))
        num_ctx = _num_ctx(body.options)
        rid = openai.new_id("chatcmpl" if chat else "cmpl")
        stream = await start(loaded, tokens, openai.seeds(base, body.n), num_ctx, rid, top)
        shapes = [openai.Logprobs(chat) for _ in range(body.n)] if top is not None else None
        if not body.stream:
            texts, dones, logprobs = await collect(request, loaded, stream)
            make = openai.chat_response if chat else openai.completion_response
            shaped = [f(lp) for f, lp in zip(shapes, logprobs)] if shapes else None
            return JSONResponse(make(rid, name, texts, dones, shaped))
        return StreamingResponse(openai_sse(request, loaded, stream, rid, name, chat, body.include_usage(), shapes),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def openai_sse(request, loaded, stream, rid, name, chat, include_usage, shapes):
        created = int(time.time())
        dones: list[Done] = []
        try:
            if chat:
                for i in range(len(stream.handles)):
                    yield openai.sse(openai.chat_chunk(rid, name, created, i, {"role": "assistant", "content": ""}))
            async for i, event in stream.events():
                if isinstance(event, Text):
                    lp = shapes[i](event.logprobs) if shapes else None
                    yield openai.sse(openai.chat_chunk(rid, name, created, i, {"content": event.text}, None, lp) if chat
                                     else openai.completion_chunk(rid, name, created, i, event.text, None, lp))
                elif isinstance(event, Done):
                    dones.append(event)
                    reason = openai.finish(event.finish_reason)
                    yield openai.sse(openai.chat_chunk(rid, name, created, i, {}, reason) if chat
                                     else openai.completion_chunk(rid, name, created, i, "", reason))
                else:
                    e = api_error(event.error)
                    yield openai.sse(openai.error_body(e.message, e.code, e.kind))
                    break
            else:
                if include_usage:
                    obj = "chat.completion.chunk" if chat else "text_completion"
                    yield openai.sse(openai.usage_chunk(rid, name, created, obj, dones))
            yield openai.sse("[DONE]")
        finally:
            settle(request, loaded, stream, dones)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await openai_generate(request, await parse(request, openai.ChatRequest), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await openai_generate(request, await parse(request, openai.CompletionRequest), chat=False)

    async def embed(loaded: Loaded, texts: list[str]) -> tuple[list[list[float]], int]:
        if not texts or any(not t for t in texts):
            raise ApiError(400, "input: give one or more non-empty strings", "invalid_request_error", param="input")
        try:
            results = await asyncio.to_thread(lambda: list(loaded.model.embeddings(texts)))
        except InferError as e:
            raise api_error(e) from None
        return [r.vector for r in results], sum(r.tokens for r in results)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await parse(request, openai.EmbeddingRequest)
        loaded = await model_for(body.model)
        vectors, n = await embed(loaded, body.texts())
        request.state.tokens = (n, 0)
        return JSONResponse(openai.embeddings_response(body.model or loaded.name, vectors, n, body.encoding_format))

    @app.get("/v1/models")
    async def list_models():
        names = [(m["name"], 0) for m in _pulled()]
        names += [(n, 0) for n in manager.loaded if n not in {x for x, _ in names}]
        return JSONResponse(openai.models_response(names))

    # -- Ollama -----------------------------------------------------------------------------------
    async def ollama_generate(request: Request, body, *, chat: bool):
        t0 = time.perf_counter()
        loaded_before = set(manager.loaded)
        loaded = await model_for(body.model, body.keep_alive)
        load_s = time.perf_counter() - t0 if loaded.name not in loaded_before else 0.0
        empty = not body.messages if chat else not body.prompt
        if empty:  # Ollama's way to load (or, with keep_alive 0, unload) a model
            reason = "load"
            if body.keep_alive is not None and parse_duration(body.keep_alive) == 0:
                if loaded.idle():  # else the reaper unloads it once its requests are done (keep_alive is 0 now)
                    await manager.unload(loaded.name)
                reason = "unload"
            return JSONResponse(ollama.load_line(body.model, chat, reason))
        json_mode, schema = ollama.format_of(body.format)
        if chat:
            tokens = await tokens_for(loaded, messages=body.chat_messages())
        else:
            tokens = await tokens_for(loaded, prompt=body.prompt, system=body.system, raw=body.raw)
        sampling = ollama.sampling(body.options, base_sampling(loaded), await grammar(json_mode, schema))
        num_ctx = body.options.num_ctx if body.options else None
        stream = await start(loaded, tokens, [sampling], num_ctx, openai.new_id("ollama"))
        line = ollama.chat_line if chat else ollama.generate_line
        if not body.stream:
            texts, dones, _ = await collect(request, loaded, stream)
            return JSONResponse(line(body.model, texts[0], dones[0], total_s=time.perf_counter() - t0, load_s=load_s))
        return StreamingResponse(ollama_ndjson(request, loaded, stream, body.model, line, t0, load_s),
                                 media_type="application/x-ndjson")

    async def ollama_ndjson(request, loaded, stream, name, line, t0, load_s):
        dones = []
        try:
            async for _, event in stream.events():
                if isinstance(event, Text):
                    yield ollama.ndjson(line(name, event.text))
                elif isinstance(event, Done):
                    dones.append(event)
                    yield ollama.ndjson(line(name, "", event, total_s=time.perf_counter() - t0, load_s=load_s))
                else:
                    yield ollama.ndjson(ollama.error_body(api_error(event.error).message))
        finally:
            settle(request, loaded, stream, dones)

    @app.post("/api/chat")
    async def api_chat(request: Request):
        return await ollama_generate(request, await parse(request, ollama.ChatRequest), chat=True)

    @app.post("/api/generate")
    async def api_generate(request: Request):
        return await ollama_generate(request, await parse(request, ollama.GenerateRequest), chat=False)

    @app.post("/api/embed")
    async def api_embed(request: Request):
        t0 = time.perf_counter()
        body = await parse(request, ollama.EmbedRequest)
        loaded = await model_for(body.model, body.keep_alive)
        vectors, n = await embed(loaded, body.texts())
        request.state.tokens = (n, 0)
        return JSONResponse({"model": body.model, "embeddings": vectors, "prompt_eval_count": n,
                             "total_duration": int((time.perf_counter() - t0) * 1e9), "load_duration": 0})

    @app.get("/api/tags")
    async def api_tags():
        return JSONResponse({"models": [ollama.tag_entry(m["name"], m["modified"], m["size"], m["digest"], m["details"])
                                        for m in _pulled()]})

    @app.get("/api/ps")
    async def api_ps():
        wall, mono = time.time(), time.monotonic()
        rows = []
        for m in manager.loaded.values():
            s = m.sched.stats()
            on_gpu = m.model.options.n_gpu_layers != 0
            rows.append({
                "name": m.name, "model": m.name, "size": m.estimate, "size_vram": m.estimate if on_gpu else 0,
                "digest": "", "details": ollama.details(None, None, None),
                "expires_at": ollama.iso(wall + (m.expires_at - mono)), "context_length": m.sched.n_ctx_seq,
                "sequences": {"total": m.sched.n_seq, "busy": s["busy"], "free": s["free"]}, "queue": s["waiting"],
                "kv_bytes": m.kv_bytes, "where": m.model.where,
            })
        return JSONResponse({"models": rows})

    @app.post("/api/show")
    async def api_show(request: Request):
        body = await parse(request, ollama.ShowRequest)
        try:
            key, resolved = manager.resolve(body.which())
            path = resolved.path if resolved else Path(manager.loaded[key].path)
            from infer.gguf_meta import human_params, read_info

            info = await asyncio.to_thread(read_info, path)
        except InferError as e:
            raise api_error(e) from None
        arch = info.architecture or ""
        model_info = {"general.architecture": arch, "general.parameter_count": info.parameters,
                      "general.file_type": info.file_type, "general.name": info.name}
        for k in ("context_length", "block_count", "embedding_length", "head_count", "head_count_kv"):
            if getattr(info, k) is not None:
                model_info[f"{arch}.{k}"] = getattr(info, k)
        return JSONResponse({
            "modelfile": "", "parameters": "", "template": info.chat_template or "", "license": info.license or "",
            "details": ollama.details(info.quantization, arch, human_params(info.parameters) if info.parameters else None),
            "model_info": model_info, "capabilities": ["completion"],
        })

    @app.get("/api/version")
    async def api_version():
        return JSONResponse({"version": __version__})

    @app.post("/api/pull")
    async def api_pull(request: Request):
        body = await parse(request, ollama.PullRequest)
        if not body.which():
            raise ApiError(400, "model: name the model to pull", "invalid_request_error", param="model")
        from infer.server.pulling import pull_events

        events = pull_events(body.which())
        if body.stream:
            return StreamingResponse((ollama.ndjson({k: v for k, v in e.items() if k != "_status"}) async for e in events),
                                     media_type="application/x-ndjson")
        last = {}
        async for e in events:
            last = e
        if "error" in last:
            return JSONResponse(last, status_code=last.pop("_status", 500))
        return JSONResponse(last)

    # -- operations -------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if not state["ready"]:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(manager), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(Gate, config=config, metrics=metrics)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.state.metrics = metrics
    return app


def _or_400(fn, param: str):
    try:
        return fn()
    except ValueError as e:
        raise ApiError(400, str(e), "invalid_request_error", param=param) from None


def _num_ctx(options: dict | None) -> int | None:
    if not options or options.get("num_ctx") is None:
        return None
    value = options["num_ctx"]
    if not isinstance(value, int) or isinstance(value, bool) or not 16 <= value <= 1 << 24:
        raise ApiError(400, "options.num_ctx must be an integer from 16", "invalid_request_error", param="options.num_ctx")
    return value


def _pulled() -> list[dict]:
    """Pulled models as the listings need them (the manifest: no network, no GGUF reads)."""
    from infer import store
    from infer.gguf_meta import human_params

    rows = []
    for name, p in sorted(store.Manifest().all().items()):
        if not p.present:
            continue
        rows.append({"name": name, "modified": p.pulled_at, "size": p.size,
                     "digest": p.files[0].sha256 if p.files else "",
                     "details": ollama.details(p.quant, p.architecture or None,
                                               human_params(p.params) if p.params else None)})
    return rows
