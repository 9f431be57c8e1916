"""``compresslab merge RUN...``: the runs of shards (``--compresslab-shard I/N``) as one run that
compare and report read like any other.

Runs merge only when they measured alike: the same commit (and dirty state), compresslab version,
machine type, Python, recorded run settings (device type, threads, rounds, warm-up, memory pass,
tier, case list), device name and library versions of their cases, and pytest-benchmark's timing
options. The machines' names may differ: shards run on different runners. Shard runs must come
from one plan (the same selection and recorded times give the same digest), each shard once and
every shard that had cases present; no case may be in two runs. Any of these is one line (exit 2).
The merged run lists the runs it came from (``merged_from``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from compresslab import results, runs
from compresslab.runs import Run, RunError


def read(spec: str, root: Path = Path(".")) -> tuple[Run, dict[str, Any]]:
    """A finished run (checked by runs.load) and its document as written."""
    path = runs.locate(spec, root)
    if path.suffix == ".jsonl":
        raise RunError(f"{path}: the journal of a run that did not finish; merge finished runs (sidecars or "
                       f"pytest-benchmark JSON)")
    run = runs.load(path.absolute())
    return run, json.loads(path.read_text())


def compresslab_block(run: Run, document: dict[str, Any]) -> dict[str, Any]:
    """Where a run keeps compresslab's run-level fields: the sidecar's top level, or the
    ``compresslab`` object the plugin adds to pytest-benchmark's JSON."""
    if run.kind == "sidecar":
        return document
    block = document.get("compresslab")
    return block if isinstance(block, dict) else {}


def identity(run: Run, document: dict[str, Any]) -> dict[str, Any]:
    """What must agree between runs merged into one; None: not recorded (compared with nothing)."""
    machine, commit = _object(document, "machine_info"), _object(document, "commit_info")

    def across(values) -> list | None:
        found = sorted({json.dumps(v, sort_keys=True) for v in values if v is not None})
        return [json.loads(v) for v in found] or None

    records = list(run.records.values())
    return {
        "commit": run.commit,
        "dirty": commit.get("dirty"),
        "compresslab version": document.get("compresslab_version"),
        "pytest-benchmark version": document.get("version"),
        "machine": machine.get("machine"),
        "python": machine.get("python") or machine.get("python_version"),
        "settings": compresslab_block(run, document).get("settings"),
        "device": across(r.result.device_name for r in records),
        "threads": across(r.result.threads for r in records),
        "libraries": across(r.result.libraries for r in records),
        "pytest-benchmark options": across(b.get("options") for b in document["benchmarks"] if isinstance(b, dict)),
    }


def _object(document: dict[str, Any], key: str) -> dict[str, Any]:
    value = document.get(key)
    return value if isinstance(value, dict) else {}


def check_alike(inputs: list[tuple[Run, dict[str, Any]]]) -> None:
    first, first_doc = inputs[0]
    kinds = {run.kind for run, _ in inputs}
    if len(kinds) > 1:
        other = next(run for run, _ in inputs if run.kind != first.kind)
        raise RunError(f"{other.path} is {other.kind} JSON and {first.path} a {first.kind}: merge runs of one kind")
    reference = identity(first, first_doc)
    for run, document in inputs[1:]:
        for key, value in identity(run, document).items():
            if key in ("commit", "dirty") or (value is not None and reference[key] is not None):
                if value != reference[key]:
                    raise RunError(f"{run.path}: {key} {_show(value)} differs from {_show(reference[key])} in "
                                   f"{first.path}; merge runs of one commit and the same settings")


def _show(value: Any) -> str:
    return results.show_value(value[0] if isinstance(value, list) and len(value) == 1 else value)


def check_shards(inputs: list[tuple[Run, dict[str, Any]]]) -> list[dict[str, Any] | None]:
    """Each run's shard (None: not a shard); shard runs must be of one plan, each once, all present."""
    shards = [compresslab_block(run, document).get("shard") for run, document in inputs]
    shards = [shard if isinstance(shard, dict) else None for shard in shards]
    if not any(shards):
        return shards
    plain = next((run for (run, _), shard in zip(inputs, shards) if shard is None), None)
    if plain is not None:
        raise RunError(f"{plain.path} is not a shard's run and the others are; merge the runs of one sharded run")
    (first, _), plan = inputs[0], shards[0]
    seen: dict[int, Path] = {}
    for (run, _), shard in zip(inputs, shards):
        if (shard.get("count"), shard.get("plan")) != (plan.get("count"), plan.get("plan")):
            raise RunError(f"{run.path}: shard {_label(shard)} of plan {shard.get('plan')} and {first.path}: shard "
                           f"{_label(plan)} of plan {plan.get('plan')}: shards of different selections or "
                           f"recorded times")
        if shard.get("index") in seen:
            raise RunError(f"shard {_label(shard)} given twice: {seen[shard['index']]} and {run.path}")
        seen[shard.get("index")] = run.path
    sizes = plan.get("sizes") if isinstance(plan.get("sizes"), list) else []
    missing = [index for index, size in enumerate(sizes, 1) if size and index not in seen]
    if missing:
        planned = sum(sizes[index - 1] for index in missing)
        labels = ", ".join(f"{index}/{plan.get('count')}" for index in missing)
        raise RunError(f"shard{'s' if len(missing) > 1 else ''} {labels} missing ({planned} planned case(s)); "
                       f"give every shard's run")
    return shards


def _label(shard: dict[str, Any]) -> str:
    return f"{shard.get('index')}/{shard.get('count')}"


def check_disjoint(inputs: list[tuple[Run, dict[str, Any]]]) -> None:
    owner: dict[str, Path] = {}
    for run, _ in inputs:
        for name in run.records:
            if name in owner:
                raise RunError(f"case {name} is in both {owner[name]} and {run.path}; each case must be in one run")
            owner[name] = run.path


def merge(specs: list[str], root: Path = Path(".")) -> tuple[dict[str, Any], list[Run]]:
    """The merged document (the inputs' kind) and the runs it came from."""
    inputs = [read(spec, root) for spec in specs]
    check_alike(inputs)
    shards = check_shards(inputs)
    check_disjoint(inputs)
    runs_in = [run for run, _ in inputs]
    document = copy.deepcopy(inputs[0][1])
    benchmarks = [bench for _, doc in inputs for bench in doc["benchmarks"]]
    document["benchmarks"] = sorted(benchmarks, key=lambda b: str(b.get("fullname") or b.get("name"))
                                    if isinstance(b, dict) else "")
    machines = [_object(doc, "machine_info") for _, doc in inputs]
    nodes = list(dict.fromkeys(str(m["node"]) for m in machines if m.get("node")))
    if nodes:
        document.setdefault("machine_info", {})["node"] = ", ".join(nodes)
    created_key = "created" if runs_in[0].kind == "sidecar" else "datetime"
    times = [doc.get(created_key) for _, doc in inputs if isinstance(doc.get(created_key), str)]
    if times:
        document[created_key] = max(times)
    block = compresslab_block(runs_in[0], document) if runs_in[0].kind == "sidecar" \
        else document.setdefault("compresslab", {})
    block.pop("shard", None)
    block["merged_from"] = [{"run": run.path.name, "shard": _label(shard) if shard else None,
                             "node": machine.get("node"), "created": run.created, "cases": len(run.records)}
                            for run, shard, machine in zip(runs_in, shards, machines)]
    if runs_in[0].kind == "sidecar":
        _merge_sidecar_fields(document, inputs, shards, machines)
    return document, runs_in


def _merge_sidecar_fields(document, inputs, shards, machines) -> None:
    """The run-level facts one shard's sidecar holds for itself: why a shard stopped early, and each
    machine's roofline probe."""
    names = [_label(shard) if shard else run.path.name for (run, _), shard in zip(inputs, shards)]
    stopped = [f"{name}: {run.incomplete}" for name, (run, _) in zip(names, inputs) if run.incomplete]
    document.pop("incomplete", None)
    if stopped:
        document["incomplete"] = "; ".join(stopped)
    peaks = {name: m["roofline"] for name, m in zip(names, machines) if m.get("roofline")}
    document.setdefault("machine_info", {}).pop("roofline", None)
    if peaks:
        document["machine_info"]["roofline"] = {"shards": peaks}


def write(document: dict[str, Any], kind: str, out: str | None, root: Path = Path(".")) -> Path:
    """To ``out``; without it a merged sidecar goes where the plugin writes runs (``runs/`` and
    ``latest.json`` of ``.compresslab``), a merged pytest-benchmark JSON needs ``-o``."""
    if out is not None:
        path = Path(out)
        results.atomic_write_json(path, document)
        return path
    if kind != "sidecar":
        raise ValueError("merging pytest-benchmark JSON: give the file to write with -o OUT")
    results_dir = root / runs.RESULTS_DIR
    commit = _object(document, "commit_info").get("commit") or "nogit"
    path = results_dir / "runs" / f"{document.get('created', 'merged')}_{commit[:10]}_merged.json"
    results.atomic_write_json(path, document)
    results.atomic_write_json(results_dir / "latest.json", document)
    return path
