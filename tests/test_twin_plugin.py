"""The twin floor end to end through pytester: a case reads its twin's metrics from the same run's
records, records the comparison in the sidecar, and one whose twin has not run records why."""

import json

import pytest

from compresslab import registry
from compresslab.models.spec import ModelSpec
from bench_files import bench_file
from tiny import SyntheticSentiment, TinySource

# Imported before pytester's in-process runs (see tests/test_plugin.py): torchao registers its ops once.
pytest.importorskip("torchao.quantization")

BENCH = bench_file({"tiny-clf": ("fp32", "int8-dynamic", "int8-weight")})

# int8-weight must match or beat int8-dynamic (measured before it); int8-dynamic's twin runs after it
FLOORS = """
[family.int8]
min_recovery = { accuracy = 0.5 }
[method.int8-weight]
twin = "int8-dynamic"
twin_metrics = ["accuracy", "macro_f1"]
[method.int8-dynamic]
twin = "int8-weight"
twin_metrics = ["accuracy"]
"""


def test_a_case_compares_with_its_twin_of_the_same_run(pytester, monkeypatch):
    monkeypatch.setitem(registry.TASKS, "synthetic-sentiment", SyntheticSentiment())
    monkeypatch.setitem(registry.MODELS, "tiny-clf",
                        ModelSpec("tiny-clf", "classifier", TinySource(), ("synthetic-sentiment",), "tiny", 16))
    pytester.makepyfile(test_bench=BENCH)
    pytester.makefile(".toml", floors=FLOORS)
    pytester.runpytest("-p", "no:cacheprovider", "--benchmark-disable", "--compresslab-memory", "off")
    sidecar = json.loads((pytester.path / ".compresslab" / "latest.json").read_text())
    records = {b["chain"]: b for b in sidecar["benchmarks"]}
    dynamic, weight = records["int8-dynamic"]["extra_info"], records["int8-weight"]["extra_info"]
    assert "was not measured before this case" in dynamic["twin_comparison"]["skipped"]
    compared = weight["twin_comparison"]
    assert compared["chain"] == "int8-dynamic"
    assert compared["metrics"] == {m: dynamic["metrics"][m] for m in ("accuracy", "macro_f1")}
    assert compared["difference"] == {m: pytest.approx(weight["metrics"][m] - dynamic["metrics"][m])
                                      for m in ("accuracy", "macro_f1")}
    worse = [m for m, d in compared["difference"].items() if d < 0]
    assert records["int8-weight"]["outcome"] == ("failed" if worse else "passed")
    assert [v for v in weight.get("floor_violations", []) if "worse than its twin" in v] == \
        [v for m in worse for v in weight["floor_violations"] if v.startswith(f"{m} ")]
