"""The prompt cache: unit tests of the file format and policy, then `infer run --cache` on the real model.
Answers are only ever compared with another run made here, in the same test, at temperature 0."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from infer import prompt_cache as pc

WORDS = ("river mountain city report budget quarter growth revenue team product market north south "
         "winter summer engine signal window garden harbor").split()


def document(n_lines: int, seed: int) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(n_lines)) + "\n"


# -- the format and the policy, with fake states ----------------------------------------------------

def test_longest_prefix_wins_and_short_prefixes_are_never_saved(tmp_path):
    c = pc.PromptCache(tmp_path, {"k": 1}, "m")
    base = list(range(1, 200))
    assert c.store(base[:pc.MIN_TOKENS - 1], b"short") is None
    c.store(base[:80], b"eighty")
    c.store(base[:150], b"one-fifty")
    assert c.lookup(base) == (150, b"one-fifty")
    assert c.lookup(base[:120]) == (80, b"eighty")
    assert c.lookup(base[:150]) == (80, b"eighty")  # at least one token is left to read
    assert c.lookup([9] + base) is None


def test_another_key_never_matches(tmp_path):
    pc.PromptCache(tmp_path, {"model": "a"}, "a").store(list(range(100)), b"state")
    assert pc.PromptCache(tmp_path, {"model": "b"}, "b").lookup(list(range(101))) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_damaged_entry_is_deleted_not_used(tmp_path, damage):
    warnings = []
    c = pc.PromptCache(tmp_path, {"k": 1}, "m", warn=warnings.append)
    path = c.store(list(range(100)), os.urandom(5000))
    data = path.read_bytes()
    path.write_bytes({"truncate": data[:-100], "flip": data[:-10] + bytes(b ^ 0xFF for b in data[-10:]),
                      "garbage": b"not an entry"}[damage])
    assert c.lookup(list(range(101))) is None
    assert not path.exists()


def test_least_recently_used_entries_go_first(tmp_path):
    c = pc.PromptCache(tmp_path, {"k": 1}, "m", max_bytes=25_000)
    first = c.store(list(range(100)), b"a" * 10_000)
    second = c.store(list(range(1, 101)), b"b" * 10_000)
    os.utime(first, (1, 1))
    os.utime(second, (2, 2))
    assert c.lookup(list(range(101))) is not None  # using `first` makes it the most recent
    third = c.store(list(range(2, 102)), b"c" * 10_000)
    assert first.exists() and third.exists() and not second.exists()


def test_an_unwritable_directory_warns_once_and_stores_nothing(tmp_path):
    warnings = []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    c = pc.PromptCache(blocker / "cache", {"k": 1}, "m", warn=warnings.append)
    assert c.store(list(range(100)), b"x") is None and c.store(list(range(1, 101)), b"x") is None
    assert len(warnings) == 1 and "going on without it" in warnings[0]


def test_clear_and_sizes(tmp_path):
    pc.PromptCache(tmp_path, {"k": 1}, "one").store(list(range(100)), b"x" * 100)
    pc.PromptCache(tmp_path, {"k": 2}, "two").store(list(range(100)), b"y" * 100)
    assert {e.model for e in pc.list_entries(tmp_path)} == {"one", "two"}
    assert pc.clear(tmp_path, "one")[0] == 1
    assert [e.model for e in pc.list_entries(tmp_path)] == ["two"]
    assert pc.parse_size("4G") == 4 << 30 and pc.parse_size("512MiB") == 512 << 20 and pc.parse_size("1000") == 1000
    with pytest.raises(ValueError):
        pc.parse_size("lots")


# -- infer run --cache on the real model -------------------------------------------------------------

def run_json(pulled, question: str, doc: str, *args: str) -> dict:
    proc = pulled("run", "--temperature", "0", "-n", "12", "--json", *args, question, input=doc)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    data["stderr"] = proc.stderr
    return data


def cache_dir(pulled) -> Path:
    return Path(pulled.env["INFER_HOME"]) / "cache" / "prompts"


@pytest.mark.model
def test_a_second_question_reads_only_itself_and_answers_as_without_cache(pulled):
    doc = document(150, 1)  # about 2,000 tokens
    first = run_json(pulled, "Summarize this.", doc, "--cache")
    assert first["usage"]["cached_tokens"] == 0
    [entry] = pc.list_entries(cache_dir(pulled))
    assert entry.n_tokens > 1500
    second = run_json(pulled, "Which words repeat most?", doc, "--cache")
    plain = run_json(pulled, "Which words repeat most?", doc, "--no-cache")
    assert second["usage"]["cached_tokens"] == entry.n_tokens
    assert second["usage"]["prompt_tokens"] - second["usage"]["cached_tokens"] < 40  # the question and the template
    assert plain["usage"]["cached_tokens"] == 0
    assert second["text"] == plain["text"]
    listing = pulled("cache", "--json")
    assert [e["tokens"] for e in json.loads(listing.stdout)["entries"]] == [entry.n_tokens]


@pytest.mark.model
@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_a_damaged_entry_is_recomputed_and_the_answer_is_right(pulled, damage):
    doc = document(40, 2)
    reference = run_json(pulled, "Summarize this.", doc, "--no-cache")
    run_json(pulled, "Name a word.", doc, "--cache")
    [entry] = pc.list_entries(cache_dir(pulled))
    data = entry.path.read_bytes()
    entry.path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-64] + bytes(64))
    after = run_json(pulled, "Summarize this.", doc, "--cache")
    assert after["usage"]["cached_tokens"] == 0 and after["text"] == reference["text"]
    assert "damaged" in after["stderr"]
    again = run_json(pulled, "Summarize this.", doc, "--cache")  # the entry was written again, whole
    assert again["usage"]["cached_tokens"] > 0 and again["text"] == reference["text"]


@pytest.mark.model
def test_the_size_cap_evicts_the_oldest_entry(pulled):
    run_json(pulled, "Summarize.", document(30, 3), "--cache")
    [old] = pc.list_entries(cache_dir(pulled))
    run_json(pulled, "Summarize.", document(30, 4), "--cache", "--cache-size", str(int(old.size * 1.5)))
    [kept] = pc.list_entries(cache_dir(pulled))
    assert kept.path != old.path and not old.path.exists()
    cleared = pulled("cache", "clear", "smollm2", "--json")
    assert json.loads(cleared.stdout)["removed"] == 1 and not pc.list_entries(cache_dir(pulled))


@pytest.mark.model
def test_a_read_only_cache_directory_still_answers_with_one_warning(pulled):
    root = cache_dir(pulled)
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("not a directory")  # works as 'read-only' for root too, where chmod would not
    out = run_json(pulled, "Summarize.", document(30, 5), "--cache")
    assert out["text"] and out["stderr"].count("prompt cache:") == 1


@pytest.mark.model
def test_config_turns_the_cache_on_and_a_bad_size_is_refused(pulled):
    conf = Path(pulled.env["INFER_HOME"]) / "config" / "config.toml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text('cache = true\ncache_size = "1G"\n')
    run_json(pulled, "Summarize.", document(30, 6))
    assert len(pc.list_entries(cache_dir(pulled))) == 1
    bad = pulled("run", "--cache-size", "lots", "-n", "2", "hi")
    assert bad.returncode == 2 and "--cache-size" in bad.stderr
