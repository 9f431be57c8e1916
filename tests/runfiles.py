"""Synthetic saved runs (sidecar and pytest-benchmark JSON) for compare, report and gate tests."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

CASES = {
    ("minilm-sentiment", "fp32"): {"size_bytes": 90_870_464, "p50": 16.0,
                                   "metrics": {"accuracy": 0.8884, "macro_f1": 0.8546}},
    ("minilm-sentiment", "int8-dynamic"): {"size_bytes": 58_700_000, "p50": 10.0,
                                           "metrics": {"accuracy": 0.8868, "macro_f1": 0.8524}},
    ("smollm2-135m", "fp32"): {"size_bytes": 538_100_000, "p50": 300.0,
                               "metrics": {"perplexity": 21.53, "fewshot_accuracy": 0.4933}},
    ("smollm2-135m", "int8-dynamic"): {"size_bytes": 220_500_000, "p50": 230.0,
                                       "metrics": {"perplexity": 22.22, "fewshot_accuracy": 0.4933}},
}


def samples(p50: float, seed: int, n: int = 30, noise: float = 0.03) -> list[float]:
    rng = random.Random(seed)
    return [p50 * (1 + rng.gauss(0, noise)) for _ in range(n)]


def sidecar(seed: int = 0, cases=CASES, commit: str = "a" * 40) -> dict[str, Any]:
    benchmarks = []
    for index, ((model, method), case) in enumerate(cases.items()):
        rounds = samples(case["p50"], 100 * seed + index)
        base_p50 = cases[(model, "fp32")]["p50"]
        benchmarks.append({
            "name": f"test_compression[{model}-{method}]",
            "fullname": f"benchmarks/test_compression.py::test_compression[{model}-{method}]",
            "model": model, "chain": method, "outcome": "passed", "reason": None,
            "extra_info": {"model": model, "chain": method, "size_bytes": case["size_bytes"],
                           "size_ratio": case["size_bytes"] / cases[(model, "fp32")]["size_bytes"],
                           "metrics": dict(case["metrics"]), "latency_p50_ms": sorted(rounds)[len(rounds) // 2],
                           "latency_samples_ms": rounds, "baseline_latency_p50_ms": base_p50,
                           "speedup_vs_baseline": base_p50 / case["p50"], "peak_rss_mib": 500.0,
                           "latency_input_shape": [1, 64]},
        })
    return {"schema": 1, "compresslab_version": "0.1.0", "created": f"20261125T1200{seed:02d}",
            "commit_info": {"commit": commit, "branch": "main", "dirty": False}, "benchmarks": benchmarks}


def as_pytest_benchmark(document: dict[str, Any]) -> dict[str, Any]:
    """The same cases as pytest-benchmark saves them: compresslab's fields in extra_info."""
    benchmarks = []
    for record in document["benchmarks"]:
        extra = copy.deepcopy(record["extra_info"])
        rounds = [s / 1e3 for s in extra["latency_samples_ms"]]
        benchmarks.append({"group": None, "name": record["name"], "fullname": record["fullname"],
                           "stats": {"median": sorted(rounds)[len(rounds) // 2], "rounds": len(rounds)},
                           "extra_info": extra})
    return {"machine_info": {"node": "test"}, "commit_info": {"id": document["commit_info"]["commit"],
                                                              "branch": "main"},
            "benchmarks": benchmarks, "datetime": "2026-11-25T12:00:00", "version": "5.3.1"}


def edit(document: dict[str, Any], model: str, method: str, **changes) -> dict[str, Any]:
    """A copy with one case changed: size_factor, latency_factor, metric=value, outcome=..."""
    changed = copy.deepcopy(document)
    for record in changed["benchmarks"]:
        if (record["model"], record["chain"]) != (model, method):
            continue
        extra = record["extra_info"]
        if "size_factor" in changes:
            extra["size_bytes"] = round(extra["size_bytes"] * changes.pop("size_factor"))
        if "latency_factor" in changes:
            factor = changes.pop("latency_factor")
            extra["latency_samples_ms"] = [s * factor for s in extra["latency_samples_ms"]]
            extra["latency_p50_ms"] *= factor
            extra["speedup_vs_baseline"] /= factor
        if "outcome" in changes:
            record["outcome"] = changes.pop("outcome")
        extra["metrics"].update(changes)
    return changed


def write(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path
