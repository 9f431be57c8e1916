"""A run that is stopped keeps what it measured: SIGTERM (a CI time limit) ends the session cleanly
with a sidecar marked incomplete; SIGKILL leaves the journal, which compare and report read."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compresslab import cli, runs
from test_plugin import FLOORS_OK
from test_xdist import CONFTEST

# one case that finishes, then a test that holds the session until it is stopped
BENCH = """
import pathlib
import time

import pytest
from compresslab.plugin import case_params


@pytest.mark.parametrize("compressed", case_params({"tiny-clf": ("fp32",)}), indirect=True)
def test_compression(compressed, benchmark):
    compressed.time(benchmark)
    compressed.check_floors()


def test_zz_long_running_case():
    pathlib.Path("second-case-started").touch()
    time.sleep(120)
"""


def start_run(pytester) -> subprocess.Popen:
    pytester.makeconftest(CONFTEST.format(tests=str(Path(__file__).parent)))
    pytester.makepyfile(test_bench=BENCH)
    pytester.makefile(".toml", floors=FLOORS_OK)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--compresslab-memory", "off",
               "--compresslab-rounds", "3", "--compresslab-warmup", "1", "test_bench.py"]
    env = {**os.environ, "COMPRESSLAB_CACHE_DIR": str(pytester.path / "cache")}
    return subprocess.Popen(command, cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {path.name} appeared:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path.name} did not appear in {timeout_s} s")
        time.sleep(0.2)


def test_sigterm_after_the_first_case_keeps_its_record_in_a_sidecar_marked_incomplete(pytester):
    process = start_run(pytester)
    wait_for(pytester.path / "second-case-started", process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)

    assert process.returncode == pytest.ExitCode.INTERRUPTED, output
    document = json.loads((pytester.path / ".compresslab" / "latest.json").read_text())
    assert document["incomplete"] == "interrupted (SIGTERM)"
    [record] = document["benchmarks"]
    assert (record["chain"], record["outcome"]) == ("fp32", "passed")
    assert record["extra_info"]["metrics"]["accuracy"] > 0.9
    assert "run interrupted (SIGTERM): the sidecar holds the 1 case(s) that finished" in output
    # the journal has served: the sidecar is the run now
    assert not list((pytester.path / ".compresslab").glob("journal/*.jsonl"))
    assert runs.load(pytester.path / ".compresslab" / "latest.json").incomplete == "interrupted (SIGTERM)"


def test_sigkill_leaves_a_journal_that_report_and_compare_read(pytester, tmp_path, capsys):
    process = start_run(pytester)
    wait_for(pytester.path / "second-case-started", process)
    process.kill()
    process.communicate(timeout=60)

    assert not (pytester.path / ".compresslab" / "latest.json").exists()  # the session never ended
    [journal] = (pytester.path / ".compresslab" / "journal").glob("*.jsonl")
    run = runs.load(journal)
    assert list(run.records) == ["test_compression[tiny-clf-fp32]"]
    assert run.incomplete and "INCOMPLETE" in run.describe()
    # a line cut short by the kill is skipped, not an error
    with open(journal, "a") as damaged:
        damaged.write('{"name": "test_compression[tiny-clf-int8')
    assert list(runs.load(journal).records) == ["test_compression[tiny-clf-fp32]"]
    assert cli.main(["report", str(journal), "--out", str(tmp_path / "report")]) == 0
    assert "tiny-clf" in capsys.readouterr().out
