"""The user's config file: config.toml in infer's config dir.

    model = "qwen2.5:1.5b"      # default model when -m and INFER_MODEL are not given
    cache = true                # `infer run` uses the prompt cache unless --no-cache
    cache_size = "4G"           # the prompt cache's size cap
"""

from __future__ import annotations

import sys
from pathlib import Path

from infer import settings
from infer.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KEYS = {"model": str, "cache": bool, "cache_size": str}


def path() -> Path:
    return settings.config_dir() / "config.toml"


def load() -> dict:
    p = path()
    if not p.is_file():
        return {}
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{p}: malformed TOML: {e}", hint="fix or remove the file") from e
    for key, value in data.items():
        if key not in KEYS or not isinstance(value, KEYS[key]):
            raise UsageError(f"{p}: unknown or mistyped setting {key!r}", hint=f"known settings: {', '.join(KEYS)}")
    return data
