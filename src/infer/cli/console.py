"""Colour and TTY rules in one place: stdout carries only data; everything else goes to
stderr; no colour, bars or spinners off a TTY, with NO_COLOR, --no-color or TERM=dumb."""

from __future__ import annotations

import os
import sys
from functools import lru_cache

_state = {"no_color": False}


def set_no_color(value: bool) -> None:
    _state["no_color"] = value
    err.cache_clear()
    out.cache_clear()


def color_allowed(stream) -> bool:
    if _state["no_color"] or "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


def is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@lru_cache(maxsize=1)
def err():
    """Rich console on stderr: messages, progress, stats."""
    return _console(sys.stderr, stderr=True)


@lru_cache(maxsize=1)
def out():
    """Rich console on stdout, for tables and rendered Markdown on a terminal."""
    return _console(sys.stdout)


def _console(stream, stderr: bool = False):
    from rich.console import Console

    tty = is_tty(stream)
    styled = color_allowed(stream)
    # No colour means no escape codes at all (Rich's no_color alone keeps bold and dim);
    # off a terminal nothing may be cut to 80 columns: tables size to their content instead.
    return Console(stderr=stderr, highlight=False, color_system="auto" if styled else None,
                   force_terminal=styled, width=None if tty else 4096, soft_wrap=not tty)


def warn(message: str) -> None:
    err().print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False)


def info(message: str) -> None:
    err().print(message, markup=False, highlight=False)


def dim(message: str) -> None:
    err().print(f"[dim]{escape(message)}[/dim]")


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)
