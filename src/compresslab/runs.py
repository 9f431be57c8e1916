"""Saved runs: find one (file, run number, commit glob) and read it into one record shape.

A run is either pytest-benchmark's JSON (``.benchmarks/<machine>/NNNN_<commit>_<time>.json``,
compresslab's fields in each benchmark's ``extra_info``) or compresslab's sidecar
(``.compresslab/runs/*.json``, ``.compresslab/latest.json``), which also holds the skipped and
failed cases. Both become a :class:`Run` of :class:`results.CaseRecord` keyed by benchmark name.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compresslab import results
from compresslab.results import CaseRecord, Malformed

BENCHMARKS_DIR = ".benchmarks"
RESULTS_DIR = ".compresslab"
RUN_NUMBER = re.compile(r"^\d{1,4}$")

class RunError(ValueError):
    """A run that cannot be found or read: bad input (exit 2), never a regression."""


@dataclass(frozen=True)
class Run:
    path: Path
    kind: str  # "pytest-benchmark" or "sidecar"
    records: dict[str, CaseRecord]
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
            seconds = results.stage_build_seconds(record.result.stages or [])
            if seconds is not None:
                found.setdefault((record.model, record.chain), (*seconds, path.stem.split("_")[0]))
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
            raise RunError(f"{path}: benchmark #{index} is {results.show_value(bench)}, not an object")
        try:
            record = _record(bench, is_sidecar)
        except Malformed as err:
            raise RunError(f"{path}: {_label(index, bench)}: {err}") from None
        if record is not None:
            records[record.name] = record
    if not records:
        raise RunError(f"{path}: no compresslab benchmarks in it")
    try:
        commit = results.object_field(document, "commit_info")
        ids = [results.string_field(commit, key, required=False) for key in ("commit", "id", "branch")]
    except Malformed as err:
        raise RunError(f"{path}: commit_info: {err}") from None
    incomplete = document.get("incomplete")
    return Run(path, "sidecar" if is_sidecar else "pytest-benchmark", records, commit=ids[0] or ids[1],
               branch=ids[2], created=document.get("created") or document.get("datetime"),
               incomplete=incomplete if isinstance(incomplete, str) else None)


def _benchmarks(document: Any, path: Path) -> list[Any]:
    if not isinstance(document, dict):
        raise RunError(f"{path}: the top level is {results.show_value(document)}, "
                       f"not an object with a 'benchmarks' list")
    benchmarks = document.get("benchmarks")
    if not isinstance(benchmarks, list):
        found = "missing" if benchmarks is None else f"{results.show_value(benchmarks)}, not a list"
        raise RunError(f"{path}: 'benchmarks' is {found}; not a compresslab sidecar or pytest-benchmark JSON")
    return benchmarks


def _record(bench: dict[str, Any], is_sidecar: bool) -> CaseRecord | None:
    """The case a benchmark holds; None for a benchmark that is not a compresslab case."""
    if is_sidecar:
        return CaseRecord.from_sidecar(bench) if "model" in bench else None
    return CaseRecord.from_benchmark(bench) if results.is_case(results.object_field(bench, "extra_info")) else None


def _label(index: int, bench: dict[str, Any]) -> str:
    name = bench.get("name")
    if name is None:
        return f"benchmark #{index}"
    shown = results.show_value(name)
    return f"benchmark #{index} ({shown[1:-1] if isinstance(name, str) else shown})"
