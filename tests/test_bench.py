"""`infer bench` on the real model, with tiny sizes (fields and types; no timing assertions)."""

from __future__ import annotations

import json

import pytest

from conftest import threads
from infer import settings

pytestmark = pytest.mark.model


def test_bench_json_fields_and_types(infer, smollm2):
    proc = infer("bench", "-m", smollm2.path, "-p", "8", "-p", "16", "-n", "4", "-r", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["repeat"] == 2 and data["threads"] >= 1 and isinstance(data["gpu_layers"], int)
    assert [p["n"] for p in data["pp"]] == [8, 16] and data["tg"]["n"] == 4
    spreads = [p["tps"] for p in data["pp"]] + [data["tg"]["tps"], data["ttft_s"], data["load_s"]]
    for s in spreads:
        assert set(s) == {"median", "min", "max", "stdev", "values"}
        assert len(s["values"]) == 2 and all(v > 0 for v in s["values"])
        assert s["min"] <= s["median"] <= s["max"]


def test_bench_table_and_bad_values(infer, smollm2):
    proc = infer("bench", "-m", smollm2.path, "-p", "8", "-n", "2", "-r", "1")
    assert proc.returncode == 0, proc.stderr
    assert "pp8" in proc.stdout and "tg2" in proc.stdout and "ttft" in proc.stdout
    assert infer("bench", "-m", smollm2.path, "-r", "0").returncode == 2
    assert infer("bench", "-m", smollm2.path, "-p", "8", "-p", "8").returncode == 2


@pytest.mark.skipif("INFER_THREADS" not in {v.name for v in settings.REGISTRY},
                    reason="this build has no INFER_THREADS setting yet")
def test_the_suite_pins_the_thread_count(infer, smollm2):
    """Every model run of the suite uses INFER_TEST_THREADS threads (default 1), through INFER_THREADS."""
    proc = infer("bench", "-m", smollm2.path, "-p", "8", "-n", "2", "-r", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["threads"] == threads()
