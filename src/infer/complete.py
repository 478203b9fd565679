"""One-shot completion: resolve the model, build the prompt, stream the answer.

The CLI's `run` is a thin adapter over this module (and `chat` reuses its pieces)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from infer import resolve
from infer.engine import Done, LoadOptions, Model, Sampling, Text, json_grammar

__all__ = ["Job", "prepare", "grammar_for", "run", "Text", "Done"]


@dataclass
class Job:
    resolved: resolve.Resolved


def prepare(model: str | None, *, quant: str | None = None, reporter=None) -> Job:
    """Choose and resolve the model; pull it first if missing, as `ollama run` does (never when offline)."""
    from infer import pull

    text, origin = resolve.choose(model)
    resolved = resolve.resolve(text, quant=quant, origin=origin,
                               pull=lambda t, q: pull.pull(t, quant=q, auto=True, reporter=reporter))
    return Job(resolved=resolved)


def grammar_for(schema: dict | None, json_mode: bool) -> str | None:
    if schema is not None:
        return json_grammar(schema)
    return json_grammar(None) if json_mode else None


def load(job: Job, options: LoadOptions) -> Model:
    model = Model(job.resolved.path, options)
    from infer import store

    store.Manifest().touch(job.resolved.name)
    return model


def run(job: Job, options: LoadOptions, sampling: Sampling, prompt: str, *, system: str | None = None,
        raw: bool = False) -> Iterator[Text | Done]:
    model = load(job, options)
    try:
        if raw:
            tokens = model.tokenize(prompt)
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            _, tokens = model.format_chat(messages)
        yield from model.generate(tokens, sampling)
    finally:
        model.close()
