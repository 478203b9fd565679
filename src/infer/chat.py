"""A chat with one loaded model: each turn fits the history to the context, formats it with the
model's template and streams the answer. The model stays loaded; the whole history is resent each
turn and the engine reuses the KV cache for the common prefix, so time to first token does not
grow with the conversation."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from infer import settings, store
from infer.engine import Done, LoadOptions, Model, Sampling, Text
from infer.errors import InferError, UsageError
from infer.session import Conversation, Message, fit_history

DEFAULT_CHAT_CTX = 4096
ANSWER_RESERVE = 512


@dataclass
class TurnInfo:
    dropped: int  # oldest turns left out to fit the context
    done: Done | None = None


class Chat:
    def __init__(self, model: Model, model_name: str, conversation: Conversation, base: Sampling):
        self.model = model
        self.model_name = model_name
        self.conv = conversation
        self.base = base
        self.last: Done | None = None
        self.path = chats_dir() / f"{conversation.created.replace(':', '-')}.json"

    @staticmethod
    def load_options(options: LoadOptions, n_ctx_train: int) -> LoadOptions:
        """A chat keeps one context for the whole conversation: the user's size, else up to 4096."""
        if options.n_ctx:
            return options
        return replace(options, n_ctx=min(DEFAULT_CHAT_CTX, n_ctx_train) if n_ctx_train > 0 else DEFAULT_CHAT_CTX)

    @property
    def n_ctx(self) -> int:
        return self.model.options.n_ctx or DEFAULT_CHAT_CTX

    def sampling(self) -> Sampling:
        return replace(self.base, **self.conv.options)

    def reserve(self) -> int:
        return min(self.sampling().max_tokens or ANSWER_RESERVE, self.n_ctx // 2)

    def count(self, messages: list[dict]) -> int:
        return len(self.model.format_chat(messages)[1])

    def context_used(self) -> int:
        return self.count(self.conv.chat_messages()) if self.conv.messages or self.conv.system else 0

    def ask(self, text: str) -> Iterator[Text | Done | TurnInfo]:
        self.conv.messages.append(Message("user", text))
        try:
            yield from self._answer()
        except InferError:
            if self.conv.messages and self.conv.messages[-1].role == "user":
                self.conv.messages.pop()  # refused before any answer: the message is not kept
            raise

    def retry(self) -> Iterator[Text | Done | TurnInfo]:
        if not self.conv.messages:
            raise UsageError("nothing to retry yet")
        if self.conv.messages[-1].role == "assistant":
            self.conv.messages.pop()
        yield from self._answer()

    def undo(self) -> int:
        """Remove the last question and its answers; return how many messages went."""
        turns = self.conv.turns()
        if not turns:
            raise UsageError("nothing to undo")
        del self.conv.messages[-len(turns[-1]):]
        return len(turns[-1])

    def _answer(self) -> Iterator[Text | Done | TurnInfo]:
        chunks: list[str] = []
        done = None
        try:
            kept, dropped = fit_history(self.conv, self.count, self.n_ctx, self.reserve())
            yield TurnInfo(dropped=dropped)
            _, tokens = self.model.format_chat(self.conv.chat_messages(kept))
            sampling = self.sampling()
            sampling = replace(sampling, max_tokens=min(sampling.max_tokens or self.n_ctx, self.n_ctx - len(tokens)))
            for event in self.model.generate(tokens, sampling):
                if isinstance(event, Text):
                    chunks.append(event.text)
                else:
                    done = event
                yield event
        except (KeyboardInterrupt, GeneratorExit):
            # Ctrl-C, or the view that consumes this closed it: the partial answer (maybe empty) stays in the
            # history, marked, so the conversation keeps its user/assistant turns.
            self._keep("".join(chunks), interrupted=True)
            raise
        self.last = done
        self._keep("".join(chunks), interrupted=done is not None and done.finish_reason == "cancelled")

    def _keep(self, text: str, interrupted: bool) -> None:
        self.conv.messages.append(Message("assistant", text, interrupted=interrupted))
        self.save()

    def save(self, path: Path | None = None) -> Path:
        """Write the conversation atomically: a crash leaves the old file or the new one, never half."""
        target = path or self.path
        self.conv.model = self.model_name
        store.atomic_write_text(target, json.dumps(self.conv.to_json(), indent=2, ensure_ascii=False) + "\n")
        return target


def load_model(resolved, options: LoadOptions, notice=lambda message: None) -> Model:
    """Load a model for chatting: one context for the whole conversation, sized before it exists."""
    from infer import complete

    model = complete.load(resolved, options, notice)
    model.options = Chat.load_options(model.options, model.n_ctx_train)
    return model


def chats_dir() -> Path:
    return settings.data_dir() / "chats"


def latest_chat() -> Path | None:
    files = sorted(chats_dir().glob("*.json"), key=lambda p: p.stat().st_mtime) if chats_dir().is_dir() else []
    return files[-1] if files else None


def read_conversation(path: Path) -> Conversation:
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not JSON: {e.msg} at line {e.lineno}") from e
    return Conversation.from_json(data)
