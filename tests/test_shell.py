"""Shell integration: generated files in sync, real bash completion, help texts, colour rules."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from conftest import infer_bin

ROOT = Path(__file__).resolve().parents[1]


def test_generated_completions_and_readme_reference_are_in_sync():
    proc = subprocess.run([sys.executable, "-m", "infer.cli.docs", "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def bash_complete(env: dict, words: str) -> list[str]:
    """Complete like bash does on TAB: source the committed script and call its function."""
    script = f"""
source {ROOT / 'completions' / 'infer.bash'}
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
[[ "{words}" == *" " ]] && COMP_CWORD=${{#COMP_WORDS[@]}}
_infer_completion infer
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    path = f"{Path(infer_bin()).parent}:{env.get('PATH', '')}"
    proc = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True, timeout=30,
                          env={**env, "PATH": path})
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_bash_completes_model_names_commands_and_options(infer):
    assert "smollm2" in bash_complete(infer.env, "infer run -m sm")
    assert bash_complete(infer.env, "infer ru") == ["run"]
    assert "--temperature" in bash_complete(infer.env, "infer run --te")
    assert "qwen2.5:0.5b" in bash_complete(infer.env, "infer pull qwen")
    assert set(bash_complete(infer.env, "infer completion ")) >= {"bash", "zsh", "fish"}


def test_pulled_models_complete_first(pulled):
    assert bash_complete(pulled.env, "infer rm s")[0] == "smollm2"


def test_completion_command_prints_each_script(infer):
    for shell, name in (("bash", "infer.bash"), ("zsh", "_infer"), ("fish", "infer.fish")):
        proc = infer("completion", shell)
        assert proc.returncode == 0 and proc.stdout == (ROOT / "completions" / name).read_text()
    bad = infer("completion", "tcsh")
    assert bad.returncode == 2 and "bash, zsh or fish" in bad.stderr


def test_every_command_has_summary_examples_and_environment(infer):
    top = infer("--help").stdout
    commands = re.findall(r"^  (\w+)\s{2,}\S", top.split("Commands:")[1], re.M)
    assert {"run", "chat", "pull", "list", "show", "rm", "verify", "catalog", "bench", "completion"} <= set(commands)
    for name in commands:
        text = infer(name, "--help").stdout
        assert "Example" in text, name
        assert "Environment: " in text and "INFER_HOME" in text, name
    assert "INFER_MODEL," in infer("run", "--help").stdout
    assert "HF_TOKEN" in infer("pull", "--help").stdout


def test_version_names_llama_cpp(infer):
    proc = infer("--version")
    assert re.match(r"^infer \d+\.\d+\.\d+ \(llama-cpp-python [\w.]+\)$", proc.stdout.strip())


@pytest.mark.parametrize("how", [{"NO_COLOR": "1"}, {"TERM": "dumb"}, "--no-color"])
def test_no_escape_codes_when_colour_is_off(pulled, how):
    env = {**pulled.env, **(how if isinstance(how, dict) else {})}
    args = (["--no-color"] if how == "--no-color" else []) + ["list"]
    child = pexpect.spawn(infer_bin(), args, env=env, encoding="utf-8", timeout=30, dimensions=(30, 120))
    child.expect(pexpect.EOF)
    assert "smollm2" in child.before and "\x1b[" not in child.before
    # and with colour allowed, the same table on a terminal is styled
    plain_env = {k: v for k, v in pulled.env.items() if k not in ("NO_COLOR",)}
    plain_env["TERM"] = "xterm-256color"
    styled = pexpect.spawn(infer_bin(), ["list"], env=plain_env, encoding="utf-8", timeout=30, dimensions=(30, 120))
    styled.expect(pexpect.EOF)
    assert "\x1b[" in styled.before
