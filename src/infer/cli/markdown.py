"""Incremental Markdown for a streamed answer: a finished block is rendered once and printed for
good; only the last, still-growing block is redrawn, throttled, in a Live region with no refresh
thread. The cost per token stays flat however long the answer grows.

Blocks are cut where markdown-it (the parser Rich uses) starts a new top-level block, so each block
renders alone exactly as it does inside the whole answer; Rich's blank line between top-level
elements is added back between blocks.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

# A blank line does not end these: a list's next item, an indented code block's next line or an
# HTML block may follow it. They end when the next block begins.
OPEN_ACROSS_BLANK = frozenset({"bullet_list_open", "ordered_list_open", "code_block", "html_block"})
# These end with their last line.
ONE_LINE = frozenset({"heading_open", "hr"})
# Rich decides the blank line before these from their own nested elements.
NESTED = frozenset({"bullet_list_open", "ordered_list_open", "blockquote_open", "table_open"})
CLOSING_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*$")
OPENING_FENCE = re.compile(r" {0,3}(?:(`{3,})[^`\n]*|(~{3,})[^\n]*)\n")
MIN_INTERVAL = 1 / 12  # the most often the live block is redrawn (the rate the whole answer had before)
COST_SHARE = 50  # ... and no more often than 50x its own last drawing time: at most 2% of the time


@dataclass(frozen=True)
class Block:
    kind: str  # markdown-it's token type for the block's top-level element: "paragraph_open", "fence", ...
    start: int  # first line, from 0
    end: int  # the line after its last
    markup: str = ""  # the opening fence of a code block


@lru_cache(maxsize=2)
def _parser(blocks_only: bool = True):
    from markdown_it import MarkdownIt

    # Rich's own configuration (rich.markdown.Markdown); for splitting, block rules only.
    md = MarkdownIt().enable("strikethrough").enable("table")
    return md.disable(["inline", "text_join"]) if blocks_only else md


@lru_cache(maxsize=1)
def _rich_template():
    from rich.markdown import Markdown

    return Markdown("")


def rich_markdown(source: str):
    """rich.markdown.Markdown(source), without building a new markdown-it parser each time (a third
    of the cost of drawing a small block): a copy of an empty one, parsed with the same configuration."""
    from rich.markdown import Markdown

    md = Markdown.__new__(Markdown)
    md.__dict__.update(_rich_template().__dict__)
    md.markup, md.parsed = source, _parser(blocks_only=False).parse(source)
    return md


def blocks(source: str) -> list[Block]:
    """The top-level blocks of a Markdown text, with their line ranges."""
    return [Block(t.type, t.map[0], t.map[1], t.markup) for t in _parser().parse(source)
            if t.level == 0 and t.nesting >= 0 and t.map]


def split(text: str) -> tuple[list[str], str]:
    """Cut the finished blocks off the front of a growing answer: (their sources, the text still open).

    A block is finished when the next one has begun, when its code fence is closed, when it is a
    heading or a rule, or when a blank line follows it (except for the blocks a blank line does not end).
    Only complete lines are judged: the last, unfinished line always stays open.
    """
    cut = text.rfind("\n") + 1
    lines = text[:cut].splitlines(keepends=True)
    found = blocks(text[:cut]) if cut else []
    if not found:
        return [], text
    n = len(found) if _closed(found[-1], lines) else len(found) - 1
    sources = _sources(lines, found)
    return sources[:n], "".join(sources[n:]) + text[cut:]


def split_all(text: str) -> list[str]:
    """The sources of every block of a finished text (leading lines outside any block join the first)."""
    lines = text.splitlines(keepends=True)
    return _sources(lines, blocks(text)) or ([text] if text.strip() else [])


def _sources(lines: list[str], found: list[Block]) -> list[str]:
    """Each block's lines up to the next block's first, so nothing between them is lost."""
    starts = [0, *(b.start for b in found[1:]), len(lines)]
    return ["".join(lines[a:b]) for a, b in pairwise(starts)] if found else []


def _closed(block: Block, lines: list[str]) -> bool:
    if block.kind in ONE_LINE:
        return True
    if block.kind == "fence":
        closing = CLOSING_FENCE.match(lines[block.end - 1]) if block.end - block.start >= 2 else None
        fence = closing.group(1) if closing else ""
        return fence[:1] == block.markup[:1] and len(fence) >= len(block.markup)
    return block.kind not in OPEN_ACROSS_BLANK and len(lines) > block.end and not lines[-1].strip()


def rich_gaps(source: str) -> tuple[bool, bool | None]:
    """How Rich spaces this block inside a whole answer: (whether the blank line before it is decided
    inside it: a list, quote or table asks for one through its nested elements, whatever came before;
    whether a blank line follows it, None when it renders nothing)."""
    from rich.markdown import Markdown, UnknownElement

    found = blocks(source)
    if not found:
        return True, None
    return found[0].kind in NESTED, Markdown.elements.get(found[-1].kind, UnknownElement).new_line


class LiveMarkdown:
    """Streams a Markdown answer to a terminal console; use as a context manager, feed() text.

    Leaving the context (end of answer, Ctrl-C, a closed generator) prints what is still open,
    once: the screen ends up as the whole answer rendered at once would look.
    """

    def __init__(self, console):
        self.console = console
        self.open = ""  # the block still growing and the unfinished line
        self.printed: list[str] = []  # sources printed for good, in order
        self._ready: list[str] = []  # finished, not yet printed
        self._gap = False  # whether Rich would put a blank line before the next block
        self._live = None
        self._next_draw = 0.0

    def __enter__(self) -> LiveMarkdown:
        from rich.live import Live

        self._live = Live(console=self.console, auto_refresh=False, transient=True, vertical_overflow="visible")
        self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def feed(self, text: str) -> None:
        self.open += text
        if "\n" in text and not self._fence_goes_on(len(text)):
            done, self.open = split(self.open)
            self._ready += done
            if self._ready:
                self._print_ready()
                return
        if time.monotonic() >= self._next_draw:
            self._draw()

    def _fence_goes_on(self, added: int) -> bool:
        """Whether the open block is a code fence that the lines just completed do not close: then
        there is nothing to cut, and no need to parse a long code block again on each line."""
        opening = OPENING_FENCE.match(self.open)
        if not opening or opening.end() > len(self.open) - added:
            return False
        fence = opening.group(1) or opening.group(2)
        first = self.open.rfind("\n", 0, len(self.open) - added) + 1
        for line in self.open[first:self.open.rfind("\n") + 1].splitlines():
            closing = CLOSING_FENCE.match(line)
            if closing and closing.group(1)[0] == fence[0] and len(closing.group(1)) >= len(fence):
                return False
        return True

    def close(self) -> None:
        live = self._live
        if live is None:
            return
        try:
            self._ready += split_all(self.open)
            self.open = ""
            self._print_ready()
        finally:
            self._live = None
            live.update(_Tail("", False), refresh=False)
            live.stop()

    def _print_ready(self) -> None:
        """Print the finished blocks above the live region, which is redrawn with them in one write."""
        ready, self._ready = self._ready, []  # taken first: a Ctrl-C mid-print must not print them again
        shown = []
        for source in ready:
            own, after = rich_gaps(source)
            shown.append(_Block(source, self._gap and not own))
            self.printed.append(source)
            self._gap = self._gap if after is None else after
        started = time.monotonic()
        self._live.update(_Tail(self.open, self._gap_before()), refresh=not shown)
        if shown:
            self.console.print(*shown, sep="", end="")
        self._drawn(started)

    def _draw(self) -> None:
        if self._live is None:
            return
        started = time.monotonic()
        self._live.update(_Tail(self.open, self._gap_before()), refresh=True)
        self._drawn(started)

    def _drawn(self, started: float) -> None:
        now = time.monotonic()
        self._next_draw = now + max(MIN_INTERVAL, COST_SHARE * (now - started))

    def _gap_before(self) -> bool:
        return self._gap and not rich_gaps(self.open)[0]


class _Block:
    """A finished block, after Rich's blank line where the whole answer would have one."""

    def __init__(self, source: str, gap: bool):
        self.source, self.gap = source, gap

    def __rich_console__(self, console, options):
        from rich.segment import Segment

        if self.gap:
            yield Segment.line()
        yield rich_markdown(self.source)


class _Tail:
    """The open block, cut to its last lines so the live region never outgrows the screen
    (a region taller than the screen cannot be redrawn in place)."""

    def __init__(self, source: str, gap: bool):
        self.source, self.gap = source, gap

    def __rich_console__(self, console, options):
        from rich.segment import Segment

        if not self.source.strip():
            return
        lines = console.render_lines(rich_markdown(self.source), options, pad=False)
        if self.gap:
            lines.insert(0, [])
        for line in lines[-max(1, console.size.height - 1):]:
            yield from line
            yield Segment.line()
