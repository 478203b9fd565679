"""Small pure pieces: stop matching, prompt joining, schema checks."""

from __future__ import annotations

import pytest

from infer.cli.options import _check_schema
from infer.complete import join_prompt
from infer.engine import StopMatcher
from infer.errors import UsageError


def feed_all(stops, pieces):
    m = StopMatcher(stops)
    out, hit = "", False
    for p in pieces:
        text, hit = m.feed(p)
        out += text
        if hit:
            return out, True
    return out + m.flush(), False


def test_stop_split_across_pieces():
    assert feed_all(["END"], ["hello E", "N", "D more"]) == ("hello ", True)
    assert feed_all(["END"], ["hello E", "nd"]) == ("hello End", False)
    assert feed_all([], ["a", "b"]) == ("ab", False)
    assert feed_all(["\n\n", "###"], ["a\n", "\nb"]) == ("a", True)


def test_prompt_joining():
    assert join_prompt("summarize", "text here\n") == "text here\n\nsummarize"
    assert join_prompt("a b", "") == "a b"
    assert join_prompt("", "only stdin\n") == "only stdin"
    assert join_prompt("", "  \n") == ""


@pytest.mark.parametrize("schema", [{"type": "nope"}, {"properties": []}, {"required": "x"},
                                    {"properties": {"a": {"type": "strin"}}}, {"items": {"type": 3}}])
def test_schema_mistakes(schema):
    with pytest.raises(UsageError):
        _check_schema(schema)
