"""Every command ends quietly with 0 when stdout's reader goes away (`infer list | head -1`)."""

from __future__ import annotations

import subprocess

import pytest

from conftest import infer_bin

COMMANDS = [
    ["--help"], ["--version"], ["run", "--help"], ["chat", "--help"],
    ["list"], ["list", "--json"], ["ls"],
    ["catalog"], ["catalog", "--json"],
    ["show", "smollm2"], ["show", "smollm2", "--json"], ["show", "smollm2", "--template"],
    ["verify", "--json"],
    ["doctor"], ["doctor", "--json"],
    ["completion", "bash"], ["completion", "zsh"], ["completion", "fish"],
    ["run", "--raw", "-t", "1", "-n", "8", "Once upon a time"],
    ["run", "--json", "-t", "1", "-n", "8", "Hello"],
    ["chat", "--plain", "--quiet", "-t", "1", "-n", "8"],
    ["bench", "-t", "1", "-p", "8", "-n", "4", "-r", "1", "--json"],
]


def closed_early(env: dict, args: list[str], read: int) -> subprocess.CompletedProcess:
    """Run `infer ARGS`, read `read` bytes of its stdout (0: none), then close the pipe's read end."""
    proc = subprocess.Popen([infer_bin(), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    if read:
        proc.stdout.read(read)
    proc.stdout.close()
    try:
        proc.stdin.write(b"Hi!\n")  # chat reads its script from stdin; the others ignore it (and may be gone)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read()
    code = proc.wait(timeout=300)
    return subprocess.CompletedProcess(args, code, b"", err)


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_closed_stdout_ends_quietly_with_0(pulled, args):
    proc = closed_early(pulled.env, args, read=0)
    assert (proc.returncode, proc.stderr.decode()) == (0, "")


@pytest.mark.parametrize("args", [["--help"], ["list"], ["catalog"], ["show", "smollm2"], ["doctor", "--json"],
                                  ["completion", "bash"]], ids=" ".join)
def test_a_reader_that_stops_after_one_byte_ends_it_quietly(pulled, args):  # `infer ... | head -c 1`
    proc = closed_early(pulled.env, args, read=1)
    assert (proc.returncode, proc.stderr.decode()) == (0, "")


def test_errors_still_fail_when_stdout_is_closed(pulled):
    proc = closed_early(pulled.env, ["show", "no-such-model-here"], 0)
    assert proc.returncode == 3 and b"no-such-model-here" in proc.stderr
