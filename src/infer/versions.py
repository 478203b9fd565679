"""Versions without importing heavy packages: read from installed package metadata.

`importlib.metadata` itself costs 15-50 ms to import, more than `infer --version` may take in all,
so a distribution's version is first read from its `NAME-VERSION.dist-info` folder name."""

from __future__ import annotations

import os
import sys


def distribution_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    prefix = name.replace("-", "_").lower() + "-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # a zip file, a missing folder
            continue
        for folder in names:
            if folder.endswith(".dist-info") and folder.lower().startswith(prefix):
                return folder[len(prefix):-len(".dist-info")]
    from importlib import metadata  # egg-info and other layouts

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def llama_cpp_version() -> str:
    return distribution_version("llama_cpp_python") or "not installed"


def version_line() -> str:
    from infer import __version__

    return f"infer {__version__} (llama-cpp-python {llama_cpp_version()})"
