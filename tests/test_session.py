"""Chat session logic without a model: history, the overflow policy, slash commands, the file format."""

from __future__ import annotations

import pytest

from infer.errors import ContextOverflow, UsageError
from infer.session import Conversation, Message, fit_history, parse_command, parse_set


def conv_with(n_turns: int, system: str | None = "sys") -> Conversation:
    c = Conversation(system=system)
    for i in range(n_turns):
        c.messages += [Message("user", f"q{i} " * 10), Message("assistant", f"a{i} " * 10)]
    return c


def words(messages: list[dict]) -> int:  # a stand-in tokenizer: one token per word
    return sum(len(m["content"].split()) for m in messages)


def test_everything_fits():
    kept, dropped = fit_history(conv_with(3), words, n_ctx=100, reserve=10)
    assert dropped == 0 and len(kept) == 6


def test_oldest_turns_dropped_system_kept():
    c = conv_with(5)
    kept, dropped = fit_history(c, words, n_ctx=50, reserve=5)
    assert dropped == 3 and kept == c.messages[6:]
    assert c.chat_messages(kept)[0] == {"role": "system", "content": "sys"}


def test_a_single_message_too_big_is_refused():
    c = Conversation(messages=[Message("user", "word " * 500)])
    with pytest.raises(ContextOverflow) as e:
        fit_history(c, words, n_ctx=100, reserve=20)
    assert "500 tokens" in e.value.message


def test_commands_and_suggestions():
    assert parse_command("/set temperature 0.2").arg == "temperature 0.2"
    assert parse_command("/EXIT").name == "/bye"
    with pytest.raises(UsageError) as e:
        parse_command("/sytem be brief")
    assert "/system" in e.value.hint


@pytest.mark.parametrize("arg, expected", [("temperature 0.2", ("temperature", 0.2)), ("top-k 5", ("top_k", 5)),
                                           ("temp 0", ("temperature", 0.0)), ("max_tokens 9", ("max_tokens", 9))])
def test_set_values(arg, expected):
    assert parse_set(arg) == expected


@pytest.mark.parametrize("arg", ["temperature -1", "top_p 2", "top_k 1.5", "seed x", "colour red", "temperature", ""])
def test_set_rejects_bad_values(arg):
    with pytest.raises(UsageError):
        parse_set(arg)


def test_conversation_json_round_trip_and_validation():
    c = conv_with(2)
    c.options = {"temperature": 0.3}
    c.messages[-1].interrupted = True
    again = Conversation.from_json(c.to_json())
    assert again == c
    for bad in ([], {"messages": [{"role": "wizard", "content": "x"}]}, {"messages": "no"},
                {"messages": [], "options": {"temperature": -5}}):
        with pytest.raises(UsageError):
            Conversation.from_json(bad)


def test_markdown_view_renders_code_blocks(monkeypatch):
    """The live view turns Markdown into terminal output (a rendering check with a fixed event stream)."""
    import io

    from rich.console import Console

    from infer.cli import chat as cli_chat, console
    from infer.engine import Text

    buf = io.StringIO()
    monkeypatch.setattr(console, "out", lambda: Console(file=buf, force_terminal=True, width=60, color_system="standard"))
    view = cli_chat.View(plain=False, quiet=True)
    view.markdown = True
    events = [Text("# Title\n\nSome **bold** text.\n\n```python\nprint('hi')\n"), Text("```\n")]
    assert list(view.stream(iter(events))) == events
    out = buf.getvalue()
    assert "print" in out and "Title" in out
    assert "```" not in out and "**" not in out and "\x1b[" in out
