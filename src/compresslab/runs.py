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
import reprlib
import sys
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
# extra_info numbers that compare, report and the Pareto plots do arithmetic on; null means absent
NUMBER_FIELDS = ("size_bytes", "size_zstd_bytes", "size_ratio", "sparsity", "top1_agreement", "latency_p50_ms",
                 "speedup_vs_baseline", "baseline_latency_p50_ms", "peak_rss_mb", "cuda_peak_mb",
                 *SECOND_WORKLOAD_KEYS.values())
NUMBER_MAPS = ("metrics", "recovery")  # objects of name -> number
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60


class RunError(ValueError):
    """A run that cannot be found or read: bad input (exit 2), never a regression."""


class _Malformed(ValueError):
    """A field of one benchmark that is not the shape compare and report read; from_document adds
    the file and the benchmark."""


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
    incomplete: str | None = None  # why the run ended before its last case (interrupted, killed)

    @property
    def models(self) -> set[str]:
        return {r.model for r in self.records.values()}

    def describe(self) -> str:
        commit = (self.commit or "no commit")[:10]
        return f"{self.path} ({self.kind}; {commit}{f' on {self.branch}' if self.branch else ''}" \
               f"{f', {self.created}' if self.created else ''}; {len(self.records)} benchmarks" \
               f"{f'; INCOMPLETE: {self.incomplete}' if self.incomplete else ''})"


def locate(spec: str, root: Path = Path(".")) -> Path:
    """``spec``: a file, a pytest-benchmark run number (``3``, ``0003``), or a glob of a commit id or
    file name matched in ``.benchmarks/*/`` (then ``.compresslab/runs/``); the newest match wins."""
    path = Path(spec)
    if not path.is_absolute():
        path = root / path
    if path.is_file():
        return path
    if path.is_dir():  # a glob would find nothing and call it "no such file"
        raise RunError(f"{path}: a directory, not a run file; give a JSON file in it, a run number or a commit glob")
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
    if path.suffix == ".jsonl":
        return load_journal(path)
    try:
        document = results.load(path)
    except FileNotFoundError as err:
        raise RunError(str(err)) from None
    except UnicodeDecodeError as err:  # a ValueError whose text names no file
        raise RunError(f"{path}: not a JSON text file (byte {err.start} is not {err.encoding})") from None
    except OSError as err:
        raise RunError(f"{path}: cannot read it ({err.strerror or err})") from None
    except RecursionError:
        raise RunError(f"{path}: not a run file (JSON nested too deeply)") from None
    except ValueError as err:  # not JSON, no benchmarks list; json's own limits name no file
        if path.stat().st_size == 0:  # what a killed job or a full disk leaves
            raise RunError(f"{path}: an empty file, not a run") from None
        raise RunError(str(err) if str(path) in str(err) else f"{path}: not valid JSON ({err})") from None
    return from_document(document, path)


def load_journal(path: Path) -> Run:
    """The journal of a run that never reached its session end (killed): the cases it finished."""
    try:
        records = results.read_journal([path])
    except (OSError, UnicodeDecodeError) as err:
        raise RunError(f"{path}: cannot read this journal ({err})") from None
    document = {"schema": results.SIDECAR_SCHEMA, "compresslab_version": "journal", "benchmarks": records,
                "incomplete": "the journal of a run that did not reach its end"}
    return from_document(document, path)


def last_build_times(runs_dir: Path) -> dict[tuple[str, str], tuple[float, float, str]]:
    """{(model, method): (method seconds, base seconds, run)}: how long the case's own stages and
    its model's base stage took to build in the newest saved run holding the case; unreadable
    runs are passed over (this is a listing, not a gate)."""
    found: dict[tuple[str, str], tuple[float, float, str]] = {}
    for path in sorted(Path(runs_dir).glob("*.json"), reverse=True):  # time-stamped names: newest first
        try:
            run = load(path.absolute())
        except RunError:
            continue
        for record in run.records.values():
            stages = [stage for stage in record.extra.get("stages") or [] if isinstance(stage, dict)]
            seconds = [stage.get("build_s") for stage in stages]
            if stages and all(isinstance(s, (int, float)) for s in seconds):
                base = sum(s for stage, s in zip(stages, seconds) if stage.get("name") == "base")
                found.setdefault((record.model, record.method),
                                 (float(sum(seconds) - base), float(base), path.stem.split("_")[0]))
    return found


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


def from_document(document: Any, path: Path) -> Run:
    """Normalize a sidecar or pytest-benchmark JSON document. A shape compare and report cannot read
    is a RunError naming the file, the benchmark and the field: bad input, not a crash (a crash
    exits 1, which a CI gate reads as a regression)."""
    benchmarks = _benchmarks(document, path)
    is_sidecar = "schema" in document and "compresslab_version" in document
    records = {}
    for index, bench in enumerate(benchmarks):
        if not isinstance(bench, dict):
            raise RunError(f"{path}: benchmark #{index} is {_show(bench)}, not an object")
        try:
            record = _sidecar_record(bench) if is_sidecar else _benchmark_record(bench)
        except _Malformed as err:
            raise RunError(f"{path}: {_label(index, bench)}: {err}") from None
        if record is not None:
            records[record.name] = record
    if not records:
        raise RunError(f"{path}: no compresslab benchmarks in it")
    try:
        commit = _object(document, "commit_info")
        ids = [_string(commit, key, required=False) for key in ("commit", "id", "branch")]
    except _Malformed as err:
        raise RunError(f"{path}: commit_info: {err}") from None
    incomplete = document.get("incomplete")
    return Run(path, "sidecar" if is_sidecar else "pytest-benchmark", records, commit=ids[0] or ids[1],
               branch=ids[2], created=document.get("created") or document.get("datetime"),
               incomplete=incomplete if isinstance(incomplete, str) else None)


def _benchmarks(document: Any, path: Path) -> list[Any]:
    if not isinstance(document, dict):
        raise RunError(f"{path}: the top level is {_show(document)}, not an object with a 'benchmarks' list")
    benchmarks = document.get("benchmarks")
    if not isinstance(benchmarks, list):
        found = "missing" if benchmarks is None else f"{_show(benchmarks)}, not a list"
        raise RunError(f"{path}: 'benchmarks' is {found}; not a compresslab sidecar or pytest-benchmark JSON")
    return benchmarks


def _sidecar_record(bench: dict[str, Any]) -> Record | None:
    if "model" not in bench:
        return None
    extra = _checked_extra(bench)
    name, model, method = (_string(bench, key) for key in ("name", "model", "method"))
    outcome, reason = (_string(bench, key, required=False) for key in ("outcome", "reason"))
    return Record(name, model, method, outcome or "?", extra, reason, _samples(extra))


def _benchmark_record(bench: dict[str, Any]) -> Record | None:
    if "model" not in _object(bench, "extra_info"):  # a benchmark that is not a compresslab case
        return None
    extra = _checked_extra(bench)
    stats = _object(bench, "stats")
    median = _number(stats.get("median"), "stats.median")
    _numbers(stats, "data", "stats.data")
    if "latency_p50_ms" not in extra and median is not None:
        extra["latency_p50_ms"] = 1e3 * median
    violations = extra.get("floor_violations") or []
    outcome = extra.get("outcome") or ("failed" if violations else "passed")
    return Record(_string(bench, "name"), _string(extra, "model"), _string(extra, "method"), outcome, extra,
                  "; ".join(violations) or None, _samples(extra, stats))


def _samples(extra: dict[str, Any], stats: dict[str, Any] | None = None) -> tuple[float, ...] | None:
    samples = extra.get("latency_samples_ms")
    if samples:
        return tuple(float(s) for s in samples)
    data = (stats or {}).get("data")  # pytest-benchmark --benchmark-save-data: seconds per round
    return tuple(1e3 * float(s) for s in data) if data else None


# --- the shape of one benchmark: what compare, report and the plots read --------------------------

def _checked_extra(bench: dict[str, Any]) -> dict[str, Any]:
    """A copy of extra_info whose numbers are numbers. A null number is dropped: absent and null
    mean the same to compare, and the report formats what is there."""
    extra = dict(_object(bench, "extra_info"))
    for key in NUMBER_FIELDS:
        if _number(extra.get(key), key) is None:
            extra.pop(key, None)
    for key in NUMBER_MAPS:
        if extra.get(key) is None:
            extra.pop(key, None)
            continue
        values = _object(extra, key).items()
        extra[key] = {name: value for name, value in values if _number(value, f"{key}.{name}") is not None}
    _numbers(extra, "latency_samples_ms")
    for key in ("model", "method", "outcome"):
        _string(extra, key, required=False)
    _list(extra, "floor_violations", str)
    _list(extra, "latency_input_shape")
    return extra


def _show(value: Any) -> str:
    """A value as a message shows it: on one line, cut short."""
    return _SHORT.repr(value)


def _label(index: int, bench: dict[str, Any]) -> str:
    name = bench.get("name")
    if name is None:
        return f"benchmark #{index}"
    return f"benchmark #{index} ({_show(name)[1:-1] if isinstance(name, str) else _show(name)})"


def _object(container: dict[str, Any], key: str) -> dict[str, Any]:
    """An object field; {} when absent or null."""
    value = container.get(key)
    if value is not None and not isinstance(value, dict):
        raise _Malformed(f"{key} is {_show(value)}, not an object")
    return value or {}


def _string(container: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = container.get(key)
    if value is None and not required:
        return None
    if key not in container:
        raise _Malformed(f"no {key!r}")
    if not isinstance(value, str):
        raise _Malformed(f"{key} is {_show(value)}, not a string")
    return value


def _list(container: dict[str, Any], key: str, item: type | None = None) -> None:
    value = container.get(key)
    if value is not None and not (isinstance(value, list) and all(isinstance(v, item or object) for v in value)):
        raise _Malformed(f"{key} is {_show(value)}, not a list{f' of {item.__name__}' if item else ''}")


def _number(value: Any, what: str) -> Any:
    """``value`` when it is a number, NaN and inf included (compare has rules for them), or null."""
    if value is None or isinstance(value, float):
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Malformed(f"{what} is {_show(value)}, not a number")
    if abs(value) > sys.float_info.max:  # compare's float arithmetic would overflow
        raise _Malformed(f"{what} is {_show(value)}, too large a number")
    return value


def _numbers(container: dict[str, Any], key: str, what: str | None = None) -> None:
    """A list of numbers (latency rounds), or absent or null."""
    values, what = container.get(key), what or key
    if values is not None and not isinstance(values, list):
        raise _Malformed(f"{what} is {_show(values)}, not a list of numbers")
    for index, value in enumerate(values or ()):
        if value is None:
            raise _Malformed(f"{what}[{index}] is None, not a number")
        _number(value, f"{what}[{index}]")
