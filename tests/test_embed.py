"""`infer embed` end to end on the real SmolLM2: inputs pooled in one batch give what each gives alone."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytestmark = pytest.mark.model

TEXTS = ["The cat sat on the mat.", "Quantum chromodynamics describes the strong force between quarks.", "hi",
         "A longer sentence about the Roman empire, its emperors, its wars and the roads it built across Europe.",
         "Ünïcödé ✓ and numbers 1 2 3"]
THREADS = ("-t", "1")  # the same in every run compared below


def lines(proc) -> list[dict]:
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_pooled_inputs_equal_each_embedded_alone(infer, smollm2):
    batch = lines(infer("embed", "-m", smollm2.path, *THREADS, *TEXTS))
    assert [row["index"] for row in batch] == list(range(len(TEXTS)))
    for text, row in zip(TEXTS, batch):
        (alone,) = lines(infer("embed", "-m", smollm2.path, *THREADS, text))
        assert alone["tokens"] == row["tokens"]
        # llama.cpp's default KV (one stream per sequence) gave 0.61-0.94 here; a unified KV gives the same vector
        assert cosine(alone["embedding"], row["embedding"]) > 0.99999
        assert max(abs(x - y) for x, y in zip(alone["embedding"], row["embedding"])) < 1e-4


def test_one_json_line_per_input_normalised_stdout_only(infer, smollm2):
    proc = infer("embed", "-m", smollm2.path, "first argument", input="line one\n\n   \nline two\n")
    rows = lines(proc)
    assert proc.stderr == ""
    assert [r["index"] for r in rows] == [0, 1, 2]  # arguments, then non-blank stdin lines
    assert all(set(r) == {"index", "tokens", "embedding"} for r in rows)
    assert len({len(r["embedding"]) for r in rows}) == 1 and len(rows[0]["embedding"]) > 0
    for r in rows:
        assert isinstance(r["tokens"], int) and r["tokens"] > 0
        assert abs(math.sqrt(sum(v * v for v in r["embedding"])) - 1) < 1e-5
    assert rows[0]["embedding"] != rows[1]["embedding"]  # each input has its own vector


def test_more_inputs_than_one_batch_keep_their_order(infer, smollm2):
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(70)]  # more than one decode's 64 sequences
    rows = lines(infer("embed", "-m", smollm2.path, *THREADS, input="\n".join(texts) + "\n"))
    assert [r["index"] for r in rows] == list(range(70))
    for i in (0, 69):
        (alone,) = lines(infer("embed", "-m", smollm2.path, *THREADS, texts[i]))
        assert cosine(alone["embedding"], rows[i]["embedding"]) > 0.99999


@pytest.mark.parametrize("args, stdin, code, words", [
    (["-c", "16", "short", "word " * 40], "", 5, "input 1 is"),
    ([], "", 2, "nothing to embed"),
    ([], "\n  \n", 2, "nothing to embed"),
    (["-m", "/nonexistent/model.gguf", "hi"], "", 3, "not found"),
])
def test_bad_input_one_line_nothing_embedded(infer, smollm2, args, stdin, code, words):
    if "-m" not in args:
        args = ["-m", str(smollm2.path), *args]
    proc = infer("embed", *args, input=stdin)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""  # every input is checked before any is embedded
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("infer: ") and words in line


def test_closed_pipe_ends_quietly(infer, smollm2):
    from conftest import infer_bin

    cmd = f"seq 1 200 | '{infer_bin()}' embed -m '{smollm2.path}' | head -c 5"
    proc = subprocess.run(["bash", "-c", cmd + "; echo \"rc=${PIPESTATUS[1]}\" >&2"], capture_output=True, text=True,
                          env=infer.env, timeout=300)
    assert "rc=0" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stdout) == 5


def test_help_imports_no_heavy_module(infer):
    probe = ("import sys\nfrom infer.cli.app import main\ntry:\n    main(['embed', '--help'])\nexcept SystemExit:\n"
             "    pass\nsys.stderr.write('@@' + str(sorted(m for m in ('llama_cpp', 'huggingface_hub', 'gguf', 'numpy') "
             "if m in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=infer.env, timeout=60)
    assert "@@[]" in proc.stderr, proc.stderr
