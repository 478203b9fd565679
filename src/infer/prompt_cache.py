"""The prompt cache on disk: the KV state of a prompt's prefix, saved after a run and restored by a later
run whose prompt starts with the same tokens, so that only the rest is read.

An entry is one file, written atomically (temporary file, fsync, rename): a magic line, a JSON header
(the key, the model, the token count, the payload's length and sha256), the prefix's tokens, then the
payload (llama.cpp's sequence state). A reader checks all of it; an entry that is truncated, corrupt or of
another format is deleted and the prompt is read again: a cache never gives a wrong answer.

The key says when a saved state is valid: the model file's identity, llama.cpp's version and build
features, and the parameters that change the KV cache's contents or layout (KV type, flash attention,
where the layers run). The model's identity is its sha256 when it sits in the store (a blob's name is its
sha256: free) and path + size + mtime for any other file (hashing a multi-GB file on every run would cost
more than the prefill it saves).

Entries of every model share one size cap; the least recently used go first. A prefix shorter than
MIN_TOKENS is not worth a file and is never saved nor reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MAGIC = b"INFER-KV 1\n"
MIN_TOKENS = 64
DEFAULT_MAX_BYTES = 4 << 30
SUFFIX = ".kv"


@dataclass(frozen=True)
class Entry:
    path: Path
    key_id: str
    model: str
    n_tokens: int
    size: int
    last_used: float


def model_identity(path: Path) -> str:
    real = Path(path).resolve()
    if real.parent.name == "blobs" and len(real.name) == 64:
        return f"sha256:{real.name}"
    st = real.stat()
    return f"file:{real}:{st.st_size}:{st.st_mtime_ns}"


def key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _tokens_hash(tokens: list[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(tokens)}I", *tokens)).hexdigest()


def _read_head(f) -> tuple[dict, list[int]] | None:
    if f.read(len(MAGIC)) != MAGIC:
        return None
    (n,) = struct.unpack("<I", f.read(4))
    if n > 1 << 20:
        return None
    header = json.loads(f.read(n))
    count = int(header["n_tokens"])
    raw = f.read(4 * count)
    if len(raw) != 4 * count:
        return None
    return header, list(struct.unpack(f"<{count}I", raw))


class PromptCache:
    def __init__(self, root: Path, key: dict, model: str, max_bytes: int = DEFAULT_MAX_BYTES,
                 warn: Callable[[str], None] = lambda m: None):
        self.root = root
        self.key = key
        self.id = key_id(key)
        self.model = model
        self.max_bytes = max_bytes
        self._warn = warn
        self._warned = False

    def _problem(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            self._warn(f"prompt cache: {message}; going on without it")

    def lookup(self, tokens: list[int]) -> tuple[int, bytes] | None:
        """The longest cached prefix of `tokens` (leaving at least one token to read) and its state."""
        candidates = []
        for path in self._files(self.id):
            try:
                with open(path, "rb") as f:
                    head = _read_head(f)
            except (OSError, ValueError, KeyError, struct.error):
                head = None
            if head is None:
                self._discard(path)
                continue
            header, prefix = head
            n = len(prefix)
            if MIN_TOKENS <= n < len(tokens) and tokens[:n] == prefix and header.get("key") == self.id:
                candidates.append((n, path))
        for n, path in sorted(candidates, reverse=True):
            payload = self._payload(path)
            if payload is not None:
                try:
                    os.utime(path)  # last used, for the LRU order
                except OSError:
                    pass
                return n, payload
        return None

    def _payload(self, path: Path) -> bytes | None:
        try:
            with open(path, "rb") as f:
                head = _read_head(f)
                if head is None:
                    raise ValueError("bad header")
                header, _ = head
                data = f.read(int(header["payload_len"]) + 1)
        except (OSError, ValueError, KeyError, struct.error):
            self._discard(path)
            return None
        if len(data) != int(header["payload_len"]) or hashlib.sha256(data).hexdigest() != header["payload_sha256"]:
            self._warn(f"prompt cache: {path.name} is damaged (truncated or corrupt): deleted, the prompt is read again")
            self._discard(path)
            return None
        return data

    def store(self, prefix: list[int], payload: bytes) -> Path | None:
        if len(prefix) < MIN_TOKENS or not payload:
            return None
        target = self.root / f"{self.id}-{_tokens_hash(prefix)[:24]}{SUFFIX}"
        header = json.dumps({"key": self.id, "key_fields": self.key, "model": self.model, "n_tokens": len(prefix),
                             "payload_len": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest(),
                             "created": time.time()}).encode()
        tmp = self.root / f".{target.name}.{os.getpid()}.tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(MAGIC + struct.pack("<I", len(header)) + header)
                f.write(struct.pack(f"<{len(prefix)}I", *prefix))
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)  # two runs writing the same entry: the last complete one wins
        except OSError as e:
            self._problem(f"cannot write to {self.root} ({e.strerror or e})")
            try:
                tmp.unlink()
            except OSError:
                pass
            return None
        self.evict()
        return target

    def evict(self) -> None:
        """Delete the least recently used entries (of every model) until the cache fits its cap."""
        entries = sorted(list_entries(self.root), key=lambda e: e.last_used)
        total = sum(e.size for e in entries)
        for e in entries:
            if total <= self.max_bytes:
                break
            self._discard(e.path)
            total -= e.size

    def _files(self, kid: str) -> list[Path]:
        try:
            return sorted(self.root.glob(f"{kid}-*{SUFFIX}"))
        except OSError:
            return []

    @staticmethod
    def _discard(path: Path) -> None:
        try:
            path.unlink()
        except OSError:
            pass


def list_entries(root: Path) -> list[Entry]:
    out = []
    try:
        paths = list(root.glob(f"*{SUFFIX}"))
    except OSError:
        return out
    for path in paths:
        try:
            st = path.stat()
            with open(path, "rb") as f:
                head = _read_head(f)
        except (OSError, ValueError, KeyError, struct.error):
            continue
        if head is None:
            continue
        header, tokens = head
        out.append(Entry(path=path, key_id=str(header.get("key", "")), model=str(header.get("model", "?")),
                         n_tokens=len(tokens), size=st.st_size, last_used=st.st_mtime))
    return out


def clear(root: Path, model: str | None = None) -> tuple[int, int]:
    """Remove every entry (or a model's); returns (files, bytes) removed. Leftover temporary files go too."""
    files = size = 0
    for e in list_entries(root):
        if model is None or e.model == model:
            try:
                e.path.unlink()
                files, size = files + 1, size + e.size
            except OSError:
                pass
    if model is None:
        for tmp in root.glob(".*.tmp") if root.is_dir() else []:
            try:
                tmp.unlink()
            except OSError:
                pass
    return files, size


def total_size(root: Path) -> int:
    return sum(e.size for e in list_entries(root))


def parse_size(text: str) -> int:
    """'4G', '512M', '1.5GiB', '1000000' -> bytes."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in "KMGT" and t[-1:] else t
    value = float(number)
    if value < 0:
        raise ValueError(text)
    return int(value * mult)
