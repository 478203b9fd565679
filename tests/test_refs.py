"""ModelRef: examples of the grammar and property tests (pure logic, no model, no network)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from infer.errors import UsageError
from infer.refs import ModelRef, parse


@pytest.mark.parametrize("text, expected", [
    ("smollm2", ModelRef("alias", "smollm2")),
    ("Qwen2.5:0.5B", ModelRef("alias", "qwen2.5:0.5b")),
    ("owner/repo", ModelRef("hub", "owner/repo")),
    ("owner/repo:q4_k_m", ModelRef("hub", "owner/repo", quant="Q4_K_M")),
    ("hf.co/owner/repo:Q8_0", ModelRef("hub", "owner/repo", quant="Q8_0")),
    ("https://huggingface.co/owner/repo", ModelRef("hub", "owner/repo")),
    ("owner/repo/sub/file-Q4_0.gguf", ModelRef("hub", "owner/repo", file="sub/file-Q4_0.gguf")),
    ("owner/repo/file.gguf@v1.0", ModelRef("hub", "owner/repo", file="file.gguf", revision="v1.0")),
    ("owner/repo:Q4_0@abc123", ModelRef("hub", "owner/repo", quant="Q4_0", revision="abc123")),
    ("./model.gguf", ModelRef("local", "./model.gguf")),
    ("/abs/path.gguf", ModelRef("local", "/abs/path.gguf")),
    ("~/m.gguf", ModelRef("local", "~/m.gguf")),
    ("model.gguf", ModelRef("local", "model.gguf")),
    ("dir/model.gguf", ModelRef("local", "dir/model.gguf")),
    (".cache/models/m.gguf", ModelRef("local", ".cache/models/m.gguf")),
    ("  smollm2  ", ModelRef("alias", "smollm2")),
])
def test_examples(text, expected):
    assert parse(text) == expected


def test_an_existing_deep_relative_path_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "m.gguf").write_bytes(b"GGUF")
    assert parse("a/b/m.gguf") == ModelRef("local", "a/b/m.gguf")
    assert parse("a/b/other.gguf").kind == "hub"  # not on disk: a file in the Hub repo a/b


@pytest.mark.parametrize("text", [
    "", "   ", "owner/repo/../x.gguf", "owner/repo/file.bin", "owner/repo/a//b.gguf", "-bad/repo", "owner/re--po",
    "owner/repo:Q4 K", "owner/repo@..", "UPPER CASE", "hf.co/justone", "owner/repo/file.gguf:Q4_0", "a/b@",
])
def test_invalid_references_are_usage_errors(text):
    with pytest.raises(UsageError) as e:
        parse(text)
    assert "invalid model reference" in e.value.message


segment = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.]{0,20}", fullmatch=True).filter(lambda s: ".." not in s)
quant = st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True)
revision = st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True)
filename = st.lists(segment, min_size=1, max_size=3).map(lambda parts: "/".join(parts) + ".gguf")
alias = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,12}(:[a-z0-9][a-z0-9._-]{0,6})?", fullmatch=True)


@st.composite
def hub_refs(draw):
    repo = f"{draw(segment)}/{draw(segment)}"
    choice = draw(st.sampled_from(["plain", "quant", "file"]))
    return ModelRef("hub", repo, file=draw(filename) if choice == "file" else None,
                    quant=draw(quant).upper() if choice == "quant" else None,
                    revision=draw(st.none() | revision))


@given(hub_refs())
def test_hub_refs_round_trip(ref):
    assert parse(str(ref)) == ref


@given(alias)
def test_aliases_round_trip_lower_case(text):
    ref = parse(text.upper())
    assert ref.kind == "alias" and parse(str(ref)) == ref and str(ref) == text.lower()


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_usage_error(text):
    try:
        ref = parse(text)
    except UsageError:
        return
    assert parse(str(ref)) == ref
