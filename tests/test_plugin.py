"""The plugin end to end through pytester, on tiny models registered for the test."""

import json
from dataclasses import dataclass

import pytest
# Import before pytester's in-process runs: they drop modules first imported inside them, and
# re-importing torchao registers its torch ops twice, which torch refuses.
import torchao.quantization  # noqa: F401

from compresslab import registry
from compresslab.models.spec import ModelSpec, ModelUnavailable
from bench_files import bench_file
from tiny import SyntheticSentiment, TinySource

BENCH = bench_file({"tiny-clf": ("fp32", "int8-weight"), "tiny-gone": ("fp32",)})

FLOORS_OK = """
[family.int8]
min_recovery = { accuracy = 0.9 }
"""

EXTRA_KEYS = {"size_bytes", "size_zstd_bytes", "bits_per_param", "metrics", "baseline_metrics", "recovery",
              "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "speedup_vs_baseline", "peak_rss_mib",
              "build_s", "device", "threads", "libraries", "top1_agreement", "kl_div", "size_ratio"}


@dataclass(frozen=True)
class GoneSource(TinySource):
    def check_available(self) -> None:
        raise ModelUnavailable("weights for tiny-gone are not here (set COMPRESSLAB_MODEL_PATH_TINY_GONE)")


@pytest.fixture
def suite_dir(pytester, monkeypatch, tmp_path):
    monkeypatch.setitem(registry.TASKS, "synthetic-sentiment", SyntheticSentiment())
    monkeypatch.setitem(registry.MODELS, "tiny-clf",
                        ModelSpec("tiny-clf", "classifier", TinySource(), ("synthetic-sentiment",), "tiny", 16))
    monkeypatch.setitem(registry.MODELS, "tiny-gone",
                        ModelSpec("tiny-gone", "classifier", GoneSource(), ("synthetic-sentiment",), "gone", 16))
    pytester.makepyfile(test_bench=BENCH)
    pytester.makefile(".toml", floors=FLOORS_OK)
    return pytester


def run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", "--compresslab-rounds", "3", "--compresslab-warmup", "1",
                              *args)


def test_records_extra_info_sidecar_and_skips_unavailable(suite_dir):
    result = run(suite_dir, "--benchmark-json=bench.json", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*compresslab results*", "*tiny-clf*int8-weight*passed*",
                                 "*tiny-gone-fp32: weights for tiny-gone are not here*"])
    saved = json.loads((suite_dir.path / "bench.json").read_text())
    by_name = {b["name"]: b for b in saved["benchmarks"]}
    assert set(by_name) == {"test_compression[tiny-clf-fp32]", "test_compression[tiny-clf-int8-weight]"}
    extra = by_name["test_compression[tiny-clf-int8-weight]"]["extra_info"]
    assert EXTRA_KEYS <= set(extra)
    assert extra["size_ratio"] < 1.0 and extra["bits_per_param"] < 32  # embedding-heavy: torchao leaves it
    assert 32 <= by_name["test_compression[tiny-clf-fp32]"]["extra_info"]["bits_per_param"] < 32.2
    assert extra["recovery"]["accuracy"] > 0.9
    assert by_name["test_compression[tiny-clf-fp32]"]["extra_info"]["size_ratio"] == 1.0
    # the baseline's own samples are the reference for its model's speedups
    base_extra = by_name["test_compression[tiny-clf-fp32]"]["extra_info"]
    assert base_extra["speedup_vs_baseline"] == 1.0
    # the case's speedup: fp32 blocks timed just before and after it, over the case's own rounds
    assert extra["speedup_vs_baseline"] == pytest.approx(extra["baseline_latency_p50_ms"] / extra["latency_p50_ms"])
    assert "baseline_drift" in extra and "baseline_drift" not in base_extra
    sidecar = json.loads((suite_dir.path / ".compresslab" / "latest.json").read_text())
    outcomes = {b["name"]: b["outcome"] for b in sidecar["benchmarks"]}
    assert outcomes == {"test_compression[tiny-clf-fp32]": "passed",
                        "test_compression[tiny-clf-int8-weight]": "passed",
                        "test_compression[tiny-gone-fp32]": "skipped"}


def test_sidecar_written_with_benchmark_disabled(suite_dir):
    result = run(suite_dir, "--benchmark-disable", "-k", "clf")
    result.assert_outcomes(passed=2)
    sidecar = json.loads((suite_dir.path / ".compresslab" / "latest.json").read_text())
    records = sidecar["benchmarks"]
    assert len(records) == 2
    for record in records:
        extra = record["extra_info"]
        assert {"size_bytes", "metrics", "recovery", "peak_rss_mib"} <= set(extra)
        assert "latency_p50_ms" not in extra  # nothing was timed: no latency is invented
    assert list(suite_dir.path.glob(".benchmarks/**/*.json")) == []  # pytest-benchmark saved nothing


def test_floor_violation_fails_with_readable_message(suite_dir):
    suite_dir.makefile(".toml", floors="""
[override.tiny-clf.int8-weight]
min_recovery = { accuracy = 1.5 }
max_size_mb = 0.001
""")
    result = run(suite_dir, "-k", "clf")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*tiny-clf-int8-weight is below its floors (*floors.toml):",
        "*- accuracy * < floor * (150.0% of baseline *); recovery *",
        "*- size * MB > ceiling 0.00 MB",
        "*measured: accuracy=*, macro_f1=*",
        "*baseline: accuracy=*",
    ])
    sidecar = json.loads((suite_dir.path / ".compresslab" / "latest.json").read_text())
    failed = [b for b in sidecar["benchmarks"] if b["outcome"] == "failed"]
    assert len(failed) == 1 and len(failed[0]["extra_info"]["floor_violations"]) == 2


def test_malformed_floors_file_is_a_usage_error(suite_dir):
    suite_dir.makefile(".toml", floors="[override.tiny-clf.int9]\n")
    result = run(suite_dir, "-k", "clf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown method 'int9'" in result.stderr.str()
    assert "compresslab results" not in result.stdout.str()  # nothing was built


@pytest.mark.parametrize("option, message", [
    (("--compresslab-device", "cuda:7"), "--compresslab-device cuda:7 requested but torch sees no CUDA device"),
    (("--compresslab-device", "tpu"), "--compresslab-device 'tpu' is not one of"),
    (("--compresslab-rounds", "0"), "--compresslab-rounds must be >= 1, got 0"),
])
def test_bad_run_settings_are_one_usage_error_before_anything_builds(suite_dir, option, message):
    result = run(suite_dir, "-k", "clf", *option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert "compresslab results" not in result.stdout.str()


def test_selection_by_model_and_method_keywords(suite_dir):
    result = run(suite_dir, "--collect-only", "-q", "-k", "clf and int8")
    result.stdout.fnmatch_lines(["*test_compression[[]tiny-clf-int8-weight[]]*"])
    assert "tiny-clf-fp32" not in result.stdout.str()


def test_second_run_reuses_builds_and_evaluations_and_says_so(suite_dir):
    def sidecar():
        data = json.loads((suite_dir.path / ".compresslab" / "latest.json").read_text())
        return {b["name"]: b["extra_info"] for b in data["benchmarks"] if b["outcome"] == "passed"}

    run(suite_dir, "-k", "clf", "--compresslab-memory", "off").assert_outcomes(passed=2)
    first = sidecar()
    second_run = run(suite_dir, "-k", "clf", "--compresslab-memory", "off")
    second_run.assert_outcomes(passed=2)
    second = sidecar()
    for name, extra in second.items():
        assert not any(stage["built_now"] for stage in extra["stages"])
        assert extra["metrics_cached"] and not first[name]["metrics_cached"]
        assert extra["metrics"] == first[name]["metrics"]
        assert extra["top1_agreement"] == first[name]["top1_agreement"]
        # fidelity from cached reference logits is the fidelity measured fresh (a bit-identical
        # reload must not diverge from fp32 by nats)
        assert extra["kl_div"] == pytest.approx(first[name]["kl_div"], abs=1e-9)
    second_run.stdout.fnmatch_lines(["*acc 1 * F1 1 *", "* metrics read from the evaluation cache*"])
    run(suite_dir, "-k", "clf", "--compresslab-memory", "off", "--compresslab-reeval").assert_outcomes(passed=2)
    assert not any(extra["metrics_cached"] for extra in sidecar().values())


def test_known_failure_is_xfail_below_its_floors_and_xpass_above(suite_dir):
    suite_dir.makefile(".toml", floors="""
[override.tiny-clf.int8-weight]
min_recovery = { accuracy = 1.5 }
expected_failure = "tiny int8 cannot beat fp32 by half"
""")
    result = run(suite_dir, "-k", "clf", "--compresslab-memory", "off", "-rxX")
    result.assert_outcomes(passed=1, xfailed=1)
    result.stdout.fnmatch_lines(["*XFAIL*tiny-clf-int8-weight*tiny int8 cannot beat fp32 by half*"])
    sidecar = json.loads((suite_dir.path / ".compresslab" / "latest.json").read_text())
    record = next(b for b in sidecar["benchmarks"] if b["chain"] == "int8-weight")
    assert record["outcome"] == "xfailed" and record["expected_failure"] == "tiny int8 cannot beat fp32 by half"
    assert record["extra_info"]["metrics"]["accuracy"] > 0.9  # its values are still recorded
    assert "accuracy" in record["reason"] and "floor" in record["reason"]

    suite_dir.makefile(".toml", floors="""
[override.tiny-clf.int8-weight]
expected_failure = "said to fail, but meets its floors"
""")
    result = run(suite_dir, "-k", "clf", "--compresslab-memory", "off", "-rxX")
    result.assert_outcomes(passed=1, xpassed=1)
    sidecar = json.loads((suite_dir.path / ".compresslab" / "latest.json").read_text())
    assert {b["chain"]: b["outcome"] for b in sidecar["benchmarks"]} == {"fp32": "passed", "int8-weight": "xpassed"}


def test_known_failure_worse_than_its_reference_fails_for_real(suite_dir):
    suite_dir.makefile(".toml", floors="""
[override.tiny-clf.int8-weight]
min_recovery = { accuracy = 1.5 }
expected_failure = "tiny int8 cannot beat fp32 by half"
reference = { accuracy = 1.5 }
""")
    result = run(suite_dir, "-k", "clf", "--compresslab-memory", "off")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*accuracy * is worse than its reference 1.5 by more than 5%*"])


@dataclass(frozen=True)
class BrokenSentiment(SyntheticSentiment):
    """Declares macro_f1 and micro_f1 but yields a NaN accuracy and no micro_f1."""

    metrics: tuple[str, ...] = ("accuracy", "macro_f1", "micro_f1")

    def evaluate(self, runner):
        result = super().evaluate(runner)
        result.metrics["accuracy"] = float("nan")
        return result


def test_nan_or_missing_metric_fails_the_case_naming_metric_and_task(suite_dir, monkeypatch):
    monkeypatch.setitem(registry.TASKS, "synthetic-sentiment", BrokenSentiment())
    suite_dir.makefile(".toml", floors="[family.baseline]\n")  # no floor names these metrics
    result = run(suite_dir, "-k", "clf and fp32", "--compresslab-memory", "off")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*- accuracy is nan (task synthetic-sentiment)*",
                                 "*- micro_f1 is missing: task synthetic-sentiment should have produced it*"])


class SlowingSession:
    """fp32 blocks of a machine that gets 2x slower while the case runs (10 ms, then 20 ms)."""

    def __init__(self):
        from compresslab.trackers.latency import LatencyStats

        self.blocks = [LatencyStats((0.010,) * 5), LatencyStats((0.020,) * 5)]

    def baseline_block(self, spec, baseline):
        return self.blocks.pop(0)


def test_speedup_divides_the_fp32_blocks_around_the_case_and_records_the_drift():
    from compresslab.fixture import Case
    from compresslab.results import CaseResult
    from compresslab.trackers.latency import LatencyStats

    session = SlowingSession()
    case = Case(session, spec=None, chain_id="int8-weight", measurement=object(), baseline=object(),
                result=CaseResult())
    before = session.baseline_block(None, None)
    # the case is 2x faster than fp32 throughout while the machine slows linearly: 5.5 -> 9.5 ms
    case.record_speedup(LatencyStats(tuple(0.0055 + 0.0004 * i for i in range(11))), before)
    assert case.result.baseline_drift == pytest.approx(1.0)
    assert case.result.speedup_vs_baseline == pytest.approx(2.0)  # fp32 15 ms at the midpoint, case 7.5 ms
    assert case.result.baseline_latency_p50_ms == pytest.approx(15.0)
    assert session.blocks == []
