"""Start-up is a feature: the light commands must not import the heavy libraries (structural, not timed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import infer_bin

HEAVY = ("llama_cpp", "huggingface_hub", "gguf", "numpy", "jinja2", "fastapi", "starlette", "uvicorn", "prometheus_client",
         "pydantic", "httpx")

PROBE = """
import json, sys
from infer.cli.app import main
try:
    main({args!r})
except SystemExit:
    pass
sys.stderr.write("\\n@@" + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)) + "\\n")
"""


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["pull", "--help"], ["list"], ["catalog"],
                                  ["--version"], ["serve", "--help"], ["ps", "--help"]])
def test_light_commands_import_no_heavy_module(args, infer):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)], capture_output=True,
                          text=True, env=infer.env, timeout=60)
    marker = [line for line in proc.stderr.splitlines() if line.startswith("@@")]
    assert marker, proc.stderr
    assert json.loads(marker[-1][2:]) == []


def test_a_completion_request_imports_no_heavy_module(infer):
    env = {**infer.env, "_INFER_COMPLETE": "complete_bash", "COMP_WORDS": "infer run -m sm", "COMP_CWORD": "3"}
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=[], heavy=HEAVY)], capture_output=True,
                          text=True, env=env, timeout=60)
    assert "smollm2" in proc.stdout
    marker = [line for line in proc.stderr.splitlines() if line.startswith("@@")]
    assert marker, proc.stderr
    assert json.loads(marker[-1][2:]) == []


@pytest.mark.model
def test_run_imports_no_server_module(pulled, smollm2):
    server_stack = ("fastapi", "starlette", "uvicorn", "prometheus_client", "infer.server")
    args = ["run", "-m", str(smollm2.path), "-n", "1", "--temperature", "0", "hi"]
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=server_stack)], capture_output=True,
                          text=True, env=pulled.env, timeout=120)
    marker = [line for line in proc.stderr.splitlines() if line.startswith("@@")]
    assert marker, proc.stderr
    assert json.loads(marker[-1][2:]) == []


ENTRY_PROBE = """
import json, sys
sys.argv = ["infer", *{args!r}]
from infer.cli import entry
try:
    entry()
except SystemExit:
    pass
sys.stderr.write("\\n@@" + json.dumps(sorted(m for m in ("typer", "click", "rich", *{heavy!r}) if m in sys.modules)) + "\\n")
"""


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--version"], ["-V"]])
def test_version_and_root_help_import_not_even_typer(args, infer):
    env = {**infer.env, "COLUMNS": "100"}
    proc = subprocess.run([sys.executable, "-c", ENTRY_PROBE.format(args=args, heavy=HEAVY)], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    marker = [line for line in proc.stderr.splitlines() if line.startswith("@@")]
    assert marker, proc.stderr
    assert json.loads(marker[-1][2:]) == []


TYPER_HELP = "from infer.cli.app import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"


@pytest.mark.parametrize("columns", ["80", "100", "200", "60"])
def test_root_help_is_what_typer_prints_at_any_width(columns, infer):
    env = {**infer.env, "COLUMNS": columns}
    ours = infer("--help", env=env)
    typers = subprocess.run([sys.executable, "-c", TYPER_HELP], capture_output=True, text=True, env=env, timeout=60)
    assert ours.returncode == 0 and ours.stderr == ""
    assert ours.stdout == typers.stdout
    assert ours.stdout.startswith("Usage: infer [OPTIONS] COMMAND [ARGS]...")
    assert infer("-h", env=env).stdout == ours.stdout


def test_version_names_both_installed_versions(infer):
    from importlib import metadata

    from infer import __version__

    proc = infer("--version")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == f"infer {__version__} (llama-cpp-python {metadata.version('llama_cpp_python')})\n"
    assert infer("-V").stdout == proc.stdout
    assert infer("--no-color", "--version").stdout == proc.stdout  # the Typer path says the same


def test_a_command_that_ends_early_still_writes_all_its_output_to_a_file(infer, tmp_path):
    # a successful command skips the interpreter's teardown (cli/app.py exit_now): buffers are flushed first
    out = tmp_path / "catalog.json"
    with out.open("w") as f:
        proc = subprocess.run([infer_bin(), "catalog", "--json"], stdout=f, stderr=subprocess.PIPE, text=True,
                              env=infer.env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data and out.read_text().endswith("\n")
