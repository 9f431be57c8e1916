"""``--compresslab-shard I/N``: one of N machines runs its share of the selected cases, and the
shards' runs merge into one (merge.py, ``compresslab merge``).

Cases are split by group, never one by one: the cases of a model whose chains start with the same
stage (``distill-half``, ``distill-half+ov-int8``, ``distill-half+vocab-trim+ov-int8``) build that
stage once, so they go to one shard together. Groups are dealt out longest first to the shard
that ends least loaded (LPT); a shard that takes its first group of a model also pays that
model's baseline (its base stage and fp32 evaluation), so a model's groups gather on few shards
unless spreading them pays. The cost of a group is the build and evaluation seconds the newest
runs in the results directory recorded for its cases (a stage two cases share counted once); with
no recorded times the cases are counted. Runs of the commit under test are not read, so shards
run one after another in one checkout see the same history. The same selection, N and recorded runs give every
shard the same plan: each shard's run records the plan's digest, and ``compresslab merge``
refuses shards of different plans.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ENV = "COMPRESSLAB_SHARD"
OPTION = "--compresslab-shard"
HISTORY_RUNS = 20  # newest saved runs read for the cases' times
SHARD_KEY = "compresslab_shard"  # an xdist worker's plan, handed to the controller

Case = tuple[str, str]  # (model, chain)


def parse(text: str, source: str = OPTION) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4); anything else is one line naming the value and the valid form."""
    index, sep, count = text.strip().partition("/")
    if sep and index.strip().isdigit() and count.strip().isdigit():
        i, n = int(index), int(count)
        if 1 <= i <= n:
            return i, n
    shown = f"{source}={text}" if source == ENV else f"{source} {text}"
    raise ValueError(f"{shown}: not a shard; write I/N with 1 <= I <= N, e.g. 1/4 (shard 1 of 4)")


@dataclass(frozen=True)
class CaseTimes:
    """What the newest saved run holding a case recorded: each non-identity stage's build seconds
    in chain order (name, seconds), the base stage's, and the task evaluations'."""

    stages: tuple[tuple[str, float], ...]
    base_s: float
    eval_s: float


def recorded_times(runs_dir: Path, cases: Iterable[Case], limit: int = HISTORY_RUNS,
                   current_commit: str | None = None) -> dict[Case, CaseTimes]:
    """The times of ``cases`` from the newest ``limit`` saved runs (newest first, the first holding
    a case wins); unreadable runs are passed over: balancing is a guess, not a gate.

    Runs of ``current_commit`` (the commit under test; None outside git) are left out: shards run
    one after another in one checkout write their runs into the same directory, and a later shard
    that read an earlier one's times would plan differently (cases run twice, or by no shard)."""
    from compresslab import runs

    wanted, found = set(cases), {}
    for path in sorted(Path(runs_dir).glob("*.json"), reverse=True)[:limit]:
        try:
            run = runs.load(path.absolute())
        except runs.RunError:
            continue
        if run.commit == current_commit:
            continue
        for record in run.records.values():
            case = (record.model, record.chain)
            if case in wanted and case not in found:
                times = case_times(record.result)
                if times is not None:
                    found[case] = times
        if len(found) == len(wanted):
            break
    return found


def case_times(result) -> CaseTimes | None:
    """A CaseResult's recorded build and evaluation seconds; None when it has none (a skipped case)."""
    stages = [stage for stage in result.stages or [] if isinstance(stage, dict)]
    seconds = [stage.get("build_s") for stage in stages]
    if not stages or not all(isinstance(s, (int, float)) for s in seconds):
        return None
    evals = [detail.get("eval_s") for detail in (result.task_details or {}).values() if isinstance(detail, dict)]
    base = sum(s for stage, s in zip(stages, seconds) if stage.get("name") == "base")
    own = tuple((str(stage.get("name")), float(s)) for stage, s in zip(stages, seconds) if stage.get("name") != "base")
    return CaseTimes(own, float(base), float(sum(e for e in evals if isinstance(e, (int, float)))))


@dataclass
class Plan:
    count: int
    shard_of: dict[Case, int]  # 1-based
    loads: list[float]
    balanced_by: str
    sizes: list[int] = field(default_factory=list)  # cases per shard

    @property
    def digest(self) -> str:
        text = json.dumps([self.count, sorted([*case, shard] for case, shard in self.shard_of.items())])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan(cases: Iterable[Case], count: int, group_of: Callable[[Case], Any],
         times: dict[Case, CaseTimes] | None = None) -> Plan:
    """Each case's shard (1..count): groups (``group_of``, e.g. the model and the chain's first
    stage) whole, longest first, to the shard that ends least loaded; ties to the lowest shard
    (a model that fits in an even share stays whole: its baseline is built once)."""
    cases = sorted(set(cases))
    times = {case: t for case, t in (times or {}).items() if case in cases}
    groups: dict[Any, list[Case]] = {}
    for case in cases:
        groups.setdefault(group_of(case), []).append(case)
    if times:
        cost, baseline_cost = _timed_costs(groups, times)
        balanced_by = f"the build and evaluation times recorded for {len(times)} of {len(cases)} cases"
    else:
        cost, baseline_cost = {key: float(len(members)) for key, members in groups.items()}, {}
        balanced_by = "the number of cases (no recorded times)"
    loads, models_on = [0.0] * count, [set() for _ in range(count)]
    shard_of: dict[Case, int] = {}
    for members, unit_cost, model in _units(groups, cost, baseline_cost, count):
        def load_with(shard: int) -> float:
            extra = 0.0 if model is None or model in models_on[shard] else baseline_cost.get(model, 0.0)
            return loads[shard] + unit_cost + extra

        shard = min(range(count), key=lambda s: (load_with(s), s))
        loads[shard] = load_with(shard)
        models_on[shard].add(model)
        shard_of.update((case, shard + 1) for case in members)
    sizes = [sum(1 for s in shard_of.values() if s == index) for index in range(1, count + 1)]
    return Plan(count, shard_of, loads, balanced_by, sizes)


def _units(groups: dict[Any, list[Case]], cost: dict[Any, float], baseline_cost: dict[str, float], count: int):
    """What is dealt out, longest first: a model whose baseline and groups fit in an even share goes
    whole (its baseline built once); a larger model's groups go one by one, each shard paying the
    baseline once (model: None for a whole model, whose cost holds it)."""
    by_model: dict[str, list[Any]] = {}
    for key in sorted(groups, key=repr):
        by_model.setdefault(groups[key][0][0], []).append(key)
    totals = {model: baseline_cost.get(model, 0.0) + sum(cost[key] for key in keys) for model, keys in by_model.items()}
    share = sum(totals.values()) / count
    units = []
    for model, keys in by_model.items():
        if count > 1 and totals[model] <= share:
            units.append(([case for key in keys for case in groups[key]], totals[model], None, repr(model)))
        else:
            units += [(groups[key], cost[key], model, repr(key)) for key in keys]
    return [unit[:3] for unit in sorted(units, key=lambda unit: (-unit[1], unit[3]))]


def _timed_costs(groups: dict[Any, list[Case]], times: dict[Case, CaseTimes]):
    """Seconds per group (each stage prefix built once, each case evaluated once; a case without
    recorded times costs the median case) and per model (its base stage and fp32 evaluation)."""
    own = [sum(s for _, s in t.stages) + t.eval_s for t in times.values() if t.stages]  # fp32's is the baseline
    typical = statistics.median(own) if own else 0.0
    cost = {}
    for key, members in groups.items():
        prefixes: dict[tuple[str, ...], float] = {}
        total = 0.0
        for case in members:
            if case not in times:
                total += typical
                continue
            names = tuple(name for name, _ in times[case].stages)
            for depth, (_, seconds) in enumerate(times[case].stages):
                prefixes.setdefault(names[:depth + 1], seconds)
            total += times[case].eval_s if times[case].stages else 0.0  # fp32's: the model's baseline
        cost[key] = total + sum(prefixes.values())
    baseline: dict[str, float] = {}
    for (model, _), t in sorted(times.items()):
        baseline[model] = max(baseline.get(model, 0.0), t.base_s + (t.eval_s if not t.stages else 0.0))
    typical_base = statistics.median(baseline.values())
    for model in {case[0] for members in groups.values() for case in members} - set(baseline):
        baseline[model] = typical_base
    return cost, baseline


def first_stage(chain: str, methods) -> str:
    """The chain's first stage that builds something (an identity stage such as fp32 reuses the
    baseline): the stage its cases share; the chain's first id when every stage is an identity. A
    stage built beside a companion of the baseline (a speculative decoder's distill-half draft) goes
    with that companion's cases."""
    from compresslab.pipeline import companions_of, parse_chain

    try:
        parts = parse_chain(chain, methods)
    except (KeyError, ValueError):  # not a chain of this catalog: the case is its own group
        return chain
    first = next((part for part in parts if not getattr(methods[part], "identity", False)), parts[0])
    return next(iter(companions_of(methods[first])), first)


def configure(config: pytest.Config) -> None:
    """Read the shard (option over environment) and register the hooks that split the selection;
    a bad value is one usage line (exit 4) before anything is collected."""
    text, source = config.getoption(OPTION), OPTION
    if text is None and os.environ.get(ENV):
        text, source = os.environ[ENV], ENV
    if text is None:
        return
    try:
        index, count = parse(text, source)
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None
    config.pluginmanager.register(ShardPlugin(index, count), "compresslab-shard")


class ShardPlugin:
    def __init__(self, index: int, count: int) -> None:
        self.index, self.count = index, count
        self.info: dict[str, Any] | None = None  # what the run records about its shard

    @pytest.hookimpl(trylast=True)  # after the tiers, -k, -m and --deselect: the cases the run selected
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        from compresslab.plugin import _case_param
        from compresslab.results import git_info
        from compresslab.session import session_of

        session = session_of(config)
        cases = {item: _case_param(item) for item in items}
        selected = sorted({case for case in cases.values() if case is not None})
        runs_dir = session.results_dir / "runs"
        methods = session.catalog.methods if selected else {}
        commit = git_info(session.results_dir.parent)["commit"]  # what the runs of this checkout record
        shards = plan(selected, self.count, lambda case: (case[0], first_stage(case[1], methods)),
                      recorded_times(runs_dir, selected, current_commit=commit) if selected else {})
        # tests that are no compresslab case run once, on the first shard
        mine = [item for item in items if shards.shard_of.get(cases[item], 1) == self.index]
        if len(mine) < len(items):
            kept = set(mine)
            config.hook.pytest_deselected(items=[item for item in items if item not in kept])
            items[:] = mine
        self.info = {"index": self.index, "count": self.count, "cases": shards.sizes[self.index - 1],
                     "sizes": shards.sizes, "selected": len(selected), "plan": shards.digest,
                     "balanced_by": shards.balanced_by}

    def pytest_report_collectionfinish(self, config: pytest.Config) -> str | None:
        if self.info is None:
            return None
        info = self.info
        return (f"compresslab: shard {self.index}/{self.count}: {info['cases']} of {info['selected']} cases "
                f"(plan {info['plan']}, balanced by {info['balanced_by']}); `compresslab merge` joins the shards' runs")

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        """xdist controller: every worker planned the same split; keep one worker's account of it."""
        info = getattr(node, "workeroutput", {}).get(SHARD_KEY)
        if info and self.info is None:
            self.info = info

    @pytest.hookimpl(tryfirst=True)  # before plugin.py's session end writes the sidecar
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        config = session.config
        if hasattr(config, "workerinput"):
            config.workeroutput[SHARD_KEY] = self.info
        elif self.info is not None:
            from compresslab.session import session_of

            session_of(config).sidecar_fields["shard"] = self.info

    @pytest.hookimpl(optionalhook=True)
    def pytest_benchmark_update_json(self, config: pytest.Config, benchmarks, output_json: dict) -> None:
        """pytest-benchmark's JSON of a shard says which shard it is, as the sidecar does."""
        from compresslab.session import session_of

        block = output_json.setdefault("compresslab", {})
        block["settings"] = session_of(config).recorded_settings()
        if self.info is not None:
            block["shard"] = self.info
