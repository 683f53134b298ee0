"""The code base passes `ruff check` with the rules in pyproject.toml: bugs a linter finds (an undefined name, a
closure that binds a loop variable late) fail the suite instead of waiting for the line that runs them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_no_bugs():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_runs_the_configured_rules(tmp_path):
    """The check above is not vacuous: the project's configuration flags an undefined name."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text("def f():\n    return undefined_name\n")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1 and "F821" in result.stdout, result.stdout + result.stderr
