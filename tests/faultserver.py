"""A small Hub-compatible server on 127.0.0.1 that can misbehave on purpose.

It serves the three routes `infer pull` uses (model info, recursive tree with LFS sha256,
resolve with HTTP Range), and per file it can: cut the connection after N bytes, answer 5xx
a number of times, stall, throttle, or serve wrong bytes. olah (the real mirror used by the
other tests) ignores Range and cannot fail on demand; this one exists for the fault tests.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Faults:
    cut_after: int | None = None  # close the connection after this many body bytes (once)
    errors_after_cut: int = 0  # then answer `status` this many times
    errors: int = 0  # answer `status` this many times before serving
    status: int = 500
    stall_after: int | None = None  # send this many bytes, then go silent (once)
    stall_seconds: float = 30.0
    corrupt: bool = False  # flip a byte in what is served
    throttle: float = 0.0  # seconds to sleep per 64 KiB
    ignore_range: bool = False


@dataclass
class Served:
    data: bytes
    sha256: str = ""
    faults: Faults = field(default_factory=Faults)
    bytes_sent: int = 0
    requests: list[str] = field(default_factory=list)  # the Range header of each GET
    sent: list[int] = field(default_factory=list)  # body bytes sent in answer to each GET

    def __post_init__(self):
        self.sha256 = self.sha256 or hashlib.sha256(self.data).hexdigest()


class HubState:
    def __init__(self):
        self.repos: dict[str, dict[str, Served]] = {}
        self.extra_listing: dict[str, list[dict]] = {}  # entries added to a repo's tree as-is
        self.status_for_repo: dict[str, int] = {}  # e.g. 401 for a gated repo
        self.lock = threading.Lock()

    def add(self, repo: str, name: str, data: bytes, **faults) -> Served:
        served = Served(data=data, faults=Faults(**faults))
        self.repos.setdefault(repo, {})[name] = served
        return served


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState  # set on the subclass

    def log_message(self, *args):  # keep test output clean
        pass

    def _json(self, obj, status=200):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        path = self.path.split("?", 1)[0]
        m = re.match(r"^/api/models/([^/]+/[^/]+)/revision/([^/]+)$", path)
        if m:
            return self._info(m.group(1))
        m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)/?$", path)
        if m:
            return self._tree(m.group(1))
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            return self._resolve(m.group(1), m.group(3), head)
        self._json({"error": "not found"}, 404)

    def _repo_status(self, repo):
        if repo in self.state.status_for_repo:
            code = self.state.status_for_repo[repo]
            headers = {"X-Error-Code": "GatedRepo"} if code == 403 else {}
            body = json.dumps({"error": "gated"}).encode()
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True
        if repo not in self.state.repos:
            body = b'{"error":"Repository not found"}'
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True
        return False

    def _info(self, repo):
        if self._repo_status(repo):
            return
        files = self.state.repos[repo]
        self._json({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                    "siblings": [{"rfilename": n} for n in files]})

    def _tree(self, repo):
        if self._repo_status(repo):
            return
        entries = [{"type": "file", "oid": s.sha256[:40], "size": len(s.data), "path": n,
                    "lfs": {"oid": s.sha256, "size": len(s.data), "pointerSize": 130}}
                   for n, s in self.state.repos[repo].items()]
        self._json(entries + self.state.extra_listing.get(repo, []))

    def _resolve(self, repo, name, head):
        from urllib.parse import unquote

        name = unquote(name)
        if self._repo_status(repo):
            return
        served = self.state.repos[repo].get(name)
        if served is None:
            return self._json({"error": "entry not found"}, 404)
        f = served.faults
        with self.state.lock:
            served.requests.append(self.headers.get("Range", ""))
            served.sent.append(0)
            self.index = len(served.sent) - 1
            if f.errors > 0:
                f.errors -= 1
                return self._json({"error": "server error"}, f.status)
        data = served.data
        if f.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        rng = self.headers.get("Range")
        if rng and not f.ignore_range:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", f'"{served.sha256}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if head:
            return
        self._send_body(served, data[start:])

    def _send_body(self, served: Served, body: bytes):
        f = served.faults
        sent, step = 0, 64 * 1024
        while sent < len(body):
            chunk = body[sent:sent + step]
            if f.cut_after is not None and sent + len(chunk) >= f.cut_after:
                chunk = chunk[: max(0, f.cut_after - sent)]
                self._write(served, chunk)
                f.cut_after = None
                f.errors = f.errors_after_cut
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if f.stall_after is not None and sent + len(chunk) >= f.stall_after:
                self._write(served, chunk[: max(0, f.stall_after - sent)])
                f.stall_after = None
                time.sleep(f.stall_seconds)
                self.close_connection = True
                return
            if not self._write(served, chunk):
                return
            sent += len(chunk)
            if f.throttle:
                time.sleep(f.throttle)

    def _write(self, served, chunk) -> bool:
        try:
            self.wfile.write(chunk)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return False
        with self.state.lock:
            served.bytes_sent += len(chunk)
            served.sent[self.index] += len(chunk)
        return True


class FaultHub:
    """Start with `with FaultHub() as hub:`; `hub.url` is the HF_ENDPOINT to use."""

    def __init__(self):
        self.state = HubState()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultHub":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo: str, name: str, data: bytes, **faults) -> Served:
        return self.state.add(repo, name, data, **faults)
