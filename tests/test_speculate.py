"""Prompt-lookup speculative decoding on the real model: at temperature 0 the text is byte for byte the
text of plain decoding made in the same test; counters are consistent; bad values are refused; Ctrl-C
still keeps the partial answer. (The proposer's logic is unit-tested in test_scheduler.py.)"""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

pytestmark = pytest.mark.model

CODE = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(12))
TASKS = [
    ("Rewrite this code with f3 renamed to g3. Output only the code.", CODE),
    ("Repeat this list exactly.", "\n".join(f"- item number {i}" for i in range(20))),
    ("Write a short poem about the sea.", ""),
]


def run(pulled, question: str, material: str, *args: str) -> dict:
    proc = pulled("run", "--temperature", "0", "-n", "48", "--json", *args, question, input=material)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("question,material", TASKS)
def test_lookup_gives_the_same_text_as_plain_decoding(pulled, question, material):
    plain = run(pulled, question, material)
    fast = run(pulled, question, material, "--lookup")
    assert fast["text"] == plain["text"]
    assert fast["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]
    assert 0 <= fast["usage"]["accepted_tokens"] <= fast["usage"]["drafted_tokens"]
    assert plain["usage"]["drafted_tokens"] == 0


def test_lookup_with_a_json_schema_stays_valid_and_the_same(pulled):
    schema = '{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}'
    args = ("--schema", schema, "-n", "40")
    plain = run(pulled, "Give a name as JSON. The name is Ada Ada Ada.", "", *args)
    fast = run(pulled, "Give a name as JSON. The name is Ada Ada Ada.", "", *args, "--lookup", "--ngram", "1")
    assert fast["text"] == plain["text"]
    if plain["finish_reason"] == "stop":
        assert isinstance(json.loads(fast["text"]), dict)


def test_copied_text_is_drafted_and_accepted(pulled):
    # A `const` schema makes the answer a copy of the prompt's text whatever the model would say, so the
    # n-grams must match: drafts are proposed, and the forced tokens accept them.
    text = " ".join(f"item number {i}" for i in range(20))
    schema = json.dumps({"type": "string", "const": text})
    out = run(pulled, "Repeat this list exactly.", text, "--lookup", "--schema", schema, "-n", "200")
    assert out["finish_reason"] == "stop" and json.loads(out["text"]) == text
    assert 0 < out["usage"]["accepted_tokens"] <= out["usage"]["drafted_tokens"]


@pytest.mark.parametrize("args", [["--lookup", "--draft-max", "0"], ["--lookup", "--draft-max", "1000"],
                                  ["--lookup", "--draft-min", "9", "--draft-max", "4"], ["--draft-max", "4"],
                                  ["--lookup", "--ngram", "0"]])
def test_bad_speculation_values_are_refused(pulled, args):
    proc = pulled("run", *args, "-n", "2", "hi")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stdout == ""


# -- a draft model ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_drafts(smollm2, tmp_path_factory):
    """Two runnable two-layer models with random weights: one with SmolLM2's vocabulary (it proposes nonsense,
    which must change nothing), one whose token 1000 reads differently (another vocabulary)."""
    from ggufs import write_tiny_llama

    d = tmp_path_factory.mktemp("drafts")
    same = write_tiny_llama(d / "tiny-same.gguf", smollm2.path)
    other = write_tiny_llama(d / "tiny-other.gguf", smollm2.path, renamed={1000: "zzzz-not-this"})
    return same, other


@pytest.mark.parametrize("question,material", TASKS)
def test_a_model_drafting_for_itself_gives_the_same_text(pulled, smollm2, question, material):
    plain = run(pulled, question, material)
    fast = run(pulled, question, material, "--draft", smollm2.path)
    assert fast["text"] == plain["text"]
    assert fast["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]
    assert 0 <= fast["usage"]["accepted_tokens"] <= fast["usage"]["drafted_tokens"]
    if plain["usage"]["completion_tokens"] > 8:  # greedy drafting for itself: its proposals are its own choices
        assert fast["usage"]["accepted_tokens"] > 0


def test_a_draft_model_that_proposes_nonsense_changes_nothing(pulled, tiny_drafts):
    same, _ = tiny_drafts
    question, material = TASKS[0]
    plain = run(pulled, question, material)
    fast = run(pulled, question, material, "--draft", same, "--draft-min", "1")
    assert fast["text"] == plain["text"]
    assert 0 <= fast["usage"]["accepted_tokens"] <= fast["usage"]["drafted_tokens"]


def test_draft_model_with_a_json_schema_stays_valid_and_the_same(pulled, smollm2):
    schema = '{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}'
    args = ("--schema", schema, "-n", "40")
    plain = run(pulled, "Give a name as JSON. The name is Ada.", "", *args)
    fast = run(pulled, "Give a name as JSON. The name is Ada.", "", *args, "--draft", smollm2.path)
    assert fast["text"] == plain["text"]


def test_a_draft_model_of_another_vocabulary_is_refused(pulled, tiny_drafts):
    _, other = tiny_drafts
    proc = pulled("run", "--draft", other, "-n", "2", "hi")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "another vocabulary" in lines[0] and "token 1000" in lines[0]


@pytest.mark.parametrize("args", [["--lookup", "--draft", "x"], ["--draft", "x", "--ngram", "2"]])
def test_draft_options_that_contradict_are_refused(pulled, args):
    proc = pulled("run", *args, "-n", "2", "hi")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stdout == ""


@pytest.mark.parametrize("how", ["lookup", "draft"])
def test_ctrl_c_mid_answer_with_speculation_keeps_the_partial_text(pulled, smollm2, how):
    spec = ["--lookup"] if how == "lookup" else ["--draft", smollm2.path]
    proc = pulled.popen("run", *spec, "--temperature", "0", "--raw", "-n", "4000",
                        "hello hello hello hello hello hello hello hello", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.read(1)  # the answer has started
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # the model finished before the signal landed: nothing to check
        pytest.skip("the answer ended before Ctrl-C")
    assert proc.returncode == 130
    assert (first + out) and b"Traceback" not in err and b"interrupted" in err
