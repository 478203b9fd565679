"""Ctrl-C at any instant after Enter stops that turn only: the chat returns to the prompt, answers the
next message, and the saved history stays consistent (every user message is followed by an answer,
complete or marked interrupted). Delays cover: before the message is taken, before the first token,
during prefill, between tokens, while rendering and saving. Nothing here depends on what the model says
or on how fast this machine is: any delay must give the same behaviour."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pexpect
import pytest

from conftest import infer_bin, seed

pytestmark = pytest.mark.model

DELAYS_MS = (0, 1, 5, 50, 500)
ROUNDS = int(os.environ.get("INFER_TEST_INTERRUPT_ROUNDS", "3"))


def spawn(env: dict, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(infer_bin(), ["chat", *args], env=env, encoding="utf-8", timeout=120, dimensions=(40, 120))
    if os.environ.get("INFER_TEST_PTY_LOG"):
        child.logfile_read = open(os.environ["INFER_TEST_PTY_LOG"], "a")  # noqa: SIM115 - kept for the child's life
    return child


def saved(home: str) -> dict:
    files = sorted((Path(home) / "data" / "chats").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(files[-1].read_text())


def check_history(messages: list[dict]) -> None:
    roles = [m["role"] for m in messages]
    assert roles == ["user", "assistant"] * (len(roles) // 2), roles


@pytest.mark.parametrize("mode", ["--plain", "--markdown"])
def test_ctrl_c_at_any_instant_after_enter_stops_only_that_turn(pulled, mode):
    env = dict(pulled.env)
    args = ["-n", "48", "--seed", str(seed(7))]
    if mode == "--plain":
        args.append("--plain")
    else:
        env.pop("NO_COLOR", None)
        env["TERM"] = "xterm-256color"
    c = spawn(env, *args)
    c.expect(">>> ")
    swallowed: list[int] = []
    for _ in range(ROUNDS):
        for delay in DELAYS_MS:
            c.sendline(f"Write a long story about the number {delay}.")
            time.sleep(delay / 1000)
            c.sendintr()
            if c.expect([">>> ", pexpect.TIMEOUT], timeout=10) == 1:
                # A Ctrl-C that lands while readline is taking the Enter key can be swallowed on the terminal's
                # side (the line and the signal both flushed): the chat is still at its prompt, silent.
                # It must still be there: an empty line brings the prompt back.
                swallowed.append(delay)
                c.sendline("")
                c.expect(">>> ")
            c.sendline("/stats")  # a command read at the prompt (and it disarms the double Ctrl-C)
            c.expect("messages")
            c.expect(">>> ")
    c.sendline("Say hello.")
    c.expect("tok/s")  # the stats line after a complete answer: the chat still answers
    c.expect(">>> ")
    c.sendline("/bye")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0, c.before
    assert "Traceback" not in c.before
    messages = saved(env["INFER_HOME"])["messages"]
    check_history(messages)
    assert messages[-2]["content"] == "Say hello." and not messages[-1].get("interrupted")
    # no turn was half-written: every kept answer is either complete or marked interrupted
    assert all(isinstance(m["content"], str) for m in messages)
    assert len(swallowed) < len(DELAYS_MS) * ROUNDS  # most interrupts reached the chat
