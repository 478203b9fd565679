"""`infer chat` in a real pseudo-terminal (pexpect) and as a script, with the real SmolLM2 model."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

from conftest import infer_bin

pytestmark = pytest.mark.model


def spawn(env: dict, *args: str, timeout: float = 90) -> pexpect.spawn:
    return pexpect.spawn(infer_bin(), ["chat", *args], env=env, encoding="utf-8", timeout=timeout,
                         dimensions=(40, 120))


def saved(home: str) -> dict:
    files = sorted((Path(home) / "data" / "chats").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(files[-1].read_text())


def say(child: pexpect.spawn, text: str) -> str:
    child.sendline(text)
    child.expect(">>> ")
    return child.before


def test_two_turns_system_set_stats_and_ctrl_d(pulled):
    c = spawn(pulled.env, "-n", "24", "--seed", "1")
    c.expect(">>> ")
    say(c, "/system You are a pirate.")
    say(c, "/set temperature 0")
    first = say(c, "Hello! Who are you?")
    assert "tok/s" in first  # the stats line after the answer
    say(c, "And what do you like?")
    stats = say(c, "/stats")
    assert "of 4096 tokens used" in stats and "4 messages" in stats
    bad = say(c, "/set temperature hot")
    assert "temperature must be" in bad
    typo = say(c, "/sytem hi")
    assert "did you mean /system" in typo
    c.sendeof()
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    data = saved(pulled.env["INFER_HOME"])
    assert data["system"] == "You are a pirate." and data["options"] == {"temperature": 0.0}
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"] * 2
    assert data["model"] == "smollm2"


def test_save_load_round_trip_and_bad_files(pulled, tmp_path):
    target = tmp_path / "conv.json"
    c = spawn(pulled.env, "-n", "12", "--seed", "2", "--quiet")
    c.expect(">>> ")
    say(c, "Name a fruit.")
    say(c, "/set top_k 7")
    say(c, f"/save {target}")
    assert json.loads(target.read_text())["options"] == {"top_k": 7}
    say(c, "/clear")
    assert "0 messages" in say(c, "/stats")
    say(c, f"/load {target}")
    assert "2 messages" in say(c, "/stats")
    assert "cannot read" in say(c, f"/load {tmp_path / 'missing.json'}")
    (tmp_path / "bad.json").write_text("{not json")
    assert "not JSON" in say(c, f"/load {tmp_path / 'bad.json'}")
    (tmp_path / "wrong.json").write_text('{"messages": [{"role": "wizard", "content": "x"}]}')
    assert "not a saved conversation" in say(c, f"/load {tmp_path / 'wrong.json'}")
    assert "2 messages" in say(c, "/stats")  # a failed load changes nothing
    c.sendline("/bye")
    c.expect(pexpect.EOF)


def test_ctrl_c_mid_answer_keeps_it_then_continues_and_resume(pulled):
    c = spawn(pulled.env, "--seed", "3", "--temperature", "0", "--plain")
    c.expect(">>> ")
    # At temperature 0 this model answers this by repeating one line until the context is full.
    c.sendline('"""')
    c.sendline("Two lines")
    c.sendline("of text")
    c.sendline('"""')
    c.expect('"""\r\n')  # the closing fence echoed back ...
    c.expect(r"\w+ \w+ \w+ \w+")  # ... then the answer streams (this one runs to the context limit)
    c.sendintr()
    c.expect("interrupted")
    c.expect(">>> ")
    after = say(c, "/set max_tokens 8")
    assert "max_tokens = 8" in after
    say(c, "Thanks. Say ok.")
    c.sendeof()
    c.expect(pexpect.EOF)
    data = saved(pulled.env["INFER_HOME"])
    assert data["messages"][1]["interrupted"] is True and data["messages"][1]["content"]
    assert len(data["messages"]) == 4
    # --resume continues that conversation
    r = spawn(pulled.env, "--resume", "-n", "4")
    r.expect("resumed 4 messages")
    r.expect(">>> ")
    assert "4 messages" in say(r, "/stats")
    r.sendline("/bye")
    r.expect(pexpect.EOF)


def test_ctrl_c_at_the_prompt_asks_once_then_leaves(pulled):
    c = spawn(pulled.env, "-n", "4")
    c.expect(">>> ")
    c.sendintr()
    c.expect("Ctrl-C again")
    c.expect(">>> ")
    c.sendintr()
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0


@pytest.mark.parametrize("delay", [0.2, 0.5, 0.8])
def test_ctrl_c_while_loading_ends_cleanly(pulled, delay):
    """Ctrl-C at any point of start-up ends the program with no traceback (llama.cpp's log callback
    must not swallow it). A signal that lands after loading meets the prompt, which asks once."""
    c = spawn(pulled.env, "-n", "4")
    time.sleep(delay)
    c.sendintr()
    if c.expect([pexpect.EOF, "Ctrl-C again"]) == 1:
        c.sendintr()
        c.expect(pexpect.EOF)
    c.close()
    assert "Traceback" not in c.before and "Exception ignored" not in c.before
    assert c.exitstatus in (0, 130) or c.signalstatus == 2


def test_small_context_drops_old_turns_and_goes_on(pulled):
    c = spawn(pulled.env, "-c", "320", "-n", "40", "--seed", "4", "--temperature", "0.7", "--plain", timeout=240)
    c.expect(">>> ")
    dropped = False
    for i in range(6):  # ~60 tokens a turn: the 280 tokens left after the answer's reserve fill by turn 5
        out = say(c, f"Tell me one fact about the number {i}.")
        dropped = dropped or "dropped to fit the 320-token context" in out
    assert dropped
    too_long = say(c, "word " * 400)
    assert "this message needs" in too_long
    ok = say(c, "Say hi.")
    assert "tok/s" in ok  # the conversation continues
    c.sendline("/bye")
    c.expect(pexpect.EOF)


def test_retry_undo_and_model_switch(pulled, smollm2):
    c = spawn(pulled.env, "-n", "10", "--seed", "5")
    c.expect(">>> ")
    say(c, "Name an animal.")
    assert "tok/s" in say(c, "/retry")
    assert "2 messages" in say(c, "/stats")
    assert "removed 2 message" in say(c, "/undo")
    say(c, "Name a colour.")
    switched = say(c, f"/model {smollm2.path}")
    assert "now chatting with" in switched and "history kept" in switched
    assert "2 messages" in say(c, "/stats")
    c.sendline("/bye")
    c.expect(pexpect.EOF)


def test_multiline_fence_and_pasted_text(pulled, tmp_path):
    c = spawn(pulled.env, "-n", "4", "--quiet")
    c.expect(">>> ")
    c.sendline('"""')
    c.sendline("line one")
    c.sendline('line two"""')
    c.expect(">>> ")
    c.send("\x1b[200~pasted one\npasted two\x1b[201~\r")  # a terminal's bracketed paste
    c.expect(">>> ")
    say(c, f"/save {tmp_path / 'm.json'}")
    users = [m["content"] for m in json.loads((tmp_path / "m.json").read_text())["messages"] if m["role"] == "user"]
    assert users == ["line one\nline two", "pasted one\npasted two"]
    c.sendline("/bye")
    c.expect(pexpect.EOF)


def test_scripted_mode_from_piped_stdin(pulled):
    script = 'Hi!\n/set temperature 0\n"""\nName two\ncolours.\n"""\n\nSay bye.\n'
    proc = subprocess.run([infer_bin(), "chat", "-n", "12", "--quiet"], input=script, capture_output=True,
                          text=True, env=pulled.env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    answers = [a for a in proc.stdout.split("\n") if a.strip()]
    assert len(answers) >= 3
    assert "temperature = 0" in proc.stderr and "tok/s" not in proc.stderr
    data = saved(pulled.env["INFER_HOME"])
    assert [m["content"] for m in data["messages"] if m["role"] == "user"] == ["Hi!", "Name two\ncolours.", "Say bye."]


def test_model_without_chat_template_falls_back_once(pulled, smollm2, tmp_path):
    bare = tmp_path / "bare.gguf"
    subprocess.run([__import__("sys").executable, "-m", "gguf.scripts.gguf_new_metadata", "--force", "--remove-metadata",
                    "tokenizer.chat_template", str(smollm2.path), str(bare)], check=True, capture_output=True)
    proc = subprocess.run([infer_bin(), "chat", "-m", str(bare), "-n", "6", "--quiet"], input="Hi\nHello\n",
                          capture_output=True, text=True, env=pulled.env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("no chat template") == 1
