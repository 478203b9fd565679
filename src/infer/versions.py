"""Versions without importing heavy packages: read from installed package metadata."""

from __future__ import annotations

from importlib import metadata


def llama_cpp_version() -> str:
    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        return "not installed"
