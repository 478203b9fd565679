"""Resumable, verified HTTP transfer into the store.

Written here rather than taken from huggingface_hub because, since 1.18, it writes a
random-named partial file per process, so an interrupted download never resumes in a later
one. Here the partial file has a stable name (blobs/<sha256>.incomplete) that survives
kill -9 and server restarts; the next attempt sends `Range: bytes=<have>-`. Bytes are hashed
as they arrive (the existing part is re-hashed once on resume), and the file is moved into
place only after its sha256 matches.

Local file errors (no space, read-only store, permission denied) become DiskError at once:
they are never retried and never reported as network errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from infer.errors import AuthError, ModelNotFound, NetworkError, VerifyError, disk_error

CHUNK = 1 << 20
Progress = Callable[[int], None]  # called with the number of new bytes


@dataclass(frozen=True)
class Policy:
    connect_timeout: float = 10.0
    stall_timeout: float = 30.0  # no byte for this long: drop the connection and resume
    retries: int = 5
    backoff: float = 1.0  # seconds, doubled each retry, capped at 30
    notice: Callable[[str], None] | None = None  # one line per retry, for people


def policy_from_env() -> Policy:
    from infer import settings

    return Policy(stall_timeout=float(settings.INFER_STALL_TIMEOUT.get() or 30),
                  backoff=float(settings.INFER_RETRY_BACKOFF.get() or 1))


class _Redirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never carry the Hub token to another host (the CDN)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


_opener = urllib.request.build_opener(_Redirect())


class _Retryable(Exception):
    pass


@contextlib.contextmanager
def _disk(doing: str, path: Path):
    """Around local file operations only: an OSError here is the disk's, not the network's."""
    try:
        yield
    except OSError as e:
        raise disk_error(e, doing, path) from e


def _open(url: str, headers: dict, offset: int, policy: Policy):
    req = urllib.request.Request(url, headers=dict(headers))
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        return _opener.open(req, timeout=policy.connect_timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            return None  # we already have every byte
        host = urllib.parse.urlsplit(url).netloc
        if e.code in (401, 403):
            raise AuthError(f"{host} refused access ({e.code}): the repo is gated or private",
                            hint="accept the license on the Hub and set HF_TOKEN") from e
        if e.code == 404:
            raise ModelNotFound(f"not found on {host}: {urllib.parse.urlsplit(url).path}") from e
        if e.code in (408, 429) or e.code >= 500:
            raise _Retryable(f"HTTP {e.code} from {host}") from e
        raise NetworkError(f"HTTP {e.code} from {host} for {url}") from e


def fetch(url: str, partial: Path, dest: Path, *, sha256: str, size: int | None, headers: dict | None = None,
          progress: Progress | None = None, policy: Policy | None = None) -> None:
    """Download `url` into `dest`, resuming `partial`; verify sha256 (and size) before the atomic rename."""
    policy = policy or policy_from_env()
    headers = {"User-Agent": "infer", "Accept-Encoding": "identity", **(headers or {})}
    with _disk("create", partial.parent):
        partial.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    have = _rehash(partial, digest, progress)
    if size is not None and have > size:  # not ours, or the file changed upstream: start over
        with _disk("delete", partial):
            partial.unlink()
        digest, have = hashlib.sha256(), 0
    attempt, received_any = 0, False
    while True:
        try:
            have, digest = _transfer(url, partial, headers, have, digest, size, progress, policy)
            break
        except (_Retryable, TimeoutError, socket.timeout, ConnectionError, urllib.error.URLError, OSError) as e:
            # Local file errors never get here: _disk turned them into DiskError, which is not retried.
            reason = _describe(e)
            made_progress = partial.exists() and partial.stat().st_size > 0
            received_any = received_any or made_progress
            if not received_any and _is_connect_failure(e):
                raise NetworkError(f"cannot reach {urllib.parse.urlsplit(url).netloc}: {reason}",
                                   hint="check the network, HF_ENDPOINT, or pull later; nothing was downloaded") from e
            attempt += 1
            if attempt > policy.retries:
                raise NetworkError(f"download failed after {policy.retries} retries: {reason}",
                                   hint="run the same pull again: it resumes where it stopped") from e
            wait = min(30.0, policy.backoff * 2 ** (attempt - 1))
            if policy.notice:
                policy.notice(f"{reason}; retrying in {wait:.0f} s ({attempt}/{policy.retries})")
            time.sleep(wait)
            digest = hashlib.sha256()
            have = _rehash(partial, digest, None)
    actual = digest.hexdigest()
    if size is not None and have != size:
        with _disk("delete", partial):
            partial.unlink(missing_ok=True)
        raise VerifyError(f"{dest.name}: got {have} bytes, expected {size}", hint="pull again")
    if actual != sha256:
        with _disk("delete", partial):
            partial.unlink(missing_ok=True)
        raise VerifyError(f"{dest.name}: sha256 mismatch (got {actual[:12]}…, expected {sha256[:12]}…); "
                          "the damaged download was deleted", hint="pull again; if it repeats, the source is corrupt")
    with _disk("write", partial):
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
    with _disk("move into place", dest):
        os.replace(partial, dest)


def _rehash(partial: Path, digest, progress: Progress | None) -> int:
    if not partial.exists():
        return 0
    have = 0
    with _disk("read", partial), partial.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
            have += len(block)
    if progress and have:
        progress(have)
    return have


def _transfer(url, partial, headers, have, digest, size, progress, policy):
    if size is not None and have == size:
        return have, digest
    resp = _open(url, headers, have, policy)
    if resp is None:
        return have, digest
    with resp:
        if have and resp.status != 206:  # the server ignored Range: start again from zero
            with _disk("delete", partial):
                partial.unlink(missing_ok=True)
            digest, have = hashlib.sha256(), 0
            if progress:
                progress(-1)  # tell the view to reset
        _set_stall_timeout(resp, policy.stall_timeout)
        with _disk("write", partial):
            out = open(partial, "ab", buffering=0)  # unbuffered: a full disk fails the write, not a later close
        with out:
            while True:
                block = resp.read1(CHUNK)  # what has arrived: a stall loses no received byte
                if not block:
                    break
                with _disk("write", partial):
                    _write_all(out, block)
                digest.update(block)
                have += len(block)
                if progress:
                    progress(len(block))
                if size is not None and have > size:
                    raise _Retryable("the server sent more bytes than the file has")
    if size is not None and have < size:
        raise _Retryable(f"connection closed at {have} of {size} bytes")
    return have, digest


def _write_all(out, block: bytes) -> None:
    view = memoryview(block)
    while view:
        view = view[out.write(view):]


def _set_stall_timeout(resp, seconds: float) -> None:
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _is_connect_failure(e: BaseException) -> bool:
    reason = getattr(e, "reason", e)
    return isinstance(reason, (ConnectionRefusedError, socket.gaierror)) or (
        isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError)
        and isinstance(reason, (OSError,)) and not isinstance(reason, (TimeoutError, socket.timeout)))


def _describe(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    if isinstance(e, (TimeoutError, socket.timeout)) or isinstance(reason, (TimeoutError, socket.timeout)):
        return "the transfer stalled"
    text = str(reason or e) or type(e).__name__
    return text
