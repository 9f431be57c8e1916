"""Scale-out: builds and floors in parallel with pytest-xdist, then a serial timing run from the cache."""

import json
from pathlib import Path

from test_plugin import BENCH, FLOORS_OK

# Workers are fresh processes: the tiny models are registered by a conftest, not by monkeypatch.
CONFTEST = """
import os
import sys
from dataclasses import dataclass
sys.path.insert(0, {tests!r})
import torchao.quantization  # noqa: F401
from compresslab import registry
from compresslab.models.spec import ModelSpec
from tiny import SyntheticSentiment, TinySource


@dataclass(frozen=True)
class CountingSource(TinySource):
    def build(self, out):
        with open("base-builds.log", "a") as log:
            log.write(os.environ.get("PYTEST_XDIST_WORKER", "serial") + "\\n")
        super().build(out)


registry.TASKS["synthetic-sentiment"] = SyntheticSentiment()
registry.MODELS["tiny-clf"] = ModelSpec("tiny-clf", "classifier", CountingSource(), ("synthetic-sentiment",),
                                        "tiny", 16)
registry.MODELS["tiny-gone"] = registry.MODELS["tiny-clf"]
"""


def sidecar(pytester):
    data = json.loads((pytester.path / ".compresslab" / "latest.json").read_text())
    return {b["chain"]: b["extra_info"] for b in data["benchmarks"]}


def test_two_phase_parallel_build_then_serial_timing(pytester):
    pytester.makeconftest(CONFTEST.format(tests=str(Path(__file__).parent)))
    pytester.makepyfile(test_bench=BENCH)
    pytester.makefile(".toml", floors=FLOORS_OK)
    common = ("-p", "no:cacheprovider", "-k", "clf", "--compresslab-memory", "off",
              "--compresslab-rounds", "3", "--compresslab-warmup", "1")

    # phase 1: two workers build, evaluate and check floors; pytest-benchmark is off under xdist
    parallel = pytester.runpytest_subprocess(*common, "-n", "2", "-v")
    parallel.assert_outcomes(passed=2)
    out = parallel.stdout.str()
    assert "[gw0]" in out and "[gw1]" in out
    built = sidecar(pytester)
    assert set(built) == {"fp32", "int8-weight"}
    assert all("latency_p50_ms" not in extra and extra["metrics"]["accuracy"] > 0.9 for extra in built.values())
    # both workers needed the same base stage at once: the cache lock let exactly one of them build it
    base_keys = {stage["key"] for extra in built.values() for stage in extra["stages"] if stage["name"] == "base"}
    assert len(base_keys) == 1
    builds = (pytester.path / "base-builds.log").read_text().split()
    assert len(builds) == 1 and builds[0] in ("gw0", "gw1")

    # phase 2: serial and timed; nothing is rebuilt or re-evaluated
    serial = pytester.runpytest_subprocess(*common, "--benchmark-json=bench.json")
    serial.assert_outcomes(passed=2)
    timed = sidecar(pytester)
    for extra in timed.values():
        assert not any(stage["built_now"] for stage in extra["stages"]) and extra["metrics_cached"]
        assert extra["latency_p50_ms"] > 0 and len(extra["latency_samples_ms"]) == 3
    assert len((pytester.path / "base-builds.log").read_text().split()) == 1
    saved = json.loads((pytester.path / "bench.json").read_text())
    assert len(saved["benchmarks"]) == 2
