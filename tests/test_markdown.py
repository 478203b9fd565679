"""Incremental Markdown (cli/markdown.py): the block splitter, and the streamed screen against the
whole answer rendered at once, through a small terminal emulator. No model: fixed texts."""

from __future__ import annotations

import io
import re
import threading
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.markdown import Markdown

from infer.cli import chat, markdown
from infer.cli import console as console_module
from infer.cli.markdown import LiveMarkdown, split, split_all
from infer.engine.events import Done, Text

ANSWER = """\
# Setting up a Python project

Here is a short guide. It covers **virtual environments**, `pip`, [links](https://example.com) and tests.

## Steps

1. Create a virtual environment:

   ```sh
   python3 -m venv .venv
   ```

2. Install the package in editable mode.

3. Run the tests.

Some notes:

- first point
- second point with *emphasis*
  continued on a lazy line
- third, with a nested list:
  - inner

```python
def fib(n):
    a, b = 0, 1

    for _ in range(n):
        a, b = b, a + b


    return a
```

| Tool | Purpose | Speed |
|------|---------|------:|
| pip | installs packages | ok |
| uv | installs packages, ~~slowly~~ fast | fast |

> A quote that spans
> two lines.

---
Text right before a fence:
```js
console.log("hi")
```
Setext heading
--------------
4. a list starting at four
5. and five

![an image](https://example.com/x.png) after a list

    indented code

    more of it
### Last words
Final paragraph that ends mid"""


# -- the splitter ----------------------------------------------------------------------------

def stream_split(text: str, step: int) -> tuple[list[str], str]:
    done, rest = [], ""
    for k in range(0, len(text), step):
        finished, rest = split(rest + text[k:k + step])
        done += finished
    return done, rest


def test_a_paragraph_ends_at_a_blank_line_and_an_unfinished_line_is_never_judged():
    assert split("Hello there") == ([], "Hello there")
    assert split("Hello\nthere\n") == ([], "Hello\nthere\n")
    assert split("Hello\n\n") == (["Hello\n\n"], "")
    assert split("Hello\n\nNext para") == (["Hello\n\n"], "Next para")
    assert split("Hello\n# Head") == ([], "Hello\n# Head")  # "# Head" may still become anything
    assert split("Hello\n# Head\n") == (["Hello\n", "# Head\n"], "")


def test_a_code_fence_with_blank_lines_stays_open_until_closed():
    text = "```python\nx = 1\n\n\ny = 2\n"
    assert split(text) == ([], text)
    assert split(text + "``") == ([], text + "``")
    assert split(text + "```\n") == ([text + "```\n"], "")
    assert split(text + "~~~\n") == ([], text + "~~~\n")  # another fence character does not close it
    assert split("````\na\n```\n") == ([], "````\na\n```\n")  # nor a shorter fence
    assert split("````\na\n`````\n")[0] == ["````\na\n`````\n"]


def test_a_list_with_blank_lines_between_items_is_one_block_until_something_else_begins():
    text = "1. one\n\n2. two\n\n   still two\n\n3. three\n\n"
    assert split(text) == ([], text)
    assert split(text + "After") == ([], text + "After")
    assert split(text + "After\n") == ([text], "After\n")


def test_a_table_arriving_row_by_row_is_one_block():
    rows = ["| a | b |\n", "|---|---|\n", "| 1 | 2 |\n", "| 3 | 4 |\n"]
    text = ""
    for row in rows:
        text += row
        assert split(text) == ([], text)
    assert split(text + "\n") == ([text + "\n"], "")
    assert split("Intro:\n" + text) == (["Intro:\n"], text)  # the table interrupts the paragraph


def test_headings_and_rules_end_with_their_line_and_setext_waits_for_its_underline():
    assert split("# Title\n") == (["# Title\n"], "")
    assert split("---\n") == (["---\n"], "")
    assert split("Title\n") == ([], "Title\n")
    assert split("Title\n-----\n") == (["Title\n-----\n"], "")


def test_blank_lines_do_not_end_indented_code():
    assert split("    a\n\n    b\n\n") == ([], "    a\n\n    b\n\n")
    assert split("    a\n\n    b\n\nText\n") == (["    a\n\n    b\n\n"], "Text\n")


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(ANSWER) - 1), max_size=80, unique=True))
def test_streamed_blocks_lose_nothing_and_match_the_whole_text(cuts):
    bounds = [0, *sorted(cuts), len(ANSWER)]
    done, rest = [], ""
    for a, b in pairwise(bounds):
        finished, rest = split(rest + ANSWER[a:b])
        done += finished
    assert "".join(done) + rest == ANSWER  # every character once, in order
    streamed = [s.strip() for s in done + split_all(rest)]
    assert streamed == [s.strip() for s in split_all(ANSWER)]


# -- the screen --------------------------------------------------------------------------------

CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")
LINK = re.compile(r"\x1b\]8;[^;\x1b]*;([^\x1b]*)\x1b\\")  # OSC 8 hyperlink; its id differs per render


def screen(raw: str, width: int, height: int) -> list[list[tuple[str, str]]]:
    """What a terminal of this size shows after `raw` (scrollback included): (character, style) cells.
    Only the sequences Rich's Live and styles use are understood; any other fails the test."""
    rows: list[list[tuple[str, str]]] = [[]]
    r = c = i = 0
    sgr = link = ""

    def down() -> None:
        nonlocal r, c
        r, c = r + 1, 0
        if r == len(rows):
            rows.append([])

    while i < len(raw):
        m = LINK.match(raw, i)
        if m:
            link, i = m.group(1), m.end()
            continue
        m = CSI.match(raw, i)
        if m:
            param, cmd = m.groups()
            i = m.end()
            if cmd == "m":
                sgr = "" if param in ("", "0") else f"{sgr};{param}"
            elif cmd == "A":  # the cursor cannot leave the screen for the scrollback
                r = max(r - int(param or 1), len(rows) - height, 0)
            elif cmd == "K" and param == "2":
                rows[r] = []
            elif cmd in "hl" and param == "?25":
                pass
            else:
                raise AssertionError(f"unexpected escape sequence {m.group()!r}")
            continue
        ch, i = raw[i], i + 1
        if ch == "\r":
            c = 0
        elif ch == "\n":
            down()
        else:
            if c >= width:
                down()
            row = rows[r]
            row.extend([(" ", " ")] * (c + 1 - len(row)))
            row[c] = (ch, f"{sgr} {link}")
            c += 1
    for row in rows:
        while row and row[-1][0] == " ":
            row.pop()
    while rows and not rows[-1]:
        rows.pop()
    return rows


def terminal(width: int, height: int = 30) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=width, height=height, color_system="truecolor",
                   highlight=False), buf


def whole(text: str, width: int, height: int = 30) -> list:
    """Today's result: the finished answer rendered at once."""
    con, buf = terminal(width, height)
    con.print(Markdown(text))
    return screen(buf.getvalue(), width, height)


def streamed(text: str, width: int, step: int = 4, height: int = 30) -> tuple[list, LiveMarkdown]:
    con, buf = terminal(width, height)
    with LiveMarkdown(con) as live:
        for k in range(0, len(text), step):
            live.feed(text[k:k + step])
    return screen(buf.getvalue(), width, height), live


def plain(rows: list) -> str:
    return "\n".join("".join(ch for ch, _ in row) for row in rows)


@pytest.fixture
def every_token_drawn(monkeypatch):
    """Redraw the live block on every token, not at most 12 times a second: every path, every time."""
    monkeypatch.setattr(markdown, "MIN_INTERVAL", 0.0)
    monkeypatch.setattr(markdown, "COST_SHARE", 0)


@pytest.mark.parametrize("width", [60, 100])
@pytest.mark.parametrize("step", [1, 4, 17])
def test_token_by_token_looks_like_the_whole_answer_and_prints_each_block_once(width, step):
    got, live = streamed(ANSWER, width, step)
    want = whole(ANSWER, width)
    assert plain(got) == plain(want)
    assert got == want  # styles too: highlighted code, headings, table
    assert [s.strip() for s in live.printed] == [s.strip() for s in split_all(ANSWER)]
    assert "".join(live.printed) == ANSWER and live.open == ""


@pytest.mark.parametrize("height", [8, 30])
def test_redrawing_the_live_block_every_token_leaves_the_same_screen(every_token_drawn, height):
    long_code = "Code:\n\n```python\n" + "".join(f"x{i} = {i}  # line {i}\n\n" for i in range(25)) + "```\n\nDone.\n"
    for text in (ANSWER, long_code):
        got, live = streamed(text, 70, 3, height=height)
        assert got == whole(text, 70, height)
        assert [s.strip() for s in live.printed] == [s.strip() for s in split_all(text)]


@pytest.mark.parametrize("end", ["```python\ndef f(x):\n\n    return", "| a | b |\n|---|---|\n| 1 |", "1. one\n\n2. tw",
                                 "Para one.\n\nPara t"])
def test_an_answer_that_ends_mid_block_is_shown_whole(every_token_drawn, end):
    text = "Intro.\n\n" + end
    got, live = streamed(text, 80, 2)
    assert got == whole(text, 80)
    assert "".join(live.printed) == text


def events(text: str, stop_after: int | None = None, step: int = 3):
    for n, k in enumerate(range(0, len(text), step)):
        if n == stop_after:
            raise KeyboardInterrupt
        yield Text(text[k:k + step])
    yield Done(finish_reason="stop", usage=None, timings=None)


@pytest.fixture
def view(monkeypatch):
    con, buf = terminal(80)
    monkeypatch.setattr(console_module, "out", lambda: con)
    v = chat.View(plain=False, quiet=True)
    v.markdown = True  # as on a terminal with colour
    return v, buf


def test_view_streams_every_event_through_and_renders_the_answer_with_no_refresh_thread(view):
    v, buf = view
    before, seen = threading.active_count(), []
    for event in v.stream(events(ANSWER)):
        seen.append(event)
        assert threading.active_count() == before
    assert "".join(e.text for e in seen if isinstance(e, Text)) == ANSWER and isinstance(seen[-1], Done)
    assert screen(buf.getvalue(), 80, 30) == whole(ANSWER, 80)


@pytest.mark.parametrize("at", [0, 1, 40, 150])
def test_ctrl_c_mid_answer_keeps_the_partial_answer_on_screen_once(view, every_token_drawn, at):
    v, buf = view
    got = []
    with pytest.raises(KeyboardInterrupt):
        for event in v.stream(events(ANSWER, stop_after=at)):
            got.append(event.text)
    assert screen(buf.getvalue(), 80, 30) == whole("".join(got), 80)


@pytest.mark.parametrize("at", [1, 40, 150])
def test_a_closed_stream_keeps_the_partial_answer_on_screen_once(view, every_token_drawn, at):
    v, buf = view
    stream, got = v.stream(events(ANSWER)), []
    for event in stream:
        got.append(event.text)
        if len(got) == at:
            break
    stream.close()  # GeneratorExit inside, as when the caller stops a turn
    assert screen(buf.getvalue(), 80, 30) == whole("".join(got), 80)
