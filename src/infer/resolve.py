"""From what the user typed to a GGUF file on disk, without the network unless pulling is allowed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from infer import catalog, config, refs, settings, store
from infer.errors import ModelNotFound
from infer.gguf_meta import check_gguf


@dataclass
class Resolved:
    path: Path
    name: str
    entry: catalog.Entry | None = None  # the catalog entry, for per-model defaults
    origin: str = ""  # where the reference came from (-m, INFER_MODEL, ...)

    @property
    def defaults(self) -> dict:
        return dict(self.entry.defaults) if self.entry else {}


def choose(cli_value: str | None) -> tuple[str, str]:
    """The model reference to use and where it came from."""
    if cli_value:
        return cli_value, "-m"
    if settings.INFER_MODEL.get():
        return settings.INFER_MODEL.get(), "INFER_MODEL"
    configured = config.load().get("model")
    if configured:
        return configured, str(config.path())
    return catalog.load().default, "catalog default"


def store_name(ref: refs.ModelRef, quant: str | None, cat: catalog.Catalog) -> tuple[str, catalog.Entry | None]:
    """The manifest key for a reference: the alias itself for its default quant, else the Hub spelling."""
    if ref.kind == "alias":
        entry = cat.get(ref.name)
        if quant is None or quant.upper() == entry.quant:
            return ref.name, entry
        return str(refs.ModelRef("hub", entry.repo, quant=quant.upper(), revision=entry.revision)), entry
    if quant and ref.kind == "hub" and not ref.file:
        ref = refs.ModelRef("hub", ref.name, quant=quant.upper(), revision=ref.revision)
    return str(ref), None


def find_local(text: str, quant: str | None = None) -> Resolved | None:
    """The model if it is already on disk (a path, the manifest, or the HF cache); else None."""
    ref = refs.parse(text)
    if ref.kind == "local":
        path = Path(ref.name).expanduser()
        check_gguf(path)
        return Resolved(path=path, name=str(path))
    cat = catalog.load()
    name, entry = store_name(ref, quant, cat)
    pulled = store.Manifest().get(name)
    if pulled and pulled.present:
        return Resolved(path=pulled.path, name=name, entry=entry)
    repo = entry.repo if entry else ref.name
    want_quant = (quant or (entry.quant if entry else ref.quant) or None)
    want_file = entry.file if entry and not quant else ref.file
    found = store.find_in_hf_cache(repo, filename=want_file, quant=None if want_file else want_quant)
    if found:
        return Resolved(path=found, name=name, entry=entry)
    return None


def resolve(text: str, *, quant: str | None = None, origin: str = "",
            pull: Callable[[str, str | None], None] | None = None) -> Resolved:
    """Resolve to a local file; call `pull` (when given and not offline) for a model not yet here."""
    found = find_local(text, quant)
    if found is None and pull is not None and not settings.offline():
        pull(text, quant)
        found = find_local(text, quant)
    if found is None:
        why = "offline mode is on, and it " if settings.offline() else "it "
        raise ModelNotFound(f"model {text!r} is not pulled: {why}is not in the store",
                            hint=f"run `infer pull {text}`" + (" (with network access)" if settings.offline() else ""))
    found.origin = origin
    return found
