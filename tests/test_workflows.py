"""The CI workflows pass actionlint (installed from requirements/cpu.txt into the venv)."""

import os
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
    assert "runs-on: [self-hosted, gpu]" in gpu and "make merge-gate RUNS=" in gpu and " BASE=baseline/" in gpu
    assert "--compresslab-shard ${{ matrix.shard }}/${{ strategy.job-total }}" in gpu and "needs: shard" in gpu
    assert "compresslab-baseline-${{ github.sha }}" in gpu and "GITHUB_STEP_SUMMARY" in gpu
    assert "make regress-smoke BASE=" in (REPO / ".ci" / "run").read_text()


FAKE_PYTHON = """#!/bin/sh
# stands in for `python -m pytest benchmarks ...`: records nothing (no case selected), or a run
echo "$@" >> "{log}"
# a real run takes seconds: written within one tick of the clock, the run would look no newer
if [ -n "$WRITE_RUN" ]; then sleep 0.1; echo '{{"benchmarks": []}}' > "$WRITE_RUN"; exit 0; fi
exit 5
"""
FAKE_COMPRESSLAB = """#!/bin/sh
echo "compresslab $@" >> "{log}"
echo "compared"
"""


@pytest.fixture
def fake_make(tmp_path):
    """`make regress` with stand-ins for the venv's python and compresslab (no benchmark runs)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name, text in (("python", FAKE_PYTHON), ("compresslab", FAKE_COMPRESSLAB)):
        (bin_dir / name).write_text(text.format(log=log))
        (bin_dir / name).chmod(0o755)
    stamp = tmp_path / "installed"
    stamp.touch()
    results, report = tmp_path / "results", tmp_path / "report"
    results.mkdir()

    def make(**env):
        return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "regress", "BASE=base.json",
                               f"BIN={bin_dir}", f"STAMP={stamp}", f"LLAMA_STAMP={stamp}", f"RESULTS={results}",
                               f"REPORT_DIR={report}"],
                              capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    return make, results, report, log


def test_regress_writes_no_report_from_an_older_run_when_this_one_recorded_nothing(fake_make):
    make, results, report, log = fake_make
    (results / "latest.json").write_text('{"benchmarks": []}')  # an older run's
    report.mkdir()
    (report / "summary.md").write_text("no regressions (stale)")
    done = make()
    # make exits 2 whenever a recipe fails and names the recipe's own status: pytest's 5 (nothing ran)
    assert done.returncode == 2 and "Error 5" in done.stderr, done.stdout + done.stderr
    assert "this run recorded no case (pytest exit 5): no comparison or report written" in done.stderr
    assert not (report / "summary.md").exists() and not (report / "compare.txt").exists()
    assert "compresslab compare" not in log.read_text() and "compresslab report" not in log.read_text()


def test_regress_reports_the_run_it_just_recorded(fake_make):
    make, results, report, log = fake_make
    done = make(WRITE_RUN=str(results / "latest.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compared" in (report / "compare.txt").read_text()
    calls = log.read_text()
    assert f"compresslab compare base.json {results}/latest.json" in calls
    assert f"compresslab report {results}/latest.json" in calls


def test_ci_run_enlarges_a_case_of_a_sidecar_the_plugin_writes(tmp_path):
    """.ci/run's own check (a 5%-larger artifact must fail compare) reads the sidecar by hand: it
    must read today's record layout, or CI fails after every test passed."""
    import json

    from compresslab.results import CaseRecord, CaseResult, sidecar_document

    records = [CaseRecord(f"test_compression[m-{chain}]", "m", chain, "passed", CaseResult(size_bytes=1000))
               for chain in ("fp32", "int8-dynamic")]
    (tmp_path / ".compresslab").mkdir()
    (tmp_path / ".compresslab" / "smoke-base.json").write_text(json.dumps(sidecar_document(records, tmp_path)))
    script = (REPO / ".ci" / "run").read_text()
    snippet = script[script.index("<<'PY'\n") + len("<<'PY'\n"):script.index("\nPY\n")]
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "made m-int8-dynamic 5% larger"
    larger = json.loads((tmp_path / ".compresslab" / "smoke-larger.json").read_text())
    assert [b["extra_info"]["size_bytes"] for b in larger["benchmarks"]] == [1000, 1050]
