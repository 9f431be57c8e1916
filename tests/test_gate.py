"""In-run gating: --compresslab-baseline with --compresslab-fail rules, checked at session end."""

import json
import shutil

from test_plugin import run, suite_dir  # noqa: F401 - the tiny-model suite fixture


def test_gate_passes_on_equal_and_fails_on_a_larger_artifact_keeping_the_summary(suite_dir):  # noqa: F811
    run(suite_dir, "-k", "clf", "--compresslab-memory", "off").assert_outcomes(passed=2)
    base = suite_dir.path / "base.json"
    shutil.copy(suite_dir.path / ".compresslab" / "latest.json", base)
    result = run(suite_dir, "-k", "clf", "--compresslab-memory", "off", f"--compresslab-baseline={base}",
                 "--compresslab-fail=size:+1%,accuracy:-0.5pt", "--compresslab-fail", "latency:+50%")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*compresslab compare vs base.json*", "*rules: size:+1% accuracy:-0.5pt latency:+50%*",
                                 "no regressions (2 compared, 0 new, 0 missing)"])

    # the baseline recorded the int8 artifact 5% smaller than it is: this run's is 5% larger
    document = json.loads(base.read_text())
    for record in document["benchmarks"]:
        if record["method"] == "int8-weight":
            record["extra_info"]["size_bytes"] = round(record["extra_info"]["size_bytes"] / 1.05)
    base.write_text(json.dumps(document))
    result = run(suite_dir, "-k", "clf", "--compresslab-memory", "off", f"--compresslab-baseline={base}",
                 "--compresslab-fail=size:+1%")
    assert result.ret == 1
    result.assert_outcomes(passed=2)  # every test passed; the gate failed the session
    result.stdout.fnmatch_lines([
        "*compresslab regressions: 1*",
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
