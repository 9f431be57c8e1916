"""The CI workflows pass actionlint (installed from requirements/cpu.txt into the venv)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def actionlint() -> str | None:
    beside_python = Path(sys.executable).parent / "actionlint"
    return str(beside_python) if beside_python.exists() else shutil.which("actionlint")


def test_workflows_pass_actionlint():
    binary = actionlint()
    if binary is None:
        pytest.skip("actionlint is not installed (requirements/cpu.txt installs it with make test)")
    workflows = sorted(str(p) for p in (REPO / ".github" / "workflows").glob("*.yml"))
    assert {Path(w).name for w in workflows} >= {"ci.yml", "gpu-regression.yml"}
    done = subprocess.run([binary, *workflows], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflows_call_the_repo_targets():
    ci = (REPO / ".github" / "workflows" / "ci.yml").read_text()
    gpu = (REPO / ".github" / "workflows" / "gpu-regression.yml").read_text()
    assert "make test" in ci and "make smoke" in ci and "make regress-smoke BASE=" in ci
    assert "runs-on: [self-hosted, gpu]" in gpu and "make regress BASE=" in gpu
    assert "compresslab-baseline-${{ github.sha }}" in gpu and "GITHUB_STEP_SUMMARY" in gpu
    assert "make regress-smoke BASE=" in (REPO / ".ci" / "run").read_text()
