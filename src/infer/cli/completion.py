"""Shell completion: the `completion` command and its scripts (also written to completions/ by
docs.py), and the model-name lookup behind them: fast, offline, and never importing llama_cpp,
huggingface_hub or gguf."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

SHELLS = {"bash": "infer.bash", "zsh": "_infer", "fish": "infer.fish"}
COMPLETE_VAR = "_INFER_COMPLETE"


def completion_script(shell: str) -> str:
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name="infer", complete_var=COMPLETE_VAR, shell=shell).rstrip("\n") + "\n"


def completion(shell: Annotated[str, typer.Argument(help="bash, zsh or fish.", show_default=False,
                                                    autocompletion=lambda: ["bash", "zsh", "fish"])]) -> None:
    """Print the shell completion script (see the README to install it)."""
    from infer.errors import UsageError

    if shell not in SHELLS:
        raise UsageError(f"no completion for {shell!r}", hint="choose bash, zsh or fish")
    sys.stdout.write(completion_script(shell))


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
