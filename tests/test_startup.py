"""Start-up is a feature: the light commands must not import the heavy libraries (structural, not timed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
