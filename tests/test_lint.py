"""The repository passes its own lint settings ([tool.ruff] in pyproject.toml)."""
import subprocess
import sys

from project_paths import REPO


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
