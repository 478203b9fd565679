"""What a person sees on a real terminal (a pseudo-terminal via pexpect)."""

from __future__ import annotations

import pexpect
import pytest

from conftest import infer_bin

REPO = "acme/tty-GGUF"


def spawn(env: dict, *args: str) -> pexpect.spawn:
    return pexpect.spawn(infer_bin(), list(args), env=env, encoding="utf-8", timeout=60, dimensions=(40, 120))


def test_pull_shows_a_progress_bar_and_rm_asks_first(fault_hub, infer):
    import os

    fault_hub.add(REPO, "tty-Q4_K_M.gguf", b"GGUF" + os.urandom(3_000_000), throttle=0.01)
    env = {**infer.env, "HF_ENDPOINT": fault_hub.url}
    child = spawn(env, "pull", REPO)
    child.expect(r"MB/s|kB/s")  # the bar's transfer speed column
    child.expect("sha256 verified")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    child = spawn(env, "rm", REPO)
    child.expect(r"Remove acme/tty-GGUF \(3\.0 MB\)\? \[y/N\]")
    child.sendline("n")
    child.expect("nothing removed")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert REPO in infer("list").stdout

    child = spawn(env, "rm", REPO)
    child.expect(r"\[y/N\]")
    child.sendline("y")
    child.expect("freed 3.0 MB")
    child.expect(pexpect.EOF)


@pytest.mark.parametrize("env_extra", [{"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_no_colour_when_asked(fault_hub, infer, env_extra):
    fault_hub.add(REPO, "tty-Q4_K_M.gguf", b"GGUF" + b"x" * 1000)
    env = {**infer.env, "HF_ENDPOINT": fault_hub.url, **env_extra}
    child = spawn(env, "pull", "acme/missing-GGUF")
    child.expect(pexpect.EOF)
    assert "\x1b[" not in child.before
    assert "not found" in child.before
