"""`infer chat` in a real pseudo-terminal (pexpect) and as a script, with the real SmolLM2 model.

Nothing here depends on what the model answers: the context is filled by user messages of known size
with answers capped by -n, and an answer that might end before a Ctrl-C lands is simply asked again."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from conftest import infer_bin, seed

pytestmark = pytest.mark.model

STATS = re.compile(r"\d+ tokens \S [\d.]+ s to first token \S [\d.]+ tok/s")


def spawn(env: dict, *args: str, timeout: float = 90) -> pexpect.spawn:
    # A terminal that says what it is (CI often sets no TERM, and readline treats that as a dumb terminal).
    return pexpect.spawn(infer_bin(), ["chat", *args], env={**env, "TERM": "xterm"}, encoding="utf-8",
                         timeout=timeout, dimensions=(40, 120))


def saved(home: str) -> dict:
    files = sorted((Path(home) / "data" / "chats").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(files[-1].read_text())


def say(child: pexpect.spawn, text: str) -> str:
    """Send a command (or a message with --quiet) and return what came before the next prompt."""
    child.sendline(text)
    child.expect(">>> ")
    return child.before


def ask(child: pexpect.spawn, text: str) -> str:
    """Send a message and return everything up to its stats line: the answer itself may contain '>>> '."""
    child.sendline(text)
    child.expect(STATS)
    out = child.before + child.after
    child.expect(">>> ")
    return out


def test_two_turns_system_set_stats_and_ctrl_d(pulled):
    c = spawn(pulled.env, "-n", "24", "--seed", seed(1))
    c.expect(">>> ")
    say(c, "/system You are a pirate.")
    say(c, "/set temperature 0")
    ask(c, "Hello! Who are you?")  # a stats line follows the answer
    ask(c, "And what do you like?")
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
    c = spawn(pulled.env, "-n", "12", "--seed", seed(2))
    c.expect(">>> ")
    ask(c, "Name a fruit.")
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
    c = spawn(pulled.env, "--temperature", "0.8", "--plain")
    c.expect(">>> ")
    # Ctrl-C once the answer is streaming. How long an answer runs is the model's choice: one that ended before
    # the signal landed meets the prompt instead ("Ctrl-C again"), and the question is asked again, other seed.
    finished = 0
    for attempt in range(6):
        say(c, f"/set seed {seed(30 + attempt)}")
        question = f"Write a long story about dragon number {attempt}."
        c.sendline(question)
        c.expect(re.escape(question) + "\r\n")  # the message echoed back ...
        c.expect("[A-Za-z]{2}")  # ... then the answer streams
        c.sendintr()
        if c.expect(["interrupted", "Ctrl-C again"]) == 0:
            break
        finished += 1
        c.expect(">>> ")
    else:
        pytest.fail("six answers in a row ended before a Ctrl-C sent on their first word")
    c.expect(">>> ")
    after = say(c, "/set max_tokens 8")
    assert "max_tokens = 8" in after
    ask(c, "Thanks. Say ok.")  # the chat goes on: a stats line follows the answer
    c.sendeof()
    c.expect(pexpect.EOF)
    data = saved(pulled.env["INFER_HOME"])
    messages = data["messages"]
    assert len(messages) == 2 * finished + 4
    assert [m["interrupted"] for m in messages] == [False] * (2 * finished + 1) + [True, False, False]
    assert messages[2 * finished + 1]["content"]  # the partial answer, kept
    # --resume continues that conversation
    r = spawn(pulled.env, "--resume", "-n", "4")
    r.expect(f"resumed {len(messages)} messages")
    r.expect(">>> ")
    assert f"{len(messages)} messages" in say(r, "/stats")
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
    """The context fills by known sizes, not by the answers' length: each message is ~100 tokens and each answer
    at most 8 (-n 8, which is also the reserve), so 312 of the 320 tokens are for the history. Two turns fit
    (~30 system + 2 x ~105 + <= 13 <= ~255) whatever the answers; three never do (>= ~30 + 3 x ~105 > 312)."""
    c = spawn(pulled.env, "-c", "320", "-n", "8", "--seed", seed(4), "--plain", timeout=240)
    c.expect(">>> ")
    message = " ".join(["word"] * 100)
    notes = [ask(c, message) for _ in range(4)]
    assert ["dropped to fit" in n for n in notes] == [False, False, True, True]
    assert "(1 oldest turn dropped to fit the 320-token context)" in notes[2]
    assert "8 messages" in say(c, "/stats")  # dropped from the prompt, not from the history
    too_long = say(c, "word " * 400)
    assert "this message needs" in too_long
    assert "8 messages" in say(c, "/stats")  # the refused message is not kept
    ask(c, "Say hi.")  # the conversation continues: a stats line follows the answer
    assert "10 messages" in say(c, "/stats")
    c.sendline("/bye")
    c.expect(pexpect.EOF)


def test_retry_undo_and_model_switch(pulled, smollm2):
    c = spawn(pulled.env, "-n", "10", "--seed", seed(5))
    c.expect(">>> ")
    ask(c, "Name an animal.")
    ask(c, "/retry")
    assert "2 messages" in say(c, "/stats")
    assert "removed 2 message" in say(c, "/undo")
    ask(c, "Name a colour.")
    switched = say(c, f"/model {smollm2.path}")
    assert "now chatting with" in switched and "history kept" in switched
    assert "2 messages" in say(c, "/stats")
    c.sendline("/bye")
    c.expect(pexpect.EOF)


def users_in(child: pexpect.spawn, path: Path) -> list[str]:
    say(child, f"/save {path}")
    return [m["content"] for m in json.loads(path.read_text())["messages"] if m["role"] == "user"]


def test_multiline_fence(pulled, tmp_path):
    c = spawn(pulled.env, "-n", "4")
    c.expect(">>> ")
    c.sendline('"""')
    c.sendline("line one")
    c.sendline('line two"""')
    c.expect(STATS)
    c.expect(">>> ")
    assert users_in(c, tmp_path / "m.json") == ["line one\nline two"]
    c.sendline("/bye")
    c.expect(pexpect.EOF)


def _readline_pastes_by_default() -> bool:
    """GNU readline turns bracketed paste on by default from 8.1; older ones and libedit do not."""
    import readline

    return "libedit" not in (readline.__doc__ or "") and getattr(readline, "_READLINE_VERSION", 0) >= 0x0801


@pytest.mark.skipif(not _readline_pastes_by_default(), reason="this readline has no bracketed paste by default")
def test_pasted_text_is_one_message(pulled, tmp_path):
    c = spawn(pulled.env, "-n", "4")
    c.expect(">>> ")
    c.send("\x1b[200~pasted one\npasted two\x1b[201~\r")  # a terminal's bracketed paste
    c.expect(STATS)
    c.expect(">>> ")
    assert users_in(c, tmp_path / "m.json") == ["pasted one\npasted two"]
    c.sendline("/bye")
    c.expect(pexpect.EOF)


def test_scripted_mode_from_piped_stdin(pulled):
    script = 'Hi!\n/set temperature 0\n"""\nName two\ncolours.\n"""\n\nSay bye.\n'
    proc = subprocess.run([infer_bin(), "chat", "-n", "12", "--seed", seed(6), "--quiet"], input=script,
                          capture_output=True, text=True, env=pulled.env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "temperature = 0" in proc.stderr and "tok/s" not in proc.stderr
    data = saved(pulled.env["INFER_HOME"])
    assert [m["content"] for m in data["messages"] if m["role"] == "user"] == ["Hi!", "Name two\ncolours.", "Say bye."]
    answers = [m["content"] for m in data["messages"] if m["role"] == "assistant"]
    assert len(answers) == 3
    # stdout is the answers and nothing else, each ended by a newline
    assert proc.stdout == "".join(a if a.endswith("\n") else a + "\n" for a in answers)


def test_model_without_chat_template_falls_back_once(pulled, smollm2, tmp_path):
    bare = tmp_path / "bare.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--force", "--remove-metadata",
                    "tokenizer.chat_template", str(smollm2.path), str(bare)], check=True, capture_output=True)
    proc = subprocess.run([infer_bin(), "chat", "-m", str(bare), "-n", "6", "--quiet"], input="Hi\nHello\n",
                          capture_output=True, text=True, env=pulled.env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("no chat template") == 1
