"""Saved runs: find one (file, run number, commit glob) and read it into one record shape.

A run is either pytest-benchmark's JSON (``.benchmarks/<machine>/NNNN_<commit>_<time>.json``,
compresslab's fields in each benchmark's ``extra_info``) or compresslab's sidecar
(``.compresslab/runs/*.json``, ``.compresslab/latest.json``), which also holds the skipped and
failed cases. Both become a :class:`Run` of :class:`Record` keyed by benchmark name.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compresslab import results

BENCHMARKS_DIR = ".benchmarks"
RESULTS_DIR = ".compresslab"
RUN_NUMBER = re.compile(r"^\d{1,4}$")

# the second timed workload of a case (trackers/workloads.py): rule field -> extra_info key; the
# *_speedup fields are its ratios to the same run's fp32 on the same workload
SECOND_WORKLOAD_KEYS = {"b16": "latency_b16_p50_ms", "decode": "decode_tokens_per_s",
                        "b16_speedup": "speedup_b16_vs_baseline", "decode_speedup": "decode_speedup_vs_baseline"}


class RunError(ValueError):
    """A run that cannot be found or read: bad input (exit 2), never a regression."""


@dataclass(frozen=True)
class Record:
    name: str
    model: str
    method: str
    outcome: str
    extra: dict[str, Any] = field(repr=False)
    reason: str | None = None
    samples_ms: tuple[float, ...] | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The sidecar's record shape, which report.py renders."""
        return {"name": self.name, "model": self.model, "method": self.method, "outcome": self.outcome,
                "reason": self.reason, "extra_info": self.extra}

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.extra.get("metrics") or {})

    def value(self, name: str) -> float | None:
        """The number a rule field names, or None when this record has none."""
        extra = self.extra
        if name == "size":
            return extra.get("size_bytes")
        if name == "latency":
            return extra.get("latency_p50_ms")
        if name == "speedup":
            return extra.get("speedup_vs_baseline")
        if name == "memory":
            return extra.get("cuda_peak_mb") or extra.get("peak_rss_mb")
        if name in SECOND_WORKLOAD_KEYS:
            return extra.get(SECOND_WORKLOAD_KEYS[name])
        return self.metrics.get(name)


@dataclass(frozen=True)
class Run:
    path: Path
    kind: str  # "pytest-benchmark" or "sidecar"
    records: dict[str, Record]
    commit: str | None = None
    branch: str | None = None
    created: str | None = None

    @property
    def models(self) -> set[str]:
        return {r.model for r in self.records.values()}

    def describe(self) -> str:
        commit = (self.commit or "no commit")[:10]
        return f"{self.path} ({self.kind}; {commit}{f' on {self.branch}' if self.branch else ''}" \
               f"{f', {self.created}' if self.created else ''}; {len(self.records)} benchmarks)"


def locate(spec: str, root: Path = Path(".")) -> Path:
    """``spec``: a file, a pytest-benchmark run number (``3``, ``0003``), or a glob of a commit id or
    file name matched in ``.benchmarks/*/`` (then ``.compresslab/runs/``); the newest match wins."""
    path = Path(spec)
    if not path.is_absolute():
        path = root / path
    if path.is_file():
        return path
    storage = root / BENCHMARKS_DIR
    if RUN_NUMBER.match(spec):
        matches = sorted(storage.glob(f"*/{int(spec):04d}_*.json"))
        if len(matches) > 1:
            raise RunError(f"run {spec} is ambiguous: {', '.join(str(m) for m in matches)}; give the file")
        if matches:
            return matches[0]
        raise RunError(f"no run numbered {int(spec):04d} in {storage}")
    # file names start with the run number or the time, so "ce99a7d*" must match after a prefix
    pattern = f"*{spec}.json" if any(c in spec for c in "*?[") else f"*{spec}*.json"
    for found in (storage.glob("*/*.json"), (root / RESULTS_DIR / "runs").glob("*.json")):
        matches = sorted((p for p in found if fnmatch.fnmatch(p.name, pattern)), key=lambda p: p.name)
        if matches:  # numbered or time-stamped names: the last in order is the newest
            return matches[-1]
    raise RunError(f"{spec}: no such file, and no saved run in {storage} or {root / RESULTS_DIR / 'runs'} matches it")


def load(spec: str | Path, root: Path = Path(".")) -> Run:
    path = locate(str(spec), root)
    try:
        document = results.load(path)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise RunError(str(err)) from None
    return from_document(document, path)


def load_history(patterns: Iterable[str], root: Path = Path(".")) -> list[Run]:
    """Earlier runs for the run-to-run noise of timings: every file each glob (relative to ``root``)
    matches, e.g. ``.compresslab/runs/*.json``. A glob that matches nothing is bad input."""
    found = []
    for pattern in patterns:
        paths = sorted(glob.glob(os.path.join(root, pattern)))
        if not paths:
            raise RunError(f"--history {pattern}: no file matches")
        found += [load(Path(path).absolute(), root) for path in paths]
    return found


def from_document(document: dict[str, Any], path: Path) -> Run:
    """Normalize a sidecar or pytest-benchmark JSON document."""
    is_sidecar = "schema" in document and "compresslab_version" in document
    records = {}
    for bench in document["benchmarks"]:
        record = _sidecar_record(bench) if is_sidecar else _benchmark_record(bench)
        if record is not None:
            records[record.name] = record
    if not records:
        raise RunError(f"{path}: no compresslab benchmarks in it")
    commit = document.get("commit_info") or {}
    return Run(path, "sidecar" if is_sidecar else "pytest-benchmark", records,
               commit=commit.get("commit") or commit.get("id"), branch=commit.get("branch"),
               created=document.get("created") or document.get("datetime"))


def _samples(extra: dict[str, Any], stats: dict[str, Any] | None = None) -> tuple[float, ...] | None:
    samples = extra.get("latency_samples_ms")
    if samples:
        return tuple(float(s) for s in samples)
    data = (stats or {}).get("data")  # pytest-benchmark --benchmark-save-data: seconds per round
    return tuple(1e3 * float(s) for s in data) if data else None


def _sidecar_record(bench: dict[str, Any]) -> Record | None:
    extra = bench.get("extra_info") or {}
    if "model" not in bench:
        return None
    return Record(bench["name"], bench["model"], bench["method"], bench.get("outcome", "?"), extra,
                  bench.get("reason"), _samples(extra))


def _benchmark_record(bench: dict[str, Any]) -> Record | None:
    extra = dict(bench.get("extra_info") or {})
    if "model" not in extra:  # a benchmark that is not a compresslab case
        return None
    stats = bench.get("stats") or {}
    if "latency_p50_ms" not in extra and stats.get("median") is not None:
        extra["latency_p50_ms"] = 1e3 * stats["median"]
    violations = extra.get("floor_violations") or []
    outcome = extra.get("outcome") or ("failed" if violations else "passed")
    return Record(bench["name"], extra["model"], extra["method"], outcome, extra,
                  "; ".join(violations) or None, _samples(extra, stats))
