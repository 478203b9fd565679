"""`infer batch`: the pure parts with fakes (line parsing, seeds, resume repair, the run loop), then the
installed command on the real SmolLM2 model (both input forms, bad lines, kill -9 and Ctrl-C resume)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from infer import batch as core
from infer.engine import Done, Failed, Text, Timings, Usage
from infer.errors import ContextOverflow, InferError, NoSpace, UsageError


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read_out(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "torn last line"
    return [json.loads(line) for line in data.splitlines()]


# -- line parsing -------------------------------------------------------------------------------
def full(cid, url="/v1/chat/completions", **body):
    body = body or {"messages": [{"role": "user", "content": "hi"}]}
    return {"custom_id": cid, "method": "POST", "url": url, "body": body}


@pytest.mark.parametrize("row, kind", [
    (full("a"), "chat"),
    (full("b", "/v1/completions", prompt="Once"), "completion"),
    (full("c", "/v1/completions", prompt=["Once"]), "completion"),
    ({"prompt": "hi"}, "chat"),
    ({"prompt": "hi", "raw": True}, "completion"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, "chat"),
    (full("t", "/v1/completions", prompt=[1, 2, 3], ignore_eos=True), "completion"),
    ({"prompt": [[5, 6]]}, "completion"),
])
def test_good_lines_parse_to_jobs(row, kind):
    job = core.parse_line(json.dumps(row).encode(), 7)
    assert isinstance(job, core.Job) and job.kind == kind
    assert job.custom_id == row.get("custom_id", "line-7")


@pytest.mark.parametrize("raw, code", [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (b"[1, 2]", "invalid_request"),
    (b"42", "invalid_request"),
    (json.dumps({"custom_id": "x"}).encode(), "invalid_request"),
    (json.dumps(full("x", "/v1/embeddings", input="a")).encode(), "invalid_url"),
    (json.dumps(full("x", "/v2/nothing")).encode(), "invalid_url"),
    (json.dumps({**full("x"), "method": "GET"}).encode(), "invalid_request"),
    (json.dumps({"custom_id": "x", "url": "/v1/chat/completions", "body": []}).encode(), "invalid_request"),
    (json.dumps(full("x", messages=[])).encode(), "invalid_request"),
    (json.dumps(full("x", messages=[{"content": "no role"}])).encode(), "invalid_request"),
    (json.dumps({"prompt": 3}).encode(), "invalid_request"),
    (json.dumps({"prompt": [1, -2]}).encode(), "invalid_request"),
    (json.dumps({"prompt": "a", "ignore_eos": 1}).encode(), "invalid_request"),
    (json.dumps({"prompt": "a", "temperature": "hot"}).encode(), "invalid_request"),
    (json.dumps({"prompt": "a", "temperature": -1}).encode(), "invalid_request"),
    (json.dumps({"prompt": "a", "max_tokens": 0}).encode(), "invalid_request"),
    (json.dumps({"prompt": "a", "n": 2}).encode(), "invalid_request"),
    (json.dumps({"prompt": "a", "stop": [1]}).encode(), "invalid_request"),
    (json.dumps({"prompt": "a", "custom_id": 5}).encode(), "invalid_request"),
    (json.dumps({"prompt": "a", "response_format": {"type": "xml"}}).encode(), "invalid_request"),
    (json.dumps({"prompt": "a", "response_format": {"type": "json_schema", "json_schema": {}}}).encode(),
     "invalid_schema"),
])
def test_bad_lines_parse_to_error_codes(raw, code):
    bad = core.parse_line(raw, 3)
    assert isinstance(bad, core.BadLine), bad
    assert bad.code == code and bad.line == 3 and bad.message


def test_blank_lines_are_not_requests():
    assert core.parse_line(b"   ", 1) is None
    assert core.parse_id(b"", 1) is None


def test_sampling_keys_are_carried():
    job = core.parse_line(json.dumps(full("s", temperature=0, seed=3, max_completion_tokens=9, stop="x",
                                          messages=[{"role": "user", "content": "q"}])).encode(), 1)
    assert job.params == {"temperature": 0, "seed": 3, "max_tokens": 9, "stop": ("x",)}


def test_an_overlong_line_is_skipped_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setattr(core, "MAX_LINE", 100)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n' + b"x" * 1000 + b"\n" + b'{"prompt": "after"}\n')
    with open(path, "rb") as f:
        lines = list(core.iter_lines(f))
    assert [n for n, _ in lines] == [1, 2, 3]
    assert lines[1][1] is None and isinstance(core.parse_line(None, 2), core.BadLine)
    assert json.loads(lines[2][1]) == {"prompt": "after"}


def test_a_large_input_is_streamed_not_loaded(tmp_path):
    import tracemalloc

    path = tmp_path / "big.jsonl"
    line = json.dumps({"prompt": "x" * (1 << 20)}) + "\n"  # 1 MiB lines, 32 MiB in all
    with open(path, "w") as f:
        for _ in range(32):
            f.write(line)
    tracemalloc.start()
    try:
        assert core.scan(path).requests == 32
        assert sum(1 for _ in core.jobs(path, core.Existing())) == 32
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20, peak


# -- seeds --------------------------------------------------------------------------------------
def test_derived_seeds_depend_on_the_base_and_the_id_only():
    assert core.derive_seed(None, "a") is None
    assert core.derive_seed(1, "a") == core.derive_seed(1, "a")
    seeds = {core.derive_seed(1, f"id-{i}") for i in range(1000)} | {core.derive_seed(2, "id-0")}
    assert len(seeds) == 1001
    assert all(0 <= s < 0xFFFFFFFF for s in seeds)  # 0xFFFFFFFF would mean "random" to llama.cpp


# -- the first pass and the output file ---------------------------------------------------------
def test_scan_counts_requests_and_refuses_duplicates(tmp_path):
    path = jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "custom_id": "x"}, "", "{bad", {"prompt": "b"}])
    s = core.scan(path)
    assert s.requests == 3
    jsonl(path, [{"prompt": "a", "custom_id": "x"}, {"prompt": "b"}, {"prompt": "c", "custom_id": "x"}])
    with pytest.raises(UsageError, match=r"'x'.*lines 1 and 3"):
        core.scan(path)
    jsonl(path, [{"prompt": "a", "custom_id": "line-2"}, {"prompt": "b"}])  # explicit id equal to a line id
    with pytest.raises(UsageError, match="line-2"):
        core.scan(path)


def test_scan_fingerprint_changes_with_the_input(tmp_path):
    path = jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    first = core.scan(path).sha256
    jsonl(path, [{"prompt": "b"}])
    assert core.scan(path).sha256 != first


def test_repair_cuts_only_a_torn_last_line(tmp_path):
    out = tmp_path / "out.jsonl"
    whole = b'{"custom_id": "a", "error": null}\n{"custom_id": "b", "error": {"code": "x"}}\n'
    out.write_bytes(whole + b'{"custom_id": "c", "resp')
    assert core.repair_tail(out) == len(b'{"custom_id": "c", "resp')
    assert out.read_bytes() == whole
    assert core.repair_tail(out) == 0
    existing = core.read_existing(out)
    assert existing.ok == {"a"} and existing.failed == {"b"}
    out.write_bytes(b"torn without any newline")
    assert core.repair_tail(out) > 0 and out.read_bytes() == b""


def test_output_of_another_input_or_model_is_refused_unless_forced(tmp_path):
    out = tmp_path / "out.jsonl"
    mine = {"format": 1, "input_sha256": "aa", "model": {"name": "m", "file": "m.gguf", "size": 1}}
    assert core.open_output(out, mine).done == 0
    assert core.sidecar_path(out).exists()
    out.write_text('{"custom_id": "a", "error": null}\n')
    assert core.open_output(out, mine).ok == {"a"}  # same input and model: resumed
    with pytest.raises(UsageError, match="another input"):
        core.open_output(out, {**mine, "input_sha256": "bb"})
    with pytest.raises(UsageError, match="another model"):
        core.open_output(out, {**mine, "model": {"name": "n", "file": "n.gguf", "size": 2}})
    assert out.read_text() == '{"custom_id": "a", "error": null}\n'  # refusing changed nothing
    assert core.open_output(out, {**mine, "input_sha256": "bb"}, force=True).done == 0
    assert out.read_bytes() == b""
    other = tmp_path / "foreign.jsonl"
    other.write_text("some file that is not ours\n")
    with pytest.raises(UsageError, match="another run"):
        core.open_output(other, mine)


def test_a_failed_write_leaves_no_torn_line(tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    w = core.Writer(out, group=100)
    w.add({"custom_id": "a"})
    w.flush()
    real_write, calls = os.write, []

    def disk_fills(fd, data):
        calls.append(1)
        if len(calls) == 1:
            return real_write(fd, bytes(data[:7]))  # part of a line reaches the disk ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(os, "write", disk_fills)
    w.add({"custom_id": "b"})
    with pytest.raises(NoSpace):
        w.flush()
    monkeypatch.setattr(os, "write", real_write)
    w.close()
    assert [r["custom_id"] for r in read_out(out)] == ["a"]


# -- the run loop with a fake scheduler ---------------------------------------------------------
class FakeHandle:
    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class FakeScheduler:
    """Answers at once: 'answer to <id>' in two chunks; a request whose id says so fails in the engine."""

    def __init__(self, n_seq, n_ctx_seq, interrupt_after=None):
        self.n_ctx_seq = n_ctx_seq
        self.submitted = []
        self.closed = False
        self.interrupt_after = interrupt_after

    def submit(self, request, sink):
        if self.interrupt_after is not None and len(self.submitted) >= self.interrupt_after:
            raise KeyboardInterrupt
        need = len(request.tokens) + (request.sampling.max_tokens or 1)
        if need > self.n_ctx_seq:
            raise ContextOverflow(f"{need} > {self.n_ctx_seq}")
        self.submitted.append(request)
        h = FakeHandle()
        if request.id.startswith("engine-fails"):
            sink.put((h, Failed(InferError("decode failed"))))
            return h
        for piece in ("answer to ", request.id):
            sink.put((h, Text(piece)))
        sink.put((h, Done("stop", Usage(len(request.tokens), 2), Timings(0, 0, 0, 0, 0, 0))))
        return h

    def close(self):
        self.closed = True


class FakeModel:
    def __init__(self, **kw):
        self.kw = kw
        self.sched = None

    def tokenize(self, text):
        return [1] + [ord(c) for c in text]

    def format_chat(self, messages):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text, self.tokenize(text)

    def scheduler(self, n_seq, n_ctx_seq, prefill_chunk=None):
        assert prefill_chunk is None, "a batch reads prompts as fast as the batch allows"
        self.sched = FakeScheduler(n_seq, n_ctx_seq, **self.kw)
        return self.sched


def fake_run(tmp_path, rows, *, model=None, seed=None, existing=None, **settings):
    src = jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    scan = core.scan(src)
    existing = existing or core.open_output(out, core.fingerprint(scan, {"name": "fake"}))
    writer = core.Writer(out)
    model = model or FakeModel()
    try:
        summary = core.execute(src, writer, existing, model,
                               core.Settings(parallel=2, ctx_size=settings.pop("ctx", 64), seed=seed,
                                             model_name="fake", **settings), scan.requests)
    finally:
        writer.close()
    return summary, read_out(out), model


def test_every_line_once_with_errors_where_expected(tmp_path):
    rows = [{"prompt": "a"}, "{oops", {"prompt": "x" * 100, "custom_id": "too-long"},
            full("chat-1"), full("comp-1", "/v1/completions", prompt="Once"), "", {"custom_id": "engine-fails-1",
                                                                                  "prompt": "b"}, [1]]
    summary, out, model = fake_run(tmp_path, rows)
    by_id = {r["custom_id"]: r for r in out}
    assert len(out) == len(by_id) == 7
    assert by_id["line-2"]["error"]["code"] == "invalid_json"
    assert by_id["too-long"]["error"]["code"] == "context_length_exceeded"
    assert by_id["engine-fails-1"]["error"]["code"] == "server_error"
    assert by_id["line-8"]["error"]["code"] == "invalid_request"
    chat = by_id["chat-1"]["response"]
    assert chat["status_code"] == 200 and chat["body"]["object"] == "chat.completion"
    assert chat["body"]["choices"][0]["message"] == {"role": "assistant", "content": "answer to chat-1"}
    comp = by_id["comp-1"]["response"]["body"]
    assert comp["object"] == "text_completion" and comp["choices"][0]["text"] == "answer to comp-1"
    assert comp["usage"]["total_tokens"] == comp["usage"]["prompt_tokens"] + 2
    assert (summary.ok, summary.failed, summary.requests) == (3, 4, 7)
    assert model.sched.closed


def test_seeds_are_the_lines_own_or_derived(tmp_path):
    rows = [{"prompt": "a", "custom_id": "p"}, {"prompt": "b", "custom_id": "q", "seed": 5}]
    _, _, model = fake_run(tmp_path, rows, seed=9, max_tokens=3, defaults={"temperature": 0.2, "ctx_size": 1})
    seeds = {r.id: r.sampling.seed for r in model.sched.submitted}
    assert seeds == {"p": core.derive_seed(9, "p"), "q": 5}
    assert all(r.sampling.max_tokens == 3 and r.sampling.temperature == 0.2 for r in model.sched.submitted)


def test_resume_skips_what_is_written(tmp_path):
    rows = [{"prompt": str(i)} for i in range(10)]
    summary, out, _ = fake_run(tmp_path, rows, model=FakeModel(interrupt_after=4))
    assert summary.interrupted and len(out) == 4
    src, dest = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    existing = core.open_output(dest, core.fingerprint(core.scan(src), {"name": "fake"}))
    summary, out, model = fake_run(tmp_path, rows, existing=existing)
    assert sorted(r["custom_id"] for r in out) == sorted(f"line-{i}" for i in range(1, 11))
    assert len(model.sched.submitted) == 6 and summary.done_before == 4 and summary.ok == 10


# -- the installed command on the real model ----------------------------------------------------
model = pytest.mark.model
LIMIT = ["-n", "8", "--ctx-size", "256"]


def on(smollm2) -> tuple:
    """The model, on one thread: the tests share small machines with other work, where llama.cpp's
    threads wait for each other (spinning) whenever one of them is descheduled."""
    return ("-m", smollm2.path, "-t", "1")


def mixed_rows() -> tuple[list, dict]:
    """30 lines: both forms, both urls, and bad lines mixed in; the expected error code per id (None: ok)."""
    items = [(full(f"chat-{i}", messages=[{"role": "user", "content": f"Say a word about {i}."}]), None)
             for i in range(12)]
    items += [(full(f"comp-{i}", "/v1/completions", prompt=f"{i}, {i + 1},"), None) for i in range(6)]
    items += [({"prompt": f"Name colour {i}.", "custom_id": f"short-{i}"} if i % 2 else {"prompt": f"Name {i}."}, None)
              for i in range(6)]
    bad = [("{not json", "invalid_json"), ("[1, 2, 3]", "invalid_request"),
           (full("emb", "/v1/embeddings", input="x"), "invalid_url"), ({"custom_id": "nothing"}, "invalid_request"),
           ({"custom_id": "huge", "prompt": "word " * 400}, "context_length_exceeded"),
           ({"custom_id": "schema", "prompt": "x",
             "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}}, "invalid_schema")]
    for k, item in enumerate(bad):
        items.insert(k * 5 + 2, item)
    rows, expect = [], {}
    for n, (row, code) in enumerate(items, 1):
        rows.append(row)
        expect[row.get("custom_id", f"line-{n}") if isinstance(row, dict) else f"line-{n}"] = code
    assert len(rows) == len(expect) == 30
    return rows, expect


def check_shape(line: dict) -> None:
    assert set(line) == {"id", "custom_id", "response", "error"}
    assert line["id"].startswith("batch_req_")
    if line["error"] is None:
        resp = line["response"]
        assert resp["status_code"] == 200 and resp["request_id"]
        body = resp["body"]
        assert body["object"] in ("chat.completion", "text_completion")
        choice = body["choices"][0]
        assert choice["finish_reason"] in ("stop", "length")
        if body["object"] == "chat.completion":
            assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
        else:
            assert isinstance(choice["text"], str)
        u = body["usage"]
        assert u["prompt_tokens"] > 0 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    else:
        assert line["response"] is None
        assert line["error"]["code"] and line["error"]["message"]


@model
def test_mixed_batch_every_id_once_errors_where_expected(infer, smollm2, tmp_path):
    rows, expect = mixed_rows()
    src, out = jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    proc = infer("batch", src, "-o", out, *on(smollm2), "--parallel", "4", "--seed", "1", *LIMIT, "--json")
    assert proc.returncode == 10, proc.stderr  # some lines failed
    lines = read_out(out)
    assert sorted(line["custom_id"] for line in lines) == sorted(expect)
    for line in lines:
        check_shape(line)
        assert (line["error"] or {}).get("code") == expect[line["custom_id"]], line
    summary = json.loads(proc.stdout)
    assert (summary["requests"], summary["ok"], summary["failed"]) == (30, 24, 6)
    assert summary["completion_tokens"] == sum(
        line["response"]["body"]["usage"]["completion_tokens"] for line in lines if line["response"])
    assert "24 ok · 6 failed" in proc.stderr and "6 of 30 lines failed" in proc.stderr
    rerun = infer("batch", src, "-o", out, *on(smollm2), "--parallel", "4", *LIMIT)
    assert rerun.returncode == 10 and "30 from an earlier run" in rerun.stderr
    assert len(read_out(out)) == 30


@model
@pytest.mark.parametrize("parallel", [1, 4])
def test_parallel_counts_complete(infer, smollm2, tmp_path, parallel):
    rows = [{"prompt": f"Count to {i}.", "custom_id": f"q{i}"} for i in range(9)]
    src, out = jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    proc = infer("batch", src, "-o", out, *on(smollm2), "--parallel", parallel, *LIMIT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # results go to the file; the summary to stderr
    assert "\x1b[" not in proc.stderr and proc.stderr.count("\n") == 1  # off a terminal: no bar, one line
    lines = read_out(out)
    assert sorted(line["custom_id"] for line in lines) == sorted(r["custom_id"] for r in rows)
    for line in lines:
        check_shape(line)
        assert line["error"] is None


@model
def test_same_seed_same_lines_at_parallel_1(infer, smollm2, tmp_path):
    rows = [{"prompt": f"Write a line about {i}.", "temperature": 0.9} for i in range(4)]
    src = jsonl(tmp_path / "in.jsonl", rows)

    def answers(name: str, seed: str) -> dict:
        out = tmp_path / name
        proc = infer("batch", src, "-o", out, *on(smollm2), "--parallel", "1", "--seed", seed, "-n", "16")
        assert proc.returncode == 0, proc.stderr
        return {r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"] for r in read_out(out)}

    first = answers("a.jsonl", "7")
    assert answers("b.jsonl", "7") == first
    assert answers("c.jsonl", "8") != first  # the base seed is really used


def slow_rows(n: int) -> list:
    # counting goes on for thousands of tokens: each line takes long enough to kill the run mid-way
    return [{"prompt": "1, 2, 3, 4, 5,", "raw": True, "custom_id": f"c{i}", "max_tokens": 40, "temperature": 0}
            for i in range(n)]


def wait_for_lines(path: Path, n: int, proc, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"batch ended early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    pytest.fail("no output line appeared")


@model
def test_kill_9_then_rerun_gives_every_line_once(infer, smollm2, tmp_path):
    rows = slow_rows(12)
    src, out = jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    args = ("batch", src, "-o", out, *on(smollm2), "--parallel", "2", "--ctx-size", "128")
    p = infer.popen(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_lines(out, 1, p)
    p.kill()
    p.wait(timeout=30)
    before = out.read_bytes()
    assert p.returncode == -signal.SIGKILL
    assert before.count(b"\n") < len(rows), "the run finished before the kill: make the lines longer"
    proc = infer(*args, timeout=900)
    assert proc.returncode == 0, proc.stderr
    lines = read_out(out)
    assert sorted(line["custom_id"] for line in lines) == sorted(r["custom_id"] for r in rows)
    assert all(line["error"] is None for line in lines)
    kept = before[:before.rfind(b"\n") + 1]
    assert out.read_bytes().startswith(kept)  # the rerun appended; it did not rewrite what was there


@model
def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(infer, smollm2, tmp_path):
    rows = slow_rows(12)
    src, out = jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    args = ("batch", src, "-o", out, *on(smollm2), "--parallel", "2", "--ctx-size", "128")
    p = infer.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_lines(out, 1, p)
    p.send_signal(signal.SIGINT)
    stdout, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert b"Traceback" not in err and b"interrupted" in err and b"rerun the same command" in err
    assert stdout == b""
    partial = read_out(out)  # whole lines only
    assert 1 <= len(partial) < len(rows)
    proc = infer(*args, "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["done_before"] == len(partial) and summary["ok"] == len(rows)
    assert sorted(line["custom_id"] for line in read_out(out)) == sorted(r["custom_id"] for r in rows)


@model
def test_empty_input_is_a_finished_batch(infer, smollm2, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"")
    proc = infer("batch", src, "-o", out, *on(smollm2), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["requests"] == 0
    assert out.read_bytes() == b""


@model
def test_stdin_input_and_stdout_output(infer, smollm2):
    proc = infer("batch", "-", *on(smollm2), *LIMIT, input='{"prompt": "Hi"}\n\n{"messages": [{"role": "user", '
                                                                 '"content": "Yo"}]}\n')
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["line-1", "line-3"]


@model
def test_duplicate_ids_are_refused_before_any_work(infer, smollm2, tmp_path):
    src = jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "custom_id": "x"}, {"prompt": "b", "custom_id": "x"}])
    out = tmp_path / "out.jsonl"
    proc = infer("batch", src, "-o", out, *on(smollm2))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "'x'" in proc.stderr and "lines 1 and 2" in proc.stderr
    assert not out.exists()


@model
def test_output_from_another_input_is_refused_unless_forced(infer, smollm2, tmp_path):
    out = tmp_path / "out.jsonl"
    first = jsonl(tmp_path / "a.jsonl", [{"prompt": "a"}])
    assert infer("batch", first, "-o", out, *on(smollm2), *LIMIT).returncode == 0
    second = jsonl(tmp_path / "b.jsonl", [{"prompt": "b"}, {"prompt": "c"}])
    proc = infer("batch", second, "-o", out, *on(smollm2), *LIMIT)
    assert proc.returncode == 2 and "another input" in proc.stderr and "--force" in proc.stderr
    assert len(read_out(out)) == 1
    assert infer("batch", second, "-o", out, *on(smollm2), *LIMIT, "--force").returncode == 0
    assert sorted(r["custom_id"] for r in read_out(out)) == ["line-1", "line-2"]


def read_only_dir(path: Path):
    """A directory nobody may write into, root included (chattr +i where chmod does not bind root)."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a filesystem without chattr +i: no directory is read-only")
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


@model
def test_output_in_a_read_only_directory(infer, smollm2, tmp_path):
    src = jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    undo = read_only_dir(tmp_path / "ro")
    try:
        proc = infer("batch", src, "-o", tmp_path / "ro" / "out.jsonl", *on(smollm2))
    finally:
        undo()
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "cannot write" in proc.stderr
    assert list((tmp_path / "ro").iterdir()) == []


@model
def test_progress_bar_on_a_terminal(infer, smollm2, tmp_path):
    import pexpect

    from conftest import infer_bin

    src, out = jsonl(tmp_path / "in.jsonl", slow_rows(6)), tmp_path / "out.jsonl"
    child = pexpect.spawn(infer_bin(), ["batch", str(src), "-o", str(out), *map(str, on(smollm2)), "--parallel", "2",
                                        "--ctx-size", "128"], env=infer.env, encoding="utf-8", timeout=300,
                          dimensions=(40, 120))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    import re

    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)
    assert re.search(r"batch .*\d/6 [\d.]+ tok/s", screen)  # the bar: lines done/total, the aggregate speed
    assert "batch done: 6/6 lines" in screen


def test_an_output_of_a_server_run_is_refused_for_a_local_one_and_back(tmp_path):
    out = tmp_path / "out.jsonl"
    local = {"format": 1, "input_sha256": "aa", "model": {"name": "m", "file": "m.gguf", "size": 1}}
    far = {**local, "model": {"host": "http://127.0.0.1:8080", "name": "m"}}
    core.open_output(out, far)
    out.write_text('{"custom_id": "a", "error": null}\n')
    with pytest.raises(UsageError, match="a run on the server at http://127.0.0.1:8080"):
        core.open_output(out, local)
    with pytest.raises(UsageError, match="another model|a run on the server"):
        core.open_output(out, {**far, "model": {"host": "http://10.0.0.1:80", "name": "m"}})
    assert core.open_output(out, far).ok == {"a"}
    core.open_output(out, local, force=True)
    out.write_text('{"custom_id": "a", "error": null}\n')
    with pytest.raises(UsageError, match="a local run"):
        core.open_output(out, far)


# -- prompt-lookup speculation (--lookup) -------------------------------------------------------
@model
@pytest.mark.parametrize("spec", ["lookup", "draft"])
def test_speculation_gives_the_same_answers_and_counts_its_drafts(infer, smollm2, tmp_path, spec):
    # The first line's const schema makes its answer a copy of its prompt whatever the model would say, so
    # drafts are certain to be proposed and kept (as in test_speculate.py).
    text = " ".join(f"item number {i}" for i in range(20))
    copy = {"type": "json_schema", "json_schema": {"name": "copy", "schema": {"type": "string", "const": text}}}
    rows = [full("copy", messages=[{"role": "user", "content": "Repeat this list exactly.\n\n" + text}],
                 temperature=0, max_tokens=200, response_format=copy)]
    rows += [{"prompt": f"Repeat: the cat {i} sat on the mat, the cat {i} sat on the mat.", "custom_id": f"q{i}",
              "temperature": 0, "max_tokens": 24} for i in range(3)]
    src = jsonl(tmp_path / "in.jsonl", rows)

    def run(name: str, *extra: str) -> tuple[dict, dict]:
        out = tmp_path / name
        proc = infer("batch", src, "-o", out, *on(smollm2), "--parallel", "1", "--json", *extra)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout), {r["custom_id"]: r["response"]["body"] for r in read_out(out)}

    plain_summary, plain = run("plain.jsonl")
    # --draft: the model drafting for itself, whose proposals at temperature 0 are its own greedy choices
    fast_summary, fast = run("fast.jsonl", *(["--lookup"] if spec == "lookup" else ["--draft", str(smollm2.path)]))
    assert {k: b["choices"][0]["message"]["content"] for k, b in fast.items()} == \
        {k: b["choices"][0]["message"]["content"] for k, b in plain.items()}
    assert {k: b["usage"]["completion_tokens"] for k, b in fast.items()} == \
        {k: b["usage"]["completion_tokens"] for k, b in plain.items()}
    kept = {k: b["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] for k, b in fast.items()}
    assert fast_summary["accepted_tokens"] == sum(kept.values())
    assert kept["copy"] > 0 if spec == "lookup" else sum(kept.values()) > 0
    assert 0 < fast_summary["accepted_tokens"] <= fast_summary["drafted_tokens"]
    assert plain_summary["drafted_tokens"] == 0
    assert all("completion_tokens_details" not in b["usage"] for b in plain.values())


@pytest.mark.parametrize("args", [["--draft-max", "4"], ["--lookup", "--ngram", "0"]])
def test_bad_lookup_values_are_refused_before_any_work(infer, tmp_path, args):
    src = jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    proc = infer("batch", src, *args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert not (tmp_path / "in.output.jsonl").exists()
