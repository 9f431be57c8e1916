"""The sidecar results JSON: every case of a run with its metrics, written even when
pytest-benchmark saves nothing (``--benchmark-disable``, pytest-xdist).

Each finished case is also appended to the run's journal (``<results>/journal/<run id>-<process>.jsonl``)
the moment it ends, so a run that is killed keeps what it measured: the session end turns the
records into the sidecar (marked incomplete when the run was interrupted) and drops the journal;
a journal left by a run that never reached its end is itself a readable run (``runs.load``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from compresslab import __version__

SIDECAR_SCHEMA = 1


def git_info(cwd: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status) if status is not None else None}


def atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)


def sidecar_document(records: list[dict[str, Any]], results_dir: Path, incomplete: str | None = None) -> dict[str, Any]:
    """``incomplete``: why the run ended before its last case (interrupted, SIGTERM, killed), or None."""
    document = {
        "schema": SIDECAR_SCHEMA,
        "compresslab_version": __version__,
        "created": time.strftime("%Y%m%dT%H%M%S"),
        "commit_info": git_info(results_dir.parent),
        "machine_info": {"node": platform.node(), "machine": platform.machine(), "python": platform.python_version()},
        "benchmarks": sorted(records, key=lambda r: r["fullname"]),
    }
    if incomplete:
        document["incomplete"] = incomplete
    return document


def write_sidecar(document: dict[str, Any], results_dir: Path) -> Path:
    """The run as ``runs/<time>_<commit>[_incomplete].json`` and ``latest.json``; returns the first."""
    created, commit = document["created"], document["commit_info"]
    incomplete = document.get("incomplete")
    name = f"{created}_{(commit.get('commit') or 'nogit')[:10]}{'_incomplete' if incomplete else ''}.json"
    path = results_dir / "runs" / name
    atomic_write_json(path, document)
    atomic_write_json(results_dir / "latest.json", document)
    return path


def as_json(document: dict[str, Any]) -> dict[str, Any]:
    """The document exactly as a reader of the written file sees it (tuples as lists, other
    objects as their str), without reading the file back."""
    return json.loads(json.dumps(document, default=str))


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"results file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ValueError(f"{path}: no 'benchmarks' list; not a compresslab sidecar or pytest-benchmark JSON")
    return data


JOURNAL_DIR = "journal"


def journal_path(results_dir: Path, run_id: str, process: str) -> Path:
    """One file per process (an xdist worker or the main process) of one run: no two writers share one."""
    return results_dir / JOURNAL_DIR / f"{run_id}-{process}.jsonl"


def append_to_journal(path: Path, record: dict[str, Any]) -> None:
    """One line per finished case, on disk before the next case starts (a SIGKILL loses at most the
    case that was running)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=str, allow_nan=True)
    with open(path, "a", encoding="utf-8") as journal:
        journal.write(line + "\n")
        journal.flush()
        os.fsync(journal.fileno())


def read_journal(paths: list[Path]) -> list[dict[str, Any]]:
    """The records of one run's journal files; a last line cut short by a kill is skipped."""
    records = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the write a kill interrupted
            if isinstance(record, dict):
                records.append(record)
    return records


def run_journals(results_dir: Path, run_id: str) -> list[Path]:
    return sorted((results_dir / JOURNAL_DIR).glob(f"{run_id}-*.jsonl"))


def drop_journals(paths: list[Path]) -> None:
    """Once the sidecar holds the run's records, its journal has served."""
    for path in paths:
        path.unlink(missing_ok=True)
    if paths:
        with contextlib.suppress(OSError):  # left while another run's journal is in it
            paths[0].parent.rmdir()
