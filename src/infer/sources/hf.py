"""The Hugging Face Hub (or any Hub-compatible endpoint, HF_ENDPOINT): listing and choice of files.

Listing goes through huggingface_hub (sizes, LFS sha256, the commit, and its error types);
the bytes go through our own resumable transfer (download.py)."""

from __future__ import annotations

import posixpath
import urllib.parse
from dataclasses import dataclass

from infer import settings
from infer.catalog import DEFAULT_QUANT, QUANT_FALLBACK
from infer.errors import AuthError, ModelNotFound, NetworkError
from infer.sources.quants import quant_of, split_part, split_prefix


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    sha256: str | None  # LFS oid; None for small files kept in git


@dataclass(frozen=True)
class Listing:
    repo: str
    revision: str
    commit: str
    files: tuple[RemoteFile, ...]

    def ggufs(self) -> list[RemoteFile]:
        return [f for f in self.files if f.name.lower().endswith(".gguf")]


def token() -> str | None:
    if settings.HF_TOKEN.get():
        return settings.HF_TOKEN.get()
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # no saved token, or an old huggingface_hub
        return None


def auth_headers() -> dict:
    t = token()
    return {"Authorization": f"Bearer {t}"} if t else {}


def file_url(repo: str, commit: str, name: str) -> str:
    return f"{settings.hf_endpoint()}/{repo}/resolve/{commit}/{urllib.parse.quote(name)}"


def safe_name(name: str) -> bool:
    """A repo file name we may write under the store: relative, no '..', no backslashes."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return False
    norm = posixpath.normpath(name)
    return norm == name and not norm.startswith("..") and ".." not in name.split("/")


def list_repo(repo: str, revision: str | None = None) -> Listing:
    """The repo's files with sizes and sha256, at a commit; errors mapped to ours."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf_errors

    api = HfApi(endpoint=settings.hf_endpoint(), token=token() or False)
    try:
        info = api.model_info(repo, revision=revision or "main", timeout=15)
        # The tree at that exact commit carries sizes and LFS sha256 (and every mirror serves it).
        tree = [f for f in api.list_repo_tree(repo, revision=info.sha or revision, recursive=True)
                if hasattr(f, "size") and hasattr(f, "lfs")]
    except hf_errors.GatedRepoError as e:
        raise AuthError(f"{repo} is gated: your token has no access yet",
                        hint="accept the license on the Hub and set HF_TOKEN") from e
    except hf_errors.RevisionNotFoundError as e:
        raise ModelNotFound(f"revision {revision!r} not found in {repo}") from e
    except hf_errors.RepositoryNotFoundError as e:
        if token() is None:
            raise ModelNotFound(f"repo {repo} not found on {settings.hf_endpoint()}",
                                hint="check the name; if it is private or gated, set HF_TOKEN") from e
        raise ModelNotFound(f"repo {repo} not found, or your token cannot see it") from e
    except hf_errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise AuthError(f"{repo}: access denied ({status})", hint="accept the license on the Hub and set HF_TOKEN") from e
        raise NetworkError(f"the Hub answered {status or 'an error'} for {repo}: {str(e).splitlines()[0]}") from e
    except Exception as e:  # connection refused, DNS, timeouts: each HTTP stack names them differently
        if type(e).__name__ in ("OfflineModeIsEnabled",):
            raise NetworkError("huggingface_hub is in offline mode (HF_HUB_OFFLINE)", hint="unset it to pull") from e
        if _is_network(e):
            raise NetworkError(f"cannot reach {settings.hf_endpoint()}: {_first_line(e)}",
                               hint="check the network or HF_ENDPOINT; nothing was downloaded") from e
        raise
    files = [RemoteFile(name=f.path, size=int(f.size or 0), sha256=getattr(f.lfs, "sha256", None) if f.lfs else None)
             for f in tree]
    return Listing(repo=repo, revision=revision or "main", commit=info.sha or revision or "main", files=tuple(files))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _is_network(e: BaseException) -> bool:
    while e is not None:
        name = type(e).__name__
        if any(k in name for k in ("Connect", "Timeout", "NetworkError", "ProtocolError", "RemoteDisconnected")):
            return True
        if isinstance(e, OSError):
            return True
        e = e.__cause__ or e.__context__
    return False


def available_quants(listing: Listing) -> list[str]:
    quants = {quant_of(f.name) for f in listing.ggufs() if "mmproj" not in f.name.lower()}
    return sorted(q for q in quants if q)


def pick(listing: Listing, *, quant: str | None = None, file: str | None = None,
         budget: int | None = None) -> list[RemoteFile]:
    """The files to pull: one GGUF, or every part of a split one; never a vision projector (mmproj):
    nothing here uses one."""
    unsafe = [f.name for f in listing.files if not safe_name(f.name)]
    if unsafe:
        raise NetworkError(f"refusing {listing.repo}: its listing has an unsafe file name {unsafe[0]!r}",
                           hint="this repo (or the server) is not trustworthy; nothing was written")
    models = [f for f in listing.ggufs() if "mmproj" not in f.name.lower()]
    if not models:
        raise ModelNotFound(f"{listing.repo} has no GGUF files", hint="infer runs GGUF models: look for a '-GGUF' repo")
    if file:
        chosen = [f for f in listing.files if f.name == file]
        if not chosen:
            names = ", ".join(f.name for f in models[:8])
            raise ModelNotFound(f"{file} is not in {listing.repo}", hint=f"files there: {names}")
    elif quant and quant.upper() == "AUTO":
        chosen = _largest_within(listing, models, budget)
    else:
        chosen = _by_quant(listing, models, quant)
    first = chosen[0]
    part = split_part(first.name)
    if part:
        prefix = split_prefix(first.name)
        chosen = sorted((f for f in models if split_part(f.name) and split_prefix(f.name) == prefix
                         and split_part(f.name)[1] == part[1]), key=lambda f: split_part(f.name)[0])
        if len(chosen) != part[1]:
            raise ModelNotFound(f"{first.name} is part of a {part[1]}-part model, but {listing.repo} has {len(chosen)} parts")
    missing_sha = [f.name for f in chosen if not f.sha256]
    if missing_sha:
        raise NetworkError(f"{listing.repo} lists no sha256 for {missing_sha[0]}; refusing an unverifiable download")
    return chosen


def model_sizes(models: list[RemoteFile]) -> dict[str, int]:
    """Bytes per quant (all parts of a split model together), for the choice and for messages."""
    sizes: dict[str, int] = {}
    for f in models:
        q = quant_of(f.name)
        if q:
            sizes[q] = sizes.get(q, 0) + f.size
    return sizes


def _largest_within(listing: Listing, models: list[RemoteFile], budget: int | None) -> list[RemoteFile]:
    """`:auto`: the largest (best) quant whose files fit the memory budget."""
    sizes = model_sizes(models)
    fitting = [q for q, size in sizes.items() if budget is None or size <= budget]
    if not fitting:
        from infer.units import human_bytes

        smallest = min(sizes.items(), key=lambda kv: kv[1]) if sizes else None
        raise ModelNotFound(f"no quant of {listing.repo} fits in {human_bytes(budget or 0)}",
                            hint=f"the smallest is {smallest[0]} ({human_bytes(smallest[1])})" if smallest else None)
    return _by_quant(listing, models, max(fitting, key=lambda q: sizes[q]))


def _by_quant(listing: Listing, models: list[RemoteFile], quant: str | None) -> list[RemoteFile]:
    def with_quant(q: str) -> list[RemoteFile]:
        return sorted((f for f in models if (quant_of(f.name) or "").upper() == q.upper()), key=lambda f: f.name)

    if quant:
        hits = with_quant(quant)
        if not hits:
            have = ", ".join(available_quants(listing)) or "none recognised"
            raise ModelNotFound(f"quant {quant.upper()} is not in {listing.repo}", hint=f"available: {have}")
        return hits[:1] if not split_part(hits[0].name) else hits
    for q in (DEFAULT_QUANT,) + QUANT_FALLBACK:
        hits = with_quant(q)
        if hits:
            return hits[:1] if not split_part(hits[0].name) else hits
    return sorted(models, key=lambda f: f.name)[:1]
