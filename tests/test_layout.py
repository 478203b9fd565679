"""The shape of the CLI package: the root (cli/app.py) only registers commands, and nothing imports
it back but the console script and the docs generator (structural: no model, no network)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CLI = Path(__file__).resolve().parents[1] / "src" / "infer" / "cli"


def test_no_cli_module_imports_the_root_but_the_entry_point_and_the_docs_generator():
    importers = {p.name for p in CLI.glob("*.py") if re.search(r"from infer\.cli\.app import|import infer\.cli\.app|"
                                                               r"from infer\.cli import app\b", p.read_text())}
    assert importers <= {"__init__.py", "docs.py"}, importers


def test_every_command_module_imports_without_the_root():
    modules = sorted(p.stem for p in CLI.glob("*.py") if p.stem not in ("__init__", "app"))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module('infer.cli.' + m)\n"
            "print('infer.cli.app' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
