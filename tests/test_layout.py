"""The shape of the CLI package: the root (cli/app.py) only registers commands, and nothing imports
it back but the console script and the docs generator (structural: no model, no network)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from infer.cli import options as o  # at module level: the annotations below are resolved in this module

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


def test_shared_options_expand_in_place_and_arrive_as_one_object():
    import typer
    from typer.testing import CliRunner

    seen = {}
    app = typer.Typer(rich_markup_mode=None)  # as the real root: one list of options, in order

    @app.command()
    @o.shared_options
    def cmd(pick: o.ModelArgs = o.ModelArgs(), sampling: o.SamplingArgs = o.SamplingArgs(),
            flag: bool = typer.Option(False, "--flag"), hardware: o.HardwareArgs = o.LoadArgs()) -> None:
        seen.update(pick=pick, sampling=sampling, flag=flag, hardware=hardware)

    result = CliRunner().invoke(app, ["-m", "x", "--temp", "0.5", "--stop", "a", "--stop", "b", "--flag", "-t", "2"])
    assert result.exit_code == 0, result.output
    assert seen["pick"] == o.ModelArgs(model="x")
    assert seen["sampling"] == o.SamplingArgs(temperature=0.5, stop=["a", "b"])
    assert seen["sampling"].given() == {"temperature": 0.5, "stop": ["a", "b"]}
    assert seen["flag"] is True and seen["hardware"] == o.LoadArgs(threads=2)
    assert CliRunner().invoke(app, ["--ctx-size", "64"]).exit_code == 2  # omitted from HardwareArgs
    help_text = CliRunner().invoke(app, ["--help"]).output
    order = [help_text.index(flag) for flag in ("--model", "--temperature", "--stop", "--flag", "--threads", "--no-mmap")]
    assert order == sorted(order)  # each group's options stand where the group was named


def test_only_the_engine_imports_llama_cpp():
    src = CLI.parent
    importers = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                       if re.search(r"^\s*(import llama_cpp|from llama_cpp\b)", p.read_text(), re.M))
    assert importers and all(p.startswith("engine/") for p in importers), importers
