"""The sidecar results JSON: every case of a run with its metrics, written even when
pytest-benchmark saves nothing (``--benchmark-disable``, pytest-xdist)."""

from __future__ import annotations

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


def write_sidecar(records: list[dict[str, Any]], results_dir: Path) -> Path:
    created = time.strftime("%Y%m%dT%H%M%S")
    commit = git_info(results_dir.parent)
    document = {
        "schema": SIDECAR_SCHEMA,
        "compresslab_version": __version__,
        "created": created,
        "commit_info": commit,
        "machine_info": {"node": platform.node(), "machine": platform.machine(), "python": platform.python_version()},
        "benchmarks": sorted(records, key=lambda r: r["fullname"]),
    }
    name = f"{created}_{(commit.get('commit') or 'nogit')[:10]}.json"
    path = results_dir / "runs" / name
    atomic_write_json(path, document)
    atomic_write_json(results_dir / "latest.json", document)
    return path


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
