"""Bounded input (piped stdin read in chunks and counted as it comes), the chat-template warning,
and `show`'s quantization: the reader's logic with a stand-in counter, the rest end to end."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading

import pytest

from conftest import infer_bin
from infer.complete import InputTooLong, Material, read_bounded

OVERFLOW = re.compile(r"at least (\d+) tokens against a limit of (\d+)")


def words(text: str) -> int:
    return len(text.split())


# -- the reader, with a stand-in tokenizer (one token per word) ---------------------------------

@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_chunked_reading_gives_back_every_character(chunk):
    text = "héllo wörld ✓ emoji 🙂 done\nsecond line — with dashes\n\nlast"
    assert read_bounded(Material(io.BytesIO(text.encode()), chunk=chunk), words, limit=1000) == text
    with pytest.raises(InputTooLong) as e:
        read_bounded(Material(io.BytesIO(text.encode()), chunk=chunk), words, limit=words(text) - 1)
    assert e.value.at_least == words(text)


def test_reading_stops_soon_after_the_limit():
    data = b"one two three four five six seven eight\n" * 100_000  # 4 MB
    stream = io.BytesIO(data)
    with pytest.raises(InputTooLong) as e:
        read_bounded(Material(stream, chunk=1024), words, limit=500)
    assert e.value.limit == 500 and e.value.at_least > 500
    assert stream.tell() <= 4 * 1024  # a few chunks read, not the whole input


def test_an_input_exactly_at_the_limit_is_not_refused_for_the_way_it_was_cut():
    # A tokenizer that adds a token per call (a BOS, a prefix space) overcounts the pieces:
    # the sum says "too many", the one exact count of the whole says it fits.
    per_call = lambda text: words(text) + 1  # noqa: E731
    text = "alpha beta gamma\n" * 200
    limit = per_call(text)
    assert read_bounded(Material(io.BytesIO(text.encode()), chunk=16), per_call, limit) == text
    with pytest.raises(InputTooLong):
        read_bounded(Material(io.BytesIO(text.encode()), chunk=16), per_call, limit - 1)


def test_one_endless_line_is_still_read_in_bounded_pieces():
    stream = io.BytesIO(b"x" * 5_000_000)
    with pytest.raises(InputTooLong):
        read_bounded(Material(stream, chunk=4096), lambda text: len(text) // 4, limit=10_000)
    assert stream.tell() < 100_000


def test_undecodable_bytes_are_replaced_and_counted():
    notes = []
    got = read_bounded(Material(io.BytesIO(b"ok \xff\xfe then \xc3("), chunk=3), words, 100, notes.append)
    assert got.count("\ufffd") == 3 and got.startswith("ok ") and got.endswith("(")
    assert len(notes) == 1 and "3 undecodable" in notes[0]


def test_empty_material():
    assert Material(io.BytesIO(b"")).empty and Material(io.BytesIO(b" \n\n")).empty
    assert not Material(io.BytesIO(b"x")).empty


# -- the reader with the real tokenizer ---------------------------------------------------------

@pytest.mark.model
def test_real_tokenizer_exact_at_the_limit_across_chunk_borders(smollm2):
    from infer.engine import LoadOptions, Model

    model = Model(smollm2.path, LoadOptions())
    try:
        count = lambda text: len(model.tokenize(text, add_bos=False, special=True))  # noqa: E731
        text = "".join(f"Line {i}: the quick brown fox — naïve café, 🙂 {i * 7919 % 1000}\n\n" for i in range(600))
        exact = count(text)
        for chunk in (97, 1000, 4096):
            assert read_bounded(Material(io.BytesIO(text.encode()), chunk=chunk), count, exact) == text
            with pytest.raises(InputTooLong) as e:
                read_bounded(Material(io.BytesIO(text.encode()), chunk=chunk), count, exact - 1)
            assert e.value.at_least == exact  # read to the end: the count of the whole
    finally:
        model.close()


# -- end to end ---------------------------------------------------------------------------------

def trained_context(infer, smollm2) -> int:
    return json.loads(infer("show", smollm2.path, "--json", check=True).stdout)["context_length"]


# Linux counts in a process's peak RSS the memory of the process it was forked from (the high-water mark of the
# copied address space is kept across exec): a child of this test run would report the test run's own memory,
# hundreds of MB once other tests have loaded models. So a small launcher forks `infer` and reports its rusage.
LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "maxrss": usage.ru_maxrss}, f)
"""


def run_measured(infer, args, stdin_path, tmp_path, timeout=300):
    """Run `infer` with a file on stdin; (exit code, stdout, stderr, peak RSS in bytes, stdin offset at exit)."""
    out, err, report = tmp_path / "out.txt", tmp_path / "err.txt", tmp_path / "rusage.json"
    with stdin_path.open("rb") as stdin, out.open("wb") as o, err.open("wb") as e:
        p = subprocess.Popen([sys.executable, "-c", LAUNCHER, report, infer_bin(), *map(str, args)], stdin=stdin,
                             stdout=o, stderr=e, env=infer.env)
        killer = threading.Timer(timeout, p.kill)
        killer.start()
        try:
            p.wait()
        finally:
            killer.cancel()
        offset = os.lseek(stdin.fileno(), 0, os.SEEK_CUR)  # the child shared this file offset
    got = json.loads(report.read_text())
    rss = got["maxrss"] * (1 if sys.platform == "darwin" else 1024)
    return got["code"], out.read_text(), err.read_text(), rss, offset


@pytest.mark.model
def test_huge_piped_input_fails_at_once_with_bounded_memory(infer, smollm2, tmp_path):
    big = tmp_path / "app.log"
    line = b"2026-11-23 12:00:00 INFO worker-7 request handled in 12 ms path=/api/v1/items status=200\n"
    with big.open("wb") as f:
        for _ in range(67):
            f.write(line * (1_000_000 // len(line)))
    size = big.stat().st_size
    assert size > 65_000_000
    code, out, err, rss, offset = run_measured(infer, ["run", "-m", smollm2.path, "Summarize this log"], big, tmp_path)
    assert code == 5, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("infer: "), err
    n, limit = map(int, OVERFLOW.search(lines[0]).groups())
    trained = trained_context(infer, smollm2)
    assert limit < trained < n
    # At the model's own maximum a larger --ctx-size cannot help: the hint says what can.
    assert "--ctx-size" not in lines[0] and "longer context" in lines[0] and str(trained) in lines[0]
    assert offset < size // 10  # it stopped reading
    # the tokenizer alone counted it: the weights were never loaded
    assert rss < smollm2.path.stat().st_size + 100_000_000, f"peak RSS {rss / 1e6:.0f} MB"


@pytest.mark.model
def test_piped_input_over_ctx_size_says_how_large_a_context_would_do(infer, smollm2, tmp_path):
    material = tmp_path / "words.txt"
    material.write_text("word " * 600 + "\n")
    code, out, err, _, _ = run_measured(infer, ["run", "-m", smollm2.path, "-c", "256", "-n", "8", "Count them"],
                                        material, tmp_path)
    assert code == 5, err
    assert len(err.strip().splitlines()) == 1
    n, limit = map(int, OVERFLOW.search(err).groups())
    assert n > limit and limit < 256
    assert re.search(r"raise --ctx-size to at least \d+: this model allows up to " + str(trained_context(infer, smollm2)), err)


@pytest.mark.model
def test_prompt_just_over_ctx_size_fails_and_just_enough_runs(infer, smollm2):
    prompt = "Name three colours of the rainbow."
    first = infer("run", "-m", smollm2.path, "-n", "1", "--json", prompt)
    assert first.returncode == 0, first.stderr
    p = json.loads(first.stdout)["usage"]["prompt_tokens"]
    n = 4
    over = infer("run", "-m", smollm2.path, "-c", p + n - 1, "-n", n, prompt)
    assert over.returncode == 5, over.stderr
    assert len(over.stderr.strip().splitlines()) == 1 and over.stdout == ""
    assert f"the prompt is {p} tokens" in over.stderr and f"raise --ctx-size to at least {p + n}" in over.stderr
    assert f"lower --max-tokens to at most {n - 1}" in over.stderr
    fits = infer("run", "-m", smollm2.path, "-c", p + n, "-n", n, "--json", prompt)
    assert fits.returncode == 0, fits.stderr
    assert json.loads(fits.stdout)["usage"]["prompt_tokens"] == p


@pytest.mark.model
def test_normal_piped_input_is_the_material(infer, smollm2):
    alone = infer("run", "-m", smollm2.path, "-n", "2", "--json", "Summarize")
    piped = infer("run", "-m", smollm2.path, "-n", "2", "--json", "Summarize",
                  input="The meeting moved to Tuesday.\nBring the slides.\n")
    for proc in (alone, piped):
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
    tokens = [json.loads(proc.stdout)["usage"]["prompt_tokens"] for proc in (alone, piped)]
    assert tokens[1] > tokens[0] + 8
    blank = infer("run", "-m", smollm2.path, input="  \n\n")
    assert blank.returncode == 2 and "no prompt" in blank.stderr


def test_a_huge_schema_file_is_refused_without_reading_it_all(infer, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "description": "' + "x" * 3_000_000 + '"}')
    proc = infer("run", "-m", tmp_path / "none.gguf", "--schema", schema, "hi")
    assert proc.returncode == 2 and "larger than" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# -- honest defaults ----------------------------------------------------------------------------

@pytest.mark.model
def test_run_warns_once_when_the_model_has_no_chat_template(infer, smollm2, tmp_path):
    bare = tmp_path / "bare.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--force", "--remove-metadata",
                    "tokenizer.chat_template", str(smollm2.path), str(bare)], check=True, capture_output=True)
    proc = infer("run", "-m", bare, "-n", "2", "Hi")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("no chat template") == 1 and "--raw" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    raw = infer("run", "-m", bare, "-n", "2", "--raw", "Hi")
    assert raw.returncode == 0 and "chat template" not in raw.stderr


def synthetic(path, file_type: int | None):
    """A GGUF whose declared file type (Q4_K_M = 15) differs from its commonest tensor type (F32)."""
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_name("mixed")
    w.add_context_length(256)
    if file_type is not None:
        w.add_file_type(file_type)
    w.add_tensor("token_embd.weight", np.zeros(3000, dtype=np.float32))
    w.add_tensor("output.weight", np.zeros(1000, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_show_reports_one_quantization(infer, tmp_path):
    path = synthetic(tmp_path / "mixed.gguf", 15)
    data = json.loads(infer("show", path, "--json", check=True).stdout)
    assert data["quantization"] == data["file_type"] == "Q4_K_M"
    assert data["tensor_types"] == {"F32": 3000, "F16": 1000}
    table = infer("show", path, check=True).stdout
    rows = {line.split("  ")[0]: line.split("  ", 1)[1].strip() for line in table.splitlines() if "  " in line}
    assert rows["quantization"] == "Q4_K_M"
    assert rows["tensor types"] == "F32 75%, F16 25%"
    assert "file type" not in rows


def test_show_without_a_declared_type_names_the_commonest_tensor_type(infer, tmp_path):
    path = synthetic(tmp_path / "undeclared.gguf", None)
    data = json.loads(infer("show", path, "--json", check=True).stdout)
    assert data["quantization"] == "F32" and data["file_type"] is None
    assert "F32 (the file declares no type)" in infer("show", path, check=True).stdout


@pytest.mark.model
def test_a_pipe_longer_than_one_read_that_fits_is_answered_as_if_given_whole(infer, smollm2):
    # More than one 64 KiB read: the tokenizer alone counts it before the weights load; the prompt
    # must be the one the same text would make given as the argument.
    material = ("-" * 4095 + "\n") * 17  # 69,632 bytes in about 1,100 tokens
    piped = infer("run", "-m", smollm2.path, "--json", "-n", "1", "How many lines?", input=material, check=True)
    whole = infer("run", "-m", smollm2.path, "--json", "-n", "1", "--", material.strip("\n") + "\n\nHow many lines?", check=True)
    n = json.loads(piped.stdout)["usage"]["prompt_tokens"]
    assert n == json.loads(whole.stdout)["usage"]["prompt_tokens"]
    assert n > 500
