"""Shell completion helpers: fast, offline, and never importing llama_cpp, huggingface_hub or gguf."""

from __future__ import annotations


def model_names() -> list[str]:
    """Pulled models first, then catalog aliases."""
    names: list[str] = []
    try:
        from infer import store

        names += sorted(store.Manifest().all())
    except Exception:  # completion must never fail loudly
        pass
    try:
        from infer import catalog

        names += [a for a in catalog.load().entries if a not in names]
    except Exception:
        pass
    return names
