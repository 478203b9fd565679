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


@pytest.mark.parametrize("installed", [True, False])
def test_a_ctrl_c_swallowed_by_a_callback_is_delivered_again(installed):
    """A KeyboardInterrupt raised inside a weakref callback (as in the import system's module locks, where a
    Ctrl-C during a chat's start-up once landed and was lost) reaches the program's SIGINT handler again."""
    import subprocess
    import sys

    code = f"""
import signal, threading, weakref
from infer import interrupts
if {installed}:
    interrupts.install()
got = threading.Event()
signal.signal(signal.SIGINT, lambda *a: got.set())
class Thing: pass
thing = Thing()
ref = weakref.ref(thing, lambda r: (_ for _ in ()).throw(KeyboardInterrupt()))
del thing  # the callback raises; Python cannot propagate it
print("delivered" if got.wait(30 if {installed} else 0.5) else "lost")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    if installed:
        assert proc.stdout.strip() == "delivered" and "Exception ignored" not in proc.stderr
    else:  # what Python does on its own: the interrupt is dropped (this test would not notice a fix otherwise)
        assert proc.stdout.strip() == "lost" and "KeyboardInterrupt" in proc.stderr


@pytest.mark.parametrize("bufts, env, avoided", [
    (["AMX", "CPU_REPACK"], None, True), (["AMX", "CPU_REPACK"], "1", False), (["CPU_REPACK"], None, False), ([], None, False)])
def test_loads_keep_weights_out_of_the_crashing_amx_buffers_unless_asked(monkeypatch, bufts, env, avoided):
    from infer.engine import native as model

    monkeypatch.setitem(model._GGML, "cpu_bufts", bufts)
    if env is None:
        monkeypatch.delenv("INFER_CPU_AMX", raising=False)
    else:
        monkeypatch.setenv("INFER_CPU_AMX", env)
    assert model.amx_avoided() is avoided


def test_the_cpu_weight_buffers_are_read_from_this_build():
    import platform

    from infer.engine import native as model

    model._GGML.pop("cpu_bufts", None)
    names = model.cpu_weight_buffers()
    assert all(isinstance(n, str) and n for n in names)
    if platform.machine() in ("x86_64", "AMD64"):
        assert "CPU_REPACK" in names  # llama.cpp's default x86 build repacks Q4_0/Q4_K/IQ4_NL weights
