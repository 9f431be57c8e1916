"""In-run gating: --compresslab-baseline with --compresslab-fail rules, checked at session end."""

import copy
import json
import shutil

import pytest

from test_plugin import run, suite_dir  # noqa: F401 - the tiny-model suite fixture

# 3 rounds per side can never give p < 0.05 in the rank test (1/C(6,3) = 0.05): 5 against 5 can (1/252)
ROUNDS = ("--compresslab-rounds", "5")


def gated(suite_dir, *args):  # noqa: F811
    return run(suite_dir, "--compresslab-memory", "off", *ROUNDS, *args)


def save_baseline(suite_dir, *args):  # noqa: F811
    gated(suite_dir, "-k", "clf", *args).assert_outcomes(passed=2)
    base = suite_dir.path / "base.json"
    shutil.copy(suite_dir.path / ".compresslab" / "latest.json", base)
    return base


def test_gate_passes_on_equal_and_fails_on_a_larger_artifact_keeping_the_summary(suite_dir):  # noqa: F811
    base = save_baseline(suite_dir)
    # no latency rule on equal code here: other work on a shared 2-core machine makes tiny-model
    # rounds 10x slower from one process to the next (see README, "Which rule where")
    result = gated(suite_dir, "-k", "clf", f"--compresslab-baseline={base}",
                   "--compresslab-fail=size:+1%", "--compresslab-fail", "accuracy:-0.5pt")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*compresslab compare vs base.json*", "*rules: size:+1% accuracy:-0.5pt;*",
                                 "no regressions (2 compared, 0 new, 0 missing)"])

    # the baseline recorded the int8 artifact 5% smaller than it is (this run's is 5% larger), and
    # every case 1000x faster: the latency rule must be able to fire with the rounds the run takes
    document = json.loads(base.read_text())
    for record in document["benchmarks"]:
        extra = record["extra_info"]
        if record["chain"] == "int8-weight":
            extra["size_bytes"] = round(extra["size_bytes"] / 1.05)
        extra["latency_samples_ms"] = [s / 1000 for s in extra["latency_samples_ms"]]
        extra["latency_p50_ms"] /= 1000
    base.write_text(json.dumps(document))
    result = gated(suite_dir, "-k", "clf", f"--compresslab-baseline={base}", "--compresslab-fail=size:+1%,latency:+50%")
    assert result.ret == 1
    result.assert_outcomes(passed=2)  # every test passed; the gate failed the session
    result.stdout.fnmatch_lines([
        "*compresslab regressions: 3*",
        "tiny-clf-fp32: latency * ms -> * ms (*; rule latency:+50%, p=0.004, median ratio *)",
        "tiny-clf-int8-weight: latency * ms -> * ms (*; rule latency:+50%, p=0.004, median ratio *)",
        "tiny-clf-int8-weight: size * MB -> * MB (+5.0%; rule size:+1%)",
        "*= 2 passed, 1 deselected in *",
    ])


def test_bad_gate_input_is_a_usage_error_before_anything_runs(suite_dir):  # noqa: F811
    result = run(suite_dir, "--compresslab-baseline=nothing-here.json", "--compresslab-fail=size:+1%")
    assert result.ret == 4 and "no such file" in result.stderr.str()
    (suite_dir.path / "base.json").write_text(json.dumps({"schema": 1, "compresslab_version": "0", "benchmarks": [
        {"name": "t[tiny-clf-fp32]", "model": "tiny-clf", "method": "fp32", "extra_info": {}}]}))
    result = run(suite_dir, "--compresslab-baseline=base.json", "--compresslab-fail=sise:+1%")
    assert result.ret == 4 and "unknown field 'sise'" in result.stderr.str()
    result = run(suite_dir, "--compresslab-fail=size:+1%")
    assert result.ret == 4 and "needs --compresslab-baseline" in result.stderr.str()
    # a second rule on one field used to replace the first silently
    result = run(suite_dir, "--compresslab-baseline=base.json", "--compresslab-fail=latency:+10%,latency:+20%")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: *rule 'latency:+20%' repeats field 'latency' (already 'latency:+10%')*"])


def test_latency_rule_that_too_few_rounds_could_never_fire_is_refused_before_building(suite_dir):  # noqa: F811
    rounds = [1.0, 1.1, 1.2]
    (suite_dir.path / "base.json").write_text(json.dumps({"schema": 1, "compresslab_version": "0", "benchmarks": [
        {"name": "t[tiny-clf-fp32]", "model": "tiny-clf", "method": "fp32", "outcome": "passed",
         "extra_info": {"latency_p50_ms": 1.1, "latency_samples_ms": rounds}}]}))
    result = run(suite_dir, "--compresslab-baseline=base.json", "--compresslab-fail=size:+1%,latency:+10%")
    assert result.ret == 4 and not (suite_dir.path / ".compresslab").exists()
    result.stderr.fnmatch_lines(["ERROR: --compresslab-fail: latency:+10%: 3 stored vs 3 timed rounds, the rank test "
                                 "can never reach p < 0.05 (smallest p 0.05); use --compresslab-rounds 4 or more"])
    result = run(suite_dir, "--compresslab-baseline=base.json", "--compresslab-fail=speedup:-10%",
                 "--compresslab-rounds", "4", "-k", "nothing-matches")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED  # 3 against 4 rounds can reach p = 1/35


def test_case_that_passed_in_the_baseline_and_skips_now_is_lost(suite_dir):  # noqa: F811
    base = save_baseline(suite_dir)
    document = json.loads(base.read_text())  # the baseline machine had tiny-gone's weights
    gone = copy.deepcopy(next(b for b in document["benchmarks"] if b["chain"] == "fp32"))
    gone.update(name="test_compression[tiny-gone-fp32]", fullname="test_bench.py::test_compression[tiny-gone-fp32]",
                model="tiny-gone")
    document["benchmarks"].append(gone)
    base.write_text(json.dumps(document))
    result = gated(suite_dir, f"--compresslab-baseline={base}", "--compresslab-fail=size:+1%")
    result.assert_outcomes(passed=2, skipped=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*compresslab regressions: 1*", "tiny-gone-fp32: outcome passed -> skipped "
                                 "(tiny-gone-fp32: weights for tiny-gone are not here*"])
    result = gated(suite_dir, f"--compresslab-baseline={base}", "--compresslab-fail=size:+1%",
                   "--compresslab-allow-missing")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["no regressions (3 compared, 0 new, 0 missing)"])
    # deselected by -k: not collected in this session, so not lost
    result = gated(suite_dir, "-k", "clf", f"--compresslab-baseline={base}", "--compresslab-fail=size:+1%")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["no regressions (2 compared, 0 new, 0 missing)"])
