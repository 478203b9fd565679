"""The local model store.

Files live in the standard Hugging Face cache layout (blobs/ named by sha256, snapshots/
linking to them, refs/), so they are shared with huggingface_hub and llama.cpp and never
downloaded twice. A small manifest in infer's data dir records each pulled reference
(repo, commit, files with sha256 and size, when pulled and last used), so `run` and `chat`
resolve a name with zero network calls.

A damaged manifest (not JSON, or records that cannot be read) is never written over: the first
read says so in one warning line on stderr, moves the file aside to
manifest.json.corrupt-<UTC time>, writes a new manifest with the records it could read (none when
the file is not JSON), and goes on with those. The model files stay in the store; pulling a model again records it without
downloading it. A manifest that cannot be read at all (permissions) is a DiskError, so no write
can replace it with less.

Local file errors (no space, read-only, permission denied) become DiskError (exit 8), naming the path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from infer import settings
from infer.errors import VerifyError, disk_error

MANIFEST_VERSION = 1


@dataclass
class StoredFile:
    name: str  # path inside the repo
    sha256: str
    size: int
    path: str  # absolute path of the file (a snapshot link or a blob)


@dataclass
class Pulled:
    name: str  # the reference as pulled, canonical (an alias or owner/repo:QUANT ...)
    repo: str
    quant: str | None
    files: list[StoredFile]
    revision: str | None = None
    commit: str | None = None
    source: str = "hub"
    pulled_at: str = ""
    last_used: str = ""
    params: int = 0  # from the GGUF metadata, read once at pull time
    context: int = 0
    architecture: str = ""

    @property
    def path(self) -> Path:
        """The file to load: the first part of a split model."""
        return Path(self.files[0].path)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def present(self) -> bool:
        """Every file is still on disk (someone may have deleted one by hand)."""
        return all(Path(f.path).exists() for f in self.files)

    @staticmethod
    def from_json(data: dict) -> "Pulled":
        files = [StoredFile(**f) for f in data.pop("files", [])]
        known = {k: v for k, v in data.items() if k in Pulled.__dataclass_fields__}
        return Pulled(files=files, **known)


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def manifest_path() -> Path:
    return settings.data_dir() / "manifest.json"


def repo_dir(repo: str) -> Path:
    return settings.models_dir() / ("models--" + repo.replace("/", "--"))


def blob_path(repo: str, sha256: str) -> Path:
    return repo_dir(repo) / "blobs" / sha256


def partial_path(repo: str, sha256: str) -> Path:
    """Stable name for an unfinished download: the next pull resumes it."""
    return repo_dir(repo) / "blobs" / f"{sha256}.incomplete"


def lock_path(repo: str, name: str) -> Path:
    # The same place huggingface_hub keeps its locks, so both tools serialize on one file.
    return settings.models_dir() / ".locks" / ("models--" + repo.replace("/", "--")) / f"{name}.lock"


@contextlib.contextmanager
def on_disk(doing: str, path: Path) -> Iterator[None]:
    """Around local file operations: an OSError becomes a DiskError naming the path (exit 8)."""
    try:
        yield
    except OSError as e:
        raise disk_error(e, doing, path) from e


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    with on_disk("write", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that a crash leaves either the old or the new content, never half."""
    with on_disk("write", path):
        _atomic_write_text(path, text)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _stderr_warning(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")  # as console.warn prints it off a terminal
    sys.stderr.flush()


warn: Callable[[str], None] = _stderr_warning  # the CLI may route it elsewhere; tests may collect it


def parse_manifest(raw: bytes | str) -> tuple[dict[str, Pulled], str | None]:
    """The records that can be read, and what is wrong with the rest (None: nothing)."""
    try:
        data = json.loads(raw)
    except ValueError as e:
        return {}, f"not valid JSON ({getattr(e, 'msg', e)})"
    entries = data.get("models") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        return {}, "no \"models\" object"
    models: dict[str, Pulled] = {}
    for name, entry in entries.items():
        try:
            pulled = Pulled.from_json(dict(entry))
            if not pulled.files or not all(isinstance(f.path, str) and isinstance(f.sha256, str) for f in pulled.files):
                raise ValueError("no files")
        except (TypeError, ValueError, AttributeError):
            continue
        models[name] = pulled
    lost = len(entries) - len(models)
    return models, (f"{lost} of {len(entries)} record(s) cannot be read" if lost else None)


class Manifest:
    """The pulled models. Every change is read-modify-write under a lock, written atomically.

    A damaged file is set aside (never written over) and reported once; see the module's doc."""

    def __init__(self, path: Path | None = None):
        self.path = path or manifest_path()

    def _lock(self):
        return file_lock(self.path.with_suffix(".lock"))

    def _read(self, locked: bool = False) -> dict[str, Pulled]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:  # unreadable is not empty: a write now would drop every record
            raise disk_error(e, "read the manifest", self.path) from e
        models, problem = parse_manifest(raw)
        if problem:
            self._set_aside(raw, problem, models, locked)
        return models

    def _set_aside(self, raw: bytes, problem: str, models: dict[str, Pulled], locked: bool) -> None:
        """Move the damaged file to manifest.json.corrupt-<time> and write the readable records back,
        once, under the lock."""
        from infer.errors import DiskError

        try:
            if locked:
                self._move_aside(raw, problem, models)
            else:
                with self._lock():
                    self._move_aside(raw, problem, models)
        except DiskError as e:
            message = f"{self.path} is damaged ({problem}) and cannot be moved aside ({e.message})"
            if locked:  # about to write: never over a file that could not be kept
                raise DiskError(message, hint="fix or move the file by hand") from e
            _warn_once(self.path, message + "; its records are ignored")

    def _move_aside(self, raw: bytes, problem: str, models: dict[str, Pulled]) -> None:
        try:
            if self.path.read_bytes() != raw:
                return  # another process moved it aside (and maybe wrote a new one) meanwhile
        except FileNotFoundError:
            return
        except OSError:
            pass
        aside = _free_name(self.path.with_name(f"{self.path.name}.corrupt-{_stamp()}"))
        with on_disk("move aside", self.path):
            os.rename(self.path, aside)
        if models:
            self._write(models)
        warn(f"{self.path} is damaged ({problem}): moved aside to {aside.name}; the files of models no longer "
             "listed are still in the store, and `infer pull NAME` records one again without downloading it")

    def all(self) -> dict[str, Pulled]:
        return self._read()

    def get(self, name: str) -> Pulled | None:
        return self._read().get(name)

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Pulled]]:
        with self._lock():
            models = self._read(locked=True)  # a damaged file is set aside first, or this raises
            yield models
            self._write(models)

    def _write(self, models: dict[str, Pulled]) -> None:
        payload = {"version": MANIFEST_VERSION, "models": {k: asdict(v) for k, v in sorted(models.items())}}
        atomic_write_text(self.path, json.dumps(payload, indent=2) + "\n")

    def put(self, pulled: Pulled) -> None:
        with self.edit() as models:
            models[pulled.name] = pulled

    def touch(self, name: str) -> None:
        from infer.errors import DiskError

        try:
            if name not in self._read():
                return  # a local file or a model found in the HF cache: nothing to record
            with self.edit() as models:
                if name in models:
                    models[name].last_used = now()
        except DiskError:
            pass  # a read-only data dir must not stop a run


_warned: set[Path] = set()


def _warn_once(path: Path, message: str) -> None:
    if path not in _warned:
        _warned.add(path)
        warn(message)


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}-{n}"), n + 1
    return candidate


def sha256_file(path: Path, progress=None, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
            if progress:
                progress(len(block))
    return h.hexdigest()


def verify_file(path: Path, sha256: str, size: int | None = None) -> None:
    if not path.exists():
        raise VerifyError(f"{path} is missing", hint="pull the model again")
    if size is not None and path.stat().st_size != size:
        raise VerifyError(f"{path} is {path.stat().st_size} bytes, expected {size}", hint="pull the model again with --force")
    actual = sha256_file(path)
    if actual != sha256:
        raise VerifyError(f"{path}: sha256 {actual[:12]}… does not match the expected {sha256[:12]}…",
                          hint="pull the model again with --force")


def link_snapshot(repo: str, commit: str, filename: str, blob: Path) -> Path:
    """Create snapshots/<commit>/<filename> -> ../../blobs/<sha>, as huggingface_hub does."""
    link = repo_dir(repo) / "snapshots" / commit / filename
    with on_disk("write", link):
        _link(link, blob)
    return link


def _link(link: Path, blob: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, link.parent)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp-link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError:  # file systems without symlinks: copy, like huggingface_hub on Windows
        import shutil

        shutil.copyfile(blob, tmp)
        os.replace(tmp, link)


def write_ref(repo: str, revision: str, commit: str) -> None:
    atomic_write_text(repo_dir(repo) / "refs" / revision, commit)


def blobs_in_use(models: dict[str, Pulled], excluding: set[str]) -> set[str]:
    return {f.sha256 for name, p in models.items() if name not in excluding for f in p.files}


def remove(names: list[str]) -> int:
    """Forget these pulled models and delete the blobs no other pulled model uses; return freed bytes."""
    freed = 0
    manifest = Manifest()
    with manifest.edit() as models:
        doomed = {n: models[n] for n in names if n in models}
        keep = blobs_in_use(models, excluding=set(doomed))
        kept_paths = {f.path for n, p in models.items() if n not in doomed for f in p.files}
        for pulled in doomed.values():
            for f in pulled.files:
                link, blob = Path(f.path), blob_path(pulled.repo, f.sha256)
                if link != blob and f.path not in kept_paths:
                    with contextlib.suppress(FileNotFoundError), on_disk("delete", link):
                        link.unlink()
                if f.sha256 in keep:
                    continue  # another pulled model still uses these bytes
                with contextlib.suppress(FileNotFoundError), on_disk("delete", blob):
                    size = blob.stat().st_size
                    blob.unlink()
                    freed += size
                keep.add(f.sha256)  # two names for one file: count it once
            _prune_empty(repo_dir(pulled.repo))
        for n in doomed:
            del models[n]
    return freed


def _prune_empty(root: Path) -> None:
    if not root.is_dir():
        return
    for dirpath, _dirnames, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)  # only succeeds when empty


def find_in_hf_cache(repo: str, filename: str | None = None, quant: str | None = None) -> Path | None:
    """A GGUF already in the Hugging Face cache (from huggingface_hub or llama.cpp), with no network."""
    snapshots = repo_dir(repo) / "snapshots"
    if not snapshots.is_dir():
        return None
    candidates = sorted(snapshots.glob("*/**/*.gguf"), key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True)
    for path in candidates:
        rel = path.relative_to(snapshots).parts[1:]
        name = "/".join(rel)
        if filename and name != filename:
            continue
        if quant and not _quant_matches(name, quant):
            continue
        if "mmproj" in name.lower() or not path.exists():
            continue
        if _split_index(name) not in (None, 1):
            continue
        return path
    return None


def _quant_matches(filename: str, quant: str) -> bool:
    from infer.sources.quants import quant_of

    return (quant_of(filename) or "").upper() == quant.upper()


def _split_index(filename: str) -> int | None:
    from infer.sources.quants import split_part

    part = split_part(filename)
    return part[0] if part else None


def disk_usage(models: dict[str, Pulled]) -> int:
    seen: dict[str, int] = {}
    for p in models.values():
        for f in p.files:
            seen[f.sha256] = f.size
    return sum(seen.values())
