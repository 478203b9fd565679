"""Speculative decoding by prompt lookup: propose the tokens that followed the last time the text's
most recent n-gram appeared (in the prompt or the answer so far); the scheduler verifies a proposal in
the same decode as the sequence's next token and keeps the tokens the model would have produced itself.

Sampling never changes: every position is sampled with the sequence's own sampler, in order, exactly as
without speculation (the same calls, the same random draws); a draft token is kept only when that sample
equals it. So at temperature 0 the text is the one plain decoding gives, and at any temperature the
distribution is the model's.

With a draft model (`--draft MODEL`, same vocabulary) the proposal is the draft model's own greedy
continuation instead: it keeps one sequence per slot in a context of its own (model.DraftContext), brought
up to date with the accepted tokens before each proposal; the verification is the same.

The proposer adapts: the draft grows after a full acceptance and shrinks to what was accepted after a
miss; after several misses in a row it pauses for a while. The scheduler also stops drafting when
enough sequences decode together that the batch already keeps the hardware busy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Speculation:
    lookup: bool = False
    draft: str | None = None  # a draft model's GGUF path (Model.attach_draft loads it): proposals from it
    draft_max: int = 8  # most tokens proposed in one step
    draft_min: int = 2  # fewer than this is not worth a wider decode
    ngram: int = 3  # shortest n-gram that counts as a match (up to ngram + 1 is tried first)
    max_batch: int = 2  # no drafts while more sequences than this are generating


PAUSE_AFTER_MISSES = 4  # misses in a row before pausing
PAUSE_TOKENS = 16  # how many tokens the pause lasts


class Proposer:
    """One sequence's proposer: its tokens so far, the adaptive draft length, the counters."""

    def __init__(self, tokens: list[int], spec: Speculation):
        self.spec = spec
        self.tokens: list[int] = []
        self.n_draft = spec.draft_max
        self.misses = 0
        self.paused = 0
        self.drafted = 0
        self.accepted = 0
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        self.tokens.extend(tokens)

    def propose(self) -> list[int]:
        raise NotImplementedError

    def result(self, drafted: int, accepted: int) -> None:
        """Adapt to how much of a proposal the model kept."""
        self.drafted += drafted
        self.accepted += accepted
        if accepted == drafted:
            self.n_draft = min(self.spec.draft_max, self.n_draft + 2)
            self.misses = 0
        else:
            self.n_draft = max(self.spec.draft_min, accepted + 1)
            self.misses = self.misses + 1 if accepted == 0 else 0
            if self.misses >= PAUSE_AFTER_MISSES:
                self.paused, self.misses = PAUSE_TOKENS, 0


class Lookup(Proposer):
    """The n-gram index of one sequence's tokens, and the place the text is being copied from.

    A rewrite copies long spans of its input: once a proposal from position p was kept, the next one continues
    from where that copy left off (as long as the text still follows it) instead of searching again, since the
    latest occurrence of a short n-gram is often in a similar line elsewhere. The search tries the longest
    n-grams first (up to ngram + 3 tokens), for the same reason."""

    def __init__(self, tokens: list[int], spec: Speculation):
        self.sizes = range(spec.ngram + 3, spec.ngram - 1, -1)
        self.index: dict[int, dict[tuple, int]] = {n: {} for n in self.sizes}
        self.source: int | None = None  # where the last proposal was copied from
        self.cursor: int | None = None  # where the copy goes on, if the text keeps following it
        super().__init__(tokens, spec)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self.tokens.append(token)
            i = len(self.tokens) - 1  # the position of the new token: each n-gram before it now has a successor
            for n in self.sizes:
                if i >= n:
                    self.index[n][tuple(self.tokens[i - n:i])] = i

    def propose(self) -> list[int]:
        if self.paused > 0:
            self.paused -= 1
            return []
        c, tokens = self.cursor, self.tokens
        self.cursor = None  # good for the proposal right after a result() only
        if c is not None and 0 < c < len(tokens) - 1 and tokens[c - 1] == tokens[-1]:
            draft = tokens[c:c + self.n_draft]
            if len(draft) >= self.spec.draft_min:
                self.source = c
                return draft
        for n in self.sizes:
            if len(tokens) < n:
                continue
            at = self.index[n].get(tuple(tokens[-n:]))
            if at is not None and at < len(tokens):
                draft = tokens[at:at + self.n_draft]
                if len(draft) >= self.spec.draft_min:
                    self.source = at
                    return draft
        self.source = None
        return []

    def result(self, drafted: int, accepted: int) -> None:
        super().result(drafted, accepted)
        # the kept tokens came from source..source+accepted-1; the token after them continues the copy if it
        # equals the source's next one (checked at the next proposal)
        self.cursor = self.source + accepted + 1 if self.source is not None else None


class Drafter(Proposer):
    """Proposals from a draft model: its greedy continuation of the sequence's tokens (model.DraftContext holds
    its KV, one sequence per slot)."""

    def __init__(self, tokens: list[int], spec: Speculation, context, slot: int, n_vocab: int):
        self.context, self.slot, self.n_vocab = context, slot, n_vocab
        super().__init__(tokens, spec)

    def propose(self) -> list[int]:
        from infer.errors import InferError

        if self.paused > 0:
            self.paused -= 1
            return []
        try:
            draft = self.context.propose(self.slot, self.tokens, self.n_draft)
        except InferError:  # the draft model failed (its context is full, say): this sequence goes on without it
            self.paused = 1 << 62
            return []
        for i, token in enumerate(draft):  # vocabularies may differ by a few ids at the end: never propose those
            if token >= self.n_vocab:
                draft = draft[:i]
                break
        return draft if len(draft) >= self.spec.draft_min else []
