"""Quant tags, split parts and the choice of files from a repo listing (pure logic)."""

from __future__ import annotations

import pytest

from infer.errors import ModelNotFound, NetworkError
from infer.sources.hf import Listing, RemoteFile, pick, safe_name
from infer.sources.quants import quant_of, split_part


@pytest.mark.parametrize("name, quant", [
    ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"), ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
    ("qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf", "Q4_K_M"), ("x-IQ4_XS.gguf", "IQ4_XS"),
    ("model-f16.gguf", "F16"), ("model-bf16.gguf", "BF16"), ("weird.gguf", None),
])
def test_quant_of(name, quant):
    assert quant_of(name) == quant


def test_split_part():
    assert split_part("a-00002-of-00005.gguf") == (2, 5)
    assert split_part("a.gguf") is None


def listing(*names: str) -> Listing:
    return Listing("o/r", "main", "c" * 40, tuple(RemoteFile(n, 10, "a" * 64) for n in names))


def test_default_is_q4_k_m_then_the_documented_fallback():
    assert pick(listing("m-Q8_0.gguf", "m-Q4_K_M.gguf"))[0].name == "m-Q4_K_M.gguf"
    assert pick(listing("m-Q8_0.gguf", "m-Q4_0.gguf", "m-Q6_K.gguf"))[0].name == "m-Q4_0.gguf"
    assert pick(listing("m-Q8_0.gguf", "m-F16.gguf"))[0].name == "m-Q8_0.gguf"
    assert pick(listing("odd-name.gguf"))[0].name == "odd-name.gguf"


def test_split_and_projector():
    files = listing("m-Q4_K_M-00002-of-00002.gguf", "m-Q4_K_M-00001-of-00002.gguf", "mmproj-m-f16.gguf", "m-Q8_0.gguf")
    chosen = pick(files)
    assert [f.name for f in chosen] == ["m-Q4_K_M-00001-of-00002.gguf", "m-Q4_K_M-00002-of-00002.gguf"]
    with pytest.raises(ModelNotFound):
        pick(listing("m-Q4_K_M-00001-of-00003.gguf", "m-Q4_K_M-00002-of-00003.gguf"))


def test_missing_quant_names_the_available_ones():
    with pytest.raises(ModelNotFound) as e:
        pick(listing("m-Q8_0.gguf", "m-Q4_K_M.gguf"), quant="q2_k")
    assert "Q4_K_M, Q8_0" in e.value.hint


@pytest.mark.parametrize("name, ok", [
    ("a.gguf", True), ("dir/a.gguf", True), ("../a.gguf", False), ("a/../../b.gguf", False), ("/etc/x.gguf", False),
    ("a\\b.gguf", False), ("./a.gguf", False), ("", False),
])
def test_safe_names(name, ok):
    assert safe_name(name) is ok


def test_unsafe_listing_is_refused():
    with pytest.raises(NetworkError):
        pick(listing("m-Q4_K_M.gguf", "../../evil.gguf"))
