"""`infer serve` (the OpenAI and Ollama APIs over the scheduler) and `infer ps` (a client of /api/ps)."""

from __future__ import annotations

import ipaddress
import sys
from typing import Annotated, Optional

import typer

from infer import settings
from infer.cli import console, options as o
from infer.errors import InferError, NetworkError, UsageError

DEFAULT_PORT = 11435  # beside Ollama's 11434, so both can run
DEFAULT_HOST = f"http://127.0.0.1:{DEFAULT_PORT}"

SERVE_EPILOG = """\
Examples:

\b
  infer serve
  infer serve -m smollm2 -m qwen2.5:0.5b --parallel 8 --ctx-size 4096
  infer serve --port 0                      # a free port, printed on stderr
  infer serve --lookup                      # prompt-lookup speculative decoding for every request
  INFER_API_KEY=secret infer serve --host 0.0.0.0
  curl -s localhost:11435/v1/chat/completions -d '{"messages":[{"role":"user","content":"hi"}]}'
"""

PS_EPILOG = """\
Examples:

\b
  infer ps
  infer ps --json | jq '.models[].sequences'
  infer ps --host http://127.0.0.1:8080
"""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@o.shared_options
def serve(
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", help="Model to load at start (repeatable). Others are loaded on demand by name. "
        "Default: INFER_MODEL, then config.toml, then the catalog default, when pulled.",
        autocompletion=o.complete_model, show_default=False)] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind. A non-loopback one needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port; 0 picks a free one.")] = DEFAULT_PORT,
    parallel: Annotated[int, typer.Option("--parallel", "-np", min=1, max=256,
                                          help="Sequences decoding together (each with its own context).")] = 4,
    ctx_size: Annotated[Optional[int], typer.Option(
        "--ctx-size", "-c", min=16, show_default=False,
        help="Context per sequence in tokens (the KV cache holds parallel x this). "
             "Default: the model's trained context, up to 4096.")] = None,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="INFER_API_KEY", show_envvar=False, show_default=False,
        help="Require this key (Authorization: Bearer KEY) on every route but /health. Also INFER_API_KEY.")] = None,
    max_queue: Annotated[int, typer.Option("--max-queue", min=0,
                                           help="Requests that may wait for a free sequence; beyond, 503.")] = 64,
    keep_alive: Annotated[str, typer.Option(
        "--keep-alive", help="Unload a model loaded on demand after this long idle (30s, 5m, 1h; -1: never).")] = "5m",
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        "--cors-origin", help="Allow browser requests from this origin (repeatable; CORS is off without it).",
        show_default=False)] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without --api-key.")] = False,
    shutdown_timeout: Annotated[float, typer.Option(
        "--shutdown-timeout", min=0, help="On SIGINT/SIGTERM, seconds for running requests to finish before they "
        "are ended with an error.")] = 5.0,
    load_opts: o.HardwareArgs = o.LoadArgs(),
    speculation_opts: o.SpeculationArgs = o.SpeculationArgs(),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log request bodies (prompt text) and llama.cpp's "
                                                                   "logs.")] = False,
) -> None:
    """Serve the OpenAI and Ollama APIs from pulled models, batched (continuous batching)."""
    if not is_loopback(host) and not api_key and not insecure:
        raise UsageError(f"refusing to serve on {host} without an API key: anyone who can reach it could use it",
                         hint="set --api-key (or INFER_API_KEY), bind 127.0.0.1, or pass --insecure")
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UsageError(f"`infer serve` needs {e.name}, which is not installed",
                         hint="pip install 'infer[serve]'") from None
    from infer import resolve
    from infer.server.models import parse_duration

    keep = parse_duration(keep_alive)
    speculation = speculation_opts.build()
    names = list(model or [])
    load_opts.check()
    if not names:  # the default model, when it is pulled; otherwise start empty and load on demand
        default, _ = resolve.choose(None)
        if resolve.find_local(default) is not None:
            names = [default]
        else:
            console.warn(f"the default model {default} is not pulled: no model loaded until a request names one")
    for name in names:  # fail fast (exit 3) before binding, with the store's message
        resolve.resolve(name, pull=None)
    load = load_opts.build(verbose)
    from infer import engine
    from infer.server.run import serve_forever

    engine.supports_gpu_offload()  # llama.cpp initialises its backends in the main thread, as for `run`

    code = serve_forever(names=names, host=host, port=port, parallel=parallel, ctx_size=ctx_size, load=load,
                         api_key=api_key, max_queue=max_queue, keep_alive=keep, cors=list(cors_origin or []),
                         verbose=verbose, shutdown_timeout=shutdown_timeout, speculation=speculation)
    raise typer.Exit(code)


def ps(
    host: Annotated[Optional[str], typer.Option("--host", help=f"The server. Default: INFER_HOST, then {DEFAULT_HOST}.",
                                                show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the server's /api/ps answer as JSON.")] = False,
) -> None:
    """Show a running server's loaded models: sequences busy and free, queue, context, KV memory, expiry."""
    import json
    import urllib.error
    import urllib.request

    base = (host or settings.INFER_HOST.get() or DEFAULT_HOST).rstrip("/")
    if "://" not in base:
        base = "http://" + base
    req = urllib.request.Request(base + "/api/ps")
    key = settings.INFER_API_KEY.get()
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise NetworkError(f"{base} answered {e.code}: {e.read()[:200].decode('utf-8', 'replace')}",
                           hint="set INFER_API_KEY" if e.code == 401 else None) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise NetworkError(f"no infer server at {base}: {getattr(e, 'reason', e)}",
                           hint="start one with `infer serve`, or pass --host") from None
    if json_out:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    from infer.units import human_bytes

    rows = data.get("models", [])
    if not rows:
        sys.stdout.write("no model loaded\n")
        return
    header = f"{'NAME':<28} {'BUSY':>4} {'FREE':>4} {'QUEUE':>5} {'CONTEXT':>8} {'KV':>9} {'SIZE':>9}  UNTIL"
    lines = [header]
    for m in rows:
        seq = m.get("sequences", {})
        lines.append(f"{m.get('name', ''):<28} {seq.get('busy', 0):>4} {seq.get('free', 0):>4} {m.get('queue', 0):>5} "
                     f"{m.get('context_length', 0):>8} {human_bytes(m.get('kv_bytes', 0)):>9} "
                     f"{human_bytes(m.get('size', 0)):>9}  {m.get('expires_at', '')}")
    sys.stdout.write("\n".join(lines) + "\n")


__all__ = ["serve", "ps", "InferError"]
