"""ModelRef: what a user may write to name a model, parsed into a value.

Grammar (whitespace around the whole string is ignored)::

    ref      := local | hub | alias
    local    := PATH starting with "/", "./", "../", "~" or a dot-directory (".cache/..."),
                or any PATH ending in ".gguf" with fewer than three "/"-separated parts,
                or an existing file ending in ".gguf" (write "./" in front to force a local path)
    hub      := [ "hf.co/" | "huggingface.co/" | "https://huggingface.co/" ]
                OWNER "/" REPO ( "/" FILE | [ ":" QUANT ] ) [ "@" REVISION ]
    alias    := NAME [ ":" TAG ]                      e.g. smollm2, qwen2.5:0.5b
    OWNER, REPO := [A-Za-z0-9] [A-Za-z0-9._-]*  (no "--", no "..", at most 96 chars)
    FILE     := one or more "/"-separated parts, none "." or "..", ending in ".gguf"
    QUANT    := [A-Za-z0-9_.-]+   case-insensitive; kept upper-case (q4_k_m == Q4_K_M)
    REVISION := [A-Za-z0-9_.\\-/]+  a branch, tag or commit
    NAME, TAG := [a-z0-9] [a-z0-9._-]*  case-insensitive; kept lower-case

`str(ref)` is the canonical spelling, and `parse(str(ref)) == ref` for every valid ref.
An alias picks a different quant with the `--quant` option, not in the reference:
"@" always means a revision, so one symbol never has two meanings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from infer.errors import UsageError

Kind = Literal["alias", "hub", "local"]

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_QUANT = re.compile(r"^[A-Za-z0-9_.-]+$")
_REVISION = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_ALIAS = re.compile(r"^[a-z0-9][a-z0-9._-]*(:[a-z0-9][a-z0-9._-]*)?$")
_HUB_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "huggingface.co/", "hf.co/")


@dataclass(frozen=True)
class ModelRef:
    kind: Kind
    name: str  # alias name, "owner/repo", or a filesystem path
    file: str | None = None  # hub only: a path inside the repo
    quant: str | None = None  # hub only: a quant tag, upper-case
    revision: str | None = None  # hub only

    def __str__(self) -> str:
        if self.kind != "hub":
            return self.name
        text = self.name
        if self.file:
            text += "/" + self.file
        elif self.quant:
            text += ":" + self.quant
        if self.revision:
            text += "@" + self.revision
        return text

    @property
    def repo(self) -> str:
        if self.kind != "hub":
            raise ValueError(f"{self} is not a Hub reference")
        return self.name


def _bad(text: str, why: str) -> UsageError:
    return UsageError(
        f"invalid model reference {text!r}: {why}",
        hint="write an alias (smollm2), a Hub repo (owner/repo[:QUANT]), a file (owner/repo/file.gguf) "
        "or a local path (./model.gguf)",
    )


def _is_local(text: str) -> bool:
    if text.startswith(("/", "./", "../", "~", ".")) or text in (".", ".."):
        return True  # no Hub owner starts with a dot
    if not text.lower().endswith(".gguf"):
        return False
    import os

    return len(text.split("/")) < 3 or os.path.isfile(text)


def _check_segment(text: str, part: str, what: str) -> None:
    if not _SEGMENT.match(part) or "--" in part or ".." in part:
        raise _bad(text, f"{what} {part!r} is not a valid Hub name")


def parse(text: str) -> ModelRef:
    """Parse a model reference; raise UsageError with the reason when it is not one."""
    original = text
    text = text.strip()
    if not text:
        raise _bad(original, "it is empty")
    if _is_local(text):
        return ModelRef("local", text)
    for prefix in _HUB_PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
            if "/" not in text:
                raise _bad(original, "expected owner/repo after the host")
            break
    if "/" not in text:
        alias = text.lower()
        if not _ALIAS.match(alias):
            raise _bad(original, "not a valid alias name")
        return ModelRef("alias", alias)
    return _parse_hub(original, text)


def _parse_hub(original: str, text: str) -> ModelRef:
    revision = None
    if "@" in text:
        text, revision = text.split("@", 1)
        if not _REVISION.match(revision) or ".." in revision:
            raise _bad(original, f"revision {revision!r} is not valid")
    parts = text.split("/")
    owner, repo_part, rest = parts[0], parts[1], parts[2:]
    quant = None
    if rest:
        file = "/".join(rest)
        if any(p in ("", ".", "..") for p in rest):
            raise _bad(original, f"file path {file!r} is not valid")
        if not file.lower().endswith(".gguf"):
            raise _bad(original, f"file {file!r} is not a .gguf file")
        if ":" in file:
            raise _bad(original, "a file reference cannot also name a quant")
    else:
        file = None
        if ":" in repo_part:
            repo_part, quant = repo_part.split(":", 1)
            if not _QUANT.match(quant):
                raise _bad(original, f"quant {quant!r} is not valid")
            quant = quant.upper()
    _check_segment(original, owner, "owner")
    _check_segment(original, repo_part, "repo")
    return ModelRef("hub", f"{owner}/{repo_part}", file=file, quant=quant, revision=revision)
