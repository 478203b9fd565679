"""Answers that need no Typer: `infer --version` and the root `infer --help`.

Importing Typer costs more than either answer may take (start-up goals in benchmarks/RESULTS.md),
so the console script asks here first. The root help is the text Typer renders at the width
Click uses on any terminal of 80 columns or more; `python -m infer.cli.docs --write` regenerates
root_help.txt and its --check (a test) fails when it drifts. Narrower terminals, and every other
command line, go through Typer.
"""

from __future__ import annotations

import os
import sys

HELP_WIDTH = 78  # Click wraps help at min(terminal columns, 80) - 2
HELP_FILE = os.path.join(os.path.dirname(__file__), "root_help.txt")


def answer(argv: list[str]) -> bool:
    """Print the answer and return True if argv is one of the fast cases; else False (use Typer)."""
    if argv in (["--version"], ["-V"]):
        from infer.versions import version_line

        _write(version_line() + "\n")
        return True
    if argv in (["--help"], ["-h"]) and _columns() >= HELP_WIDTH + 2:
        try:
            with open(HELP_FILE, encoding="utf-8") as f:
                text = f.read()
        except OSError:
            return False
        _write(text)
        return True
    return False


def _columns() -> int:
    """The terminal width as shutil.get_terminal_size (which Click uses) sees it, without importing shutil."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns or 80


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `infer --help | head -1`: end quietly, as the Typer path does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
