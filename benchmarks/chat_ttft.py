"""Chat time to first token as the conversation grows: with infer's KV-prefix reuse vs re-evaluating all.

    python benchmarks/chat_ttft.py [--turns 12]

Each turn resends the whole history (as `infer chat` does). With prefix reuse only the new user
message is evaluated, so TTFT should stay flat; the baseline clears the cache before each turn.
Writes benchmarks/results/chat_ttft.json.
"""

from __future__ import annotations

import argparse

from common import save, summary, table, test_model


def run(turns: int, reuse: bool) -> list[tuple[int, float]]:
    from infer.chat import Chat
    from infer.engine import Done, LoadOptions, Model, Sampling
    from infer.session import Conversation

    model = Model(test_model(), LoadOptions(n_ctx=4096))
    chat = Chat(model, "smollm2", Conversation(), Sampling(temperature=0, max_tokens=48, seed=1))
    chat.save = lambda path=None: None  # measure generation, not disk
    out = []
    for i in range(turns):
        if not reuse and model._ctx is not None:
            model._ctx.tokens.clear()  # forget the cache: the whole history is evaluated again
        done = next(e for e in chat.ask(f"Tell me one short fact about the number {i + 1}.") if isinstance(e, Done))
        out.append((done.usage.prompt_tokens, done.timings.ttft_s))
    model.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=12)
    args = ap.parse_args()
    reuse, fresh = run(args.turns, True), run(args.turns, False)
    rows = [(i + 1, r[0], f"{r[1] * 1000:.0f}", f"{f[1] * 1000:.0f}") for i, (r, f) in enumerate(zip(reuse, fresh, strict=True))]
    print(table(rows, ("turn", "history tokens", "ttft ms (infer)", "ttft ms (no reuse)")))
    first, last = summary([t for _, t in reuse[1:3]])["median"], summary([t for _, t in reuse[-2:]])["median"]
    print(f"\ninfer: ttft turns 2-3 {first * 1000:.0f} ms -> last 2 turns {last * 1000:.0f} ms "
          f"({last / first:.2f}x) while the history grew {reuse[-1][0] / reuse[1][0]:.1f}x")
    print("saved", save("chat_ttft", {"reuse": reuse, "no_reuse": fresh}))


if __name__ == "__main__":
    main()
