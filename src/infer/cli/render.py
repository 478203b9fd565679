"""Turning engine events and results into text for people (stderr) or scripts (stdout JSON)."""

from __future__ import annotations

import json
import sys

from infer.cli import console
from infer.units import human_bytes  # noqa: F401 - re-exported for the views


def stats_line(done, where: str = "") -> str:
    t, u = done.timings, done.usage
    parts = [
        f"load {t.load_s:.2f} s",
        f"ttft {t.ttft_s:.3f} s",
        f"prompt {t.prompt_tps:.1f} tok/s ({u.prompt_tokens - u.cached_tokens} tok"
        + (f", {u.cached_tokens} cached" if u.cached_tokens else "") + ")",
        f"gen {t.gen_tps:.1f} tok/s ({u.completion_tokens} tok)",
    ]
    if u.drafted:
        parts.append(f"draft {u.accepted}/{u.drafted} accepted ({u.accepted / u.drafted:.0%})")
    if where:
        parts.append(where)
    return " · ".join(parts)


def result_json(model: str, text: str, done) -> dict:
    t, u = done.timings, done.usage
    return {
        "model": model,
        "text": text,
        "finish_reason": done.finish_reason,
        "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                  "cached_tokens": u.cached_tokens, "drafted_tokens": u.drafted, "accepted_tokens": u.accepted},
        "timings": {"load_s": round(t.load_s, 4), "ttft_s": round(t.ttft_s, 4),
                    "prompt_tps": round(t.prompt_tps, 2), "gen_tps": round(t.gen_tps, 2)},
    }


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2 if console.is_tty(sys.stdout) else None) + "\n")
    sys.stdout.flush()
