"""Run the app on uvicorn: bind (port 0 picks one), load the -m models, print the real numbers and
`listening on http://HOST:PORT`, and stop cleanly on SIGINT/SIGTERM: no new connections, running
requests get --shutdown-timeout seconds, then end with an error event (their framing complete)."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import uvicorn

from infer.server.app import Config, create_app
from infer.server.models import Manager
from infer.units import human_bytes


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def describe(loaded) -> str:
    s = loaded.sched
    return (f"model {loaded.name}: {s.n_seq} sequences x {s.n_ctx_seq} tokens of context each "
            f"({s.n_seq * s.n_ctx_seq} in all), KV cache {human_bytes(loaded.kv_bytes)}, "
            f"about {human_bytes(loaded.estimate)} in all, on {loaded.model.where}")


class _Server(uvicorn.Server):
    """uvicorn's server, but a signal ends the run here (no re-raise at exit) and starts our grace period."""

    def __init__(self, config, manager: Manager, grace: float):
        super().__init__(config)
        self.manager, self.grace, self.loop = manager, grace, None
        self.signalled: int | None = None

    async def serve(self, sockets=None):
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame):
        first = self.signalled is None
        self.signalled = sig
        super().handle_exit(sig, frame)
        self._captured_signals.clear()
        if first and self.loop is not None:
            self.loop.call_soon_threadsafe(self._begin_shutdown)
        elif not first and self.loop is not None:  # a second signal: end everything now
            self.loop.call_soon_threadsafe(self.manager.fail_all)

    def _begin_shutdown(self) -> None:
        _say("stopping: no new requests; running ones get "
             f"{self.grace:g} s to finish")
        self.manager.closing = True
        self.loop.call_later(self.grace, self.manager.fail_all)


def serve_forever(*, names, host, port, parallel, ctx_size, load, api_key, max_queue, keep_alive, cors, verbose,
                  shutdown_timeout, speculation=None) -> int:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        from infer.errors import UsageError

        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                         hint="pick another --port, or --port 0 for a free one") from None
    sock.listen(2048)
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    manager = Manager(load, parallel=parallel, ctx_size=ctx_size, keep_alive=keep_alive,
                      notice=lambda m: _say(f"infer: {m}"), speculation=speculation)
    manager.default = names[0] if names else None

    def ready(loaded) -> None:
        for m in loaded:
            _say(describe(m))
        _say(f"listening on http://{shown}:{bound}")

    failure: list[BaseException] = []

    def failed(e: BaseException) -> None:  # a -m model did not load: stop, and report it as `run` would
        failure.append(e)
        server.should_exit = True

    config = Config(api_key=api_key, max_queue=max_queue, cors_origins=cors, verbose=verbose, preload=names,
                    on_ready=ready, on_fail=failed)
    app = create_app(manager, config)
    uv = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", log_config=None,
                        timeout_graceful_shutdown=shutdown_timeout + 5, timeout_keep_alive=5)
    server = _Server(uv, manager, shutdown_timeout)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    if failure:
        raise failure[0]
    if server.signalled is not None:
        _say(f"stopped ({signal.Signals(server.signalled).name})")
    return 0
