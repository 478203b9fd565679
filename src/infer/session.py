"""A chat session as data: history, the context-window policy, slash commands. No I/O here."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable

from infer.errors import ContextOverflow, UsageError

FORMAT_VERSION = 1


@dataclass
class Message:
    role: str  # user | assistant
    content: str
    interrupted: bool = False


@dataclass
class Conversation:
    model: str = ""
    system: str | None = None
    options: dict = field(default_factory=dict)  # sampling options set with /set
    messages: list[Message] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def chat_messages(self, messages: list[Message] | None = None) -> list[dict]:
        """The messages in the shape a chat template takes (system first, if any)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": m.role, "content": m.content} for m in (self.messages if messages is None else messages)]

    def turns(self) -> list[list[Message]]:
        """Messages grouped into turns: a user message and the answers that follow it."""
        groups: list[list[Message]] = []
        for m in self.messages:
            if m.role == "user" or not groups:
                groups.append([m])
            else:
                groups[-1].append(m)
        return groups

    def to_json(self) -> dict:
        return {"version": FORMAT_VERSION, "model": self.model, "system": self.system, "options": self.options,
                "created": self.created, "messages": [asdict(m) for m in self.messages]}

    @staticmethod
    def from_json(data) -> "Conversation":
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise UsageError("not a saved conversation: expected an object with a 'messages' list")
        messages = []
        for i, m in enumerate(data["messages"]):
            if not (isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)):
                raise UsageError(f"not a saved conversation: message {i + 1} needs a role (user/assistant) and content")
            messages.append(Message(m["role"], m["content"], bool(m.get("interrupted", False))))
        options = data.get("options") or {}
        if not isinstance(options, dict):
            raise UsageError("not a saved conversation: 'options' must be an object")
        for key, value in options.items():
            parse_setting(key, str(value))  # reject unknown or invalid options early
        return Conversation(model=str(data.get("model") or ""), system=data.get("system") or None,
                            options=options, messages=messages, created=str(data.get("created") or ""))


def fit_history(conv: Conversation, count: Callable[[list[dict]], int], n_ctx: int, reserve: int) -> tuple[list[Message], int]:
    """The newest messages that fit in `n_ctx - reserve` tokens, and how many turns were dropped.

    The oldest whole turns go first; the system prompt is always kept. A last message that cannot
    fit even alone is refused (ContextOverflow), never cut."""
    budget = n_ctx - reserve
    turns = conv.turns()
    dropped = 0
    while turns:
        kept = [m for t in turns for m in t]
        n = count(conv.chat_messages(kept))
        if n <= budget:
            return kept, dropped
        if len(turns) == 1:
            raise ContextOverflow(
                f"this message needs {n} tokens with the system prompt, but the context holds {n_ctx} "
                f"with {reserve} kept for the answer", hint="send a shorter message, or restart with a larger --ctx-size")
        turns = turns[1:]
        dropped += 1
    return [], dropped


# -- slash commands ----------------------------------------------------------------------------

COMMANDS = {
    "/help": "list the commands",
    "/system": "/system TEXT: set the system prompt (no text: show it)",
    "/set": "/set OPTION VALUE: temperature, top_p, top_k, min_p, repeat_penalty, seed, max_tokens",
    "/clear": "start a new conversation with the same model",
    "/save": "/save FILE: save the conversation as JSON (with model and options)",
    "/load": "/load FILE: load a saved conversation",
    "/model": "/model NAME: switch model, keep the history",
    "/stats": "tokens used of the context, last time to first token and speed",
    "/retry": "answer the last message again",
    "/undo": "remove the last question and its answer",
    "/bye": "leave (Ctrl-D works too)",
}
ALIASES = {"/exit": "/bye", "/quit": "/bye", "/?": "/help"}


@dataclass(frozen=True)
class Command:
    name: str
    arg: str


def parse_command(line: str) -> Command:
    """Parse '/name arg...'; an unknown name is an error that suggests the nearest one."""
    word, _, arg = line.strip().partition(" ")
    name = ALIASES.get(word.lower(), word.lower())
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}?" if close else "/help lists the commands"
        raise UsageError(f"unknown command {word}", hint=hint)
    return Command(name, arg.strip())


_SETTINGS: dict[str, tuple[type, Callable[[float], bool], str]] = {
    "temperature": (float, lambda v: v >= 0, "a number >= 0"),
    "top_p": (float, lambda v: 0 <= v <= 1, "a number from 0 to 1"),
    "top_k": (int, lambda v: v >= 0, "a whole number >= 0"),
    "min_p": (float, lambda v: 0 <= v <= 1, "a number from 0 to 1"),
    "repeat_penalty": (float, lambda v: v > 0, "a number > 0"),
    "seed": (int, lambda v: v >= 0, "a whole number >= 0"),
    "max_tokens": (int, lambda v: v >= 1, "a whole number >= 1"),
}


def parse_setting(name: str, value: str) -> tuple[str, float | int]:
    key = name.strip().lower().replace("-", "_")
    if key == "temp":
        key = "temperature"
    if key not in _SETTINGS:
        close = difflib.get_close_matches(key, list(_SETTINGS), n=1, cutoff=0.5)
        raise UsageError(f"unknown option {name!r}", hint=f"did you mean {close[0]}?" if close else
                         "options: " + ", ".join(_SETTINGS))
    kind, ok, what = _SETTINGS[key]
    try:
        parsed = kind(value)
    except ValueError:
        raise UsageError(f"{key} must be {what}, not {value!r}") from None
    if not ok(parsed):
        raise UsageError(f"{key} must be {what}, not {value!r}")
    return key, parsed


def parse_set(arg: str) -> tuple[str, float | int]:
    parts = arg.split()
    if len(parts) != 2:
        raise UsageError("usage: /set OPTION VALUE", hint="e.g. /set temperature 0.2")
    return parse_setting(parts[0], parts[1])
