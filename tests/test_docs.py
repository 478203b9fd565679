"""The README tells the truth about CI and the environment variables."""

from __future__ import annotations

from pathlib import Path

from infer import settings

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert len(ci) == 1
    assert f"\n{ci[0]}\n" in (ROOT / "README.md").read_text()


def test_readme_documents_every_user_facing_variable():
    readme = (ROOT / "README.md").read_text()
    for var in settings.REGISTRY:
        if var.name.startswith("INFER_TEST_"):
            continue
        assert f"`{var.name}`" in readme, var.name


def test_readme_documents_every_exit_code():
    from infer.errors import ExitCode

    readme = (ROOT / "README.md").read_text()
    for code in ExitCode:
        assert f"\n| {int(code)} |" in readme, code
