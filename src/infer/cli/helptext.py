"""Help text for the root and the command modules: the exit-code epilog, example blocks, and the
environment each command reads. It imports nothing of the CLI, so any module may import it."""

from __future__ import annotations

from infer import settings
from infer.errors import EXIT_CODE_DOCS

EXIT_CODES = "Exit codes: " + "; ".join(f"{int(c)} {d.split(':')[0].split(' (')[0]}" for c, d in EXIT_CODE_DOCS.items())


def examples(*lines: str) -> str:
    """An epilog of example commands, kept as written (Click's \\b: no re-wrapping)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


def with_env(command: str, epilog: str) -> str:
    """Append the environment variables the command reads, from the one registry in settings."""
    names = ", ".join(v.name for v in settings.env_for(command) if not v.name.startswith("INFER_TEST_"))
    return f"{epilog.rstrip()}\n\nEnvironment: {names}."

