"""floors.toml -> per (model, method chain) floors, and checks with readable messages.

Floors are relative to the same run's fp32 baseline (recovery), as in llm-compressor's gates,
plus optional absolute bounds and a size ceiling:

    [family.int8]                         # default for every method of a family
    min_recovery = { accuracy = 0.99 }    # metric / baseline, higher-is-better metrics
    max_increase = { perplexity = 0.02 }  # metric / baseline - 1, lower-is-better metrics

    [model.minilm-sentiment]              # absolute bounds for every method of one model
    min = { accuracy = 0.70 }

    [override.minilm-sentiment.int8-dynamic]  # one model x method (or chain) combination
    max_size_mb = 40

    [override.smollm2-135m.prune-l1-50]   # known to fall below the floors a user would accept
    expected_failure = "magnitude pruning without recovery wrecks a 135M decoder"
    reference = { perplexity = 375.4 }    # what it measured: a run worse than this by more
                                          # than reference_tolerance (relative) fails for real

    [method.ort-int8]                     # one method id, over its family's default
    max_size_ratio = 0.35                 # artifact bytes / the same run's fp32 bytes

    [method.qat-int8]                     # at least as good as another row of the same model
    twin = "int8-dynamic"                 # in the same run (skipped, with the reason recorded,
    twin_metrics = ["accuracy"]           # when that row is not in it)

A chain's default is the loosest of its stages' defaults (error accumulates along a chain; an
override states the real target); its size ceiling is the smallest of its stages' ratios (a
chain must be at least as small as its most compressing stage promises alone). A floor is a
promise about quality, never a record of what was measured: a combination below it is an
expected failure (pytest XFAIL, its values still recorded and gated), not a reason to loosen it.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compresslab.pipeline import parse_chain
from compresslab.tasks.metrics import METRICS, lookup

BOUND_KEYS = ("min_recovery", "max_increase", "min", "max")
RULE_KEYS = (*BOUND_KEYS, "max_size_mb", "max_size_ratio", "twin", "twin_metrics")
OVERRIDE_KEYS = (*RULE_KEYS, "expected_failure", "reference", "reference_tolerance")
DEFAULT_REFERENCE_TOLERANCE = 0.05
TOP_LEVEL = ("family", "method", "model", "override")


class FloorsError(ValueError):
    pass


try:  # pytest is there whenever floors are checked in a run; the CLI only lists them
    from _pytest.outcomes import Failed as _Failure
except ImportError:  # pragma: no cover
    _Failure = AssertionError  # type: ignore[misc,assignment]


class BelowFloors(_Failure):  # type: ignore[misc,valid-type]
    """A case measured below its floors: what an expected failure's xfail marker expects."""


@dataclass(frozen=True)
class Floor:
    min_recovery: Mapping[str, float] = field(default_factory=dict)
    max_increase: Mapping[str, float] = field(default_factory=dict)
    min: Mapping[str, float] = field(default_factory=dict)
    max: Mapping[str, float] = field(default_factory=dict)
    max_size_mb: float | None = None
    max_size_ratio: float | None = None  # of the same run's baseline artifact
    # a known failure of this combination: why it falls below the floors (pytest XFAIL)
    expected_failure: str | None = None
    # measured values of a known failure, with the relative slack a run may lose beyond them
    reference: Mapping[str, float] = field(default_factory=dict)
    reference_tolerance: float = DEFAULT_REFERENCE_TOLERANCE
    # a row of the same model this one must match or beat on twin_metrics in the same run (a QAT row
    # and its PTQ twin); one method's promise: a chain's floor does not inherit it (see then)
    twin: str | None = None
    twin_metrics: tuple[str, ...] = ()

    def loosest(self, other: Floor) -> Floor:
        return Floor(
            min_recovery=_merge(self.min_recovery, other.min_recovery, min),
            max_increase=_merge(self.max_increase, other.max_increase, max),
            min=_merge(self.min, other.min, min),
            max=_merge(self.max, other.max, max),
            max_size_mb=_pick(self.max_size_mb, other.max_size_mb, max),
            max_size_ratio=_pick(self.max_size_ratio, other.max_size_ratio, max),
        )

    def then(self, stage: Floor) -> Floor:
        """This chain followed by one more stage: the loosest bounds, the smallest size ratio."""
        chained = self.loosest(stage)
        ratio = _pick(self.max_size_ratio, stage.max_size_ratio, min)
        return Floor(chained.min_recovery, chained.max_increase, chained.min, chained.max, chained.max_size_mb, ratio)

    def overridden_by(self, other: Floor) -> Floor:
        return Floor(
            min_recovery={**self.min_recovery, **other.min_recovery},
            max_increase={**self.max_increase, **other.max_increase},
            min={**self.min, **other.min},
            max={**self.max, **other.max},
            max_size_mb=other.max_size_mb if other.max_size_mb is not None else self.max_size_mb,
            max_size_ratio=other.max_size_ratio if other.max_size_ratio is not None else self.max_size_ratio,
            expected_failure=other.expected_failure or self.expected_failure,
            reference={**self.reference, **other.reference},
            reference_tolerance=other.reference_tolerance if other.reference else self.reference_tolerance,
            twin=other.twin or self.twin,
            twin_metrics=other.twin_metrics if other.twin else self.twin_metrics,
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: dict(getattr(self, k)) for k in BOUND_KEYS if getattr(self, k)}
        out.update({k: getattr(self, k) for k in ("max_size_mb", "max_size_ratio") if getattr(self, k) is not None})
        if self.expected_failure:
            out["expected_failure"] = self.expected_failure
        if self.reference:
            out.update(reference=dict(self.reference), reference_tolerance=self.reference_tolerance)
        if self.twin:
            out.update(twin=self.twin, twin_metrics=list(self.twin_metrics))
        return out


def _merge(a: Mapping[str, float], b: Mapping[str, float], pick) -> dict[str, float]:
    return {k: pick(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k)) for k in {*a, *b}}


def _pick(a, b, pick):
    return b if a is None else a if b is None else pick(a, b)


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str


def recovery(metric: str, value: float, baseline: float) -> float:
    """1.0 = as good as the baseline; below 1.0 = worse, whatever the metric's direction."""
    if baseline == 0 or value == 0:
        return math.nan
    return value / baseline if lookup(metric).higher_is_better else baseline / value


def check(floor: Floor, metrics: Mapping[str, float], baseline: Mapping[str, float],
          size_mb: float | None, baseline_size_mb: float | None = None) -> list[Violation]:
    """Every bound the measured metrics break. A bound on a metric that is NaN or infinite (here
    or in the baseline) is broken too: ``nan < bound`` is False, and a broken evaluation must not
    pass by comparing false."""
    out = []
    for metric, minimum in floor.min_recovery.items():
        if metric in metrics and metric in baseline:
            out += _non_finite(f"min_recovery.{metric}", metric, metrics, baseline)
            bound = minimum * baseline[metric]
            if metrics[metric] < bound:
                out.append(Violation(f"min_recovery.{metric}", (
                    f"{metric} {metrics[metric]:.4g} < floor {bound:.4g} ({minimum:.1%} of baseline "
                    f"{baseline[metric]:.4g}); recovery {metrics[metric] / baseline[metric]:.2%}")))
    for metric, allowed in floor.max_increase.items():
        if metric in metrics and metric in baseline:
            out += _non_finite(f"max_increase.{metric}", metric, metrics, baseline)
            bound = (1 + allowed) * baseline[metric]
            if metrics[metric] > bound:
                out.append(Violation(f"max_increase.{metric}", (
                    f"{metric} {metrics[metric]:.4g} > ceiling {bound:.4g} (baseline {baseline[metric]:.4g} "
                    f"+{allowed:.1%}); increase {metrics[metric] / baseline[metric] - 1:+.2%}")))
    for metric, minimum in floor.min.items():
        if metric in metrics and not metrics[metric] >= minimum:
            out.append(Violation(f"min.{metric}", f"{metric} {metrics[metric]:.4g} < absolute floor {minimum:.4g}"))
    for metric, maximum in floor.max.items():
        if metric in metrics and not metrics[metric] <= maximum:
            out.append(Violation(f"max.{metric}", f"{metric} {metrics[metric]:.4g} > absolute ceiling {maximum:.4g}"))
    if floor.max_size_mb is not None and size_mb is not None and not size_mb <= floor.max_size_mb:
        out.append(Violation("max_size_mb", f"size {size_mb:.2f} MB > ceiling {floor.max_size_mb:.2f} MB"))
    if floor.max_size_ratio is not None and size_mb is not None and baseline_size_mb:
        ratio = size_mb / baseline_size_mb
        if not ratio <= floor.max_size_ratio:
            out.append(Violation("max_size_ratio", (
                f"size {size_mb:.2f} MB is {ratio:.3f}x the baseline's {baseline_size_mb:.2f} MB > ceiling "
                f"{floor.max_size_ratio:.3f}x")))
    return out


def _non_finite(rule: str, metric: str, metrics: Mapping[str, float], baseline: Mapping[str, float]) -> list:
    bad = [f"{where} {metric} is {value}" for where, value in (("measured", metrics[metric]),
                                                               ("baseline", baseline[metric]))
           if not math.isfinite(value)]
    return [Violation(rule, "; ".join(bad))] if bad else []


def check_present(metrics: Mapping[str, float], expected: Mapping[str, str]) -> list[Violation]:
    """Every metric the model's tasks produce (``{metric: task id}``) must be there and finite:
    a floor on a metric that is missing would otherwise never be checked."""
    out = []
    for metric, task_id in expected.items():
        if metric not in metrics:
            out.append(Violation(f"present.{metric}", f"{metric} is missing: task {task_id} should have produced it"))
        elif not math.isfinite(metrics[metric]):
            out.append(Violation(f"present.{metric}", f"{metric} is {metrics[metric]} (task {task_id})"))
    return out


def check_exact(exact: bool | None, mismatch: str | None) -> list[Violation]:
    """Speculative decoding's promise (models/speculative.py): its output is the target's plain greedy
    output token for token on the benchmark prompts; None: not a speculative case."""
    if exact is False:
        return [Violation("speculative.exact", f"speculative decoding's output differs from plain greedy: {mismatch}")]
    return []


def check_twin(floor: Floor, metrics: Mapping[str, float], twin: Mapping[str, float]) -> list[Violation]:
    """Every twin metric on which the case is worse than its twin's result of the same run (``twin``:
    that case's metrics); a NaN on either side breaks it too. A metric either side lacks is not compared."""
    out = []
    for metric in floor.twin_metrics:
        if metric in metrics and metric in twin:
            ours, theirs = metrics[metric], twin[metric]
            as_good = ours >= theirs if lookup(metric).higher_is_better else ours <= theirs
            if not as_good:  # False for a NaN as well
                out.append(Violation(f"twin.{metric}", (
                    f"{metric} {ours:.4g} is worse than its twin {floor.twin}'s {theirs:.4g} in this run "
                    f"({ours - theirs:+.4g})")))
    return out


def twin_comparison(floor: Floor, metrics: Mapping[str, float], twin: Mapping[str, float] | None,
                    missing: str = "") -> dict[str, Any] | None:
    """What a case records of its twin: the twin's metrics and the case's difference to them, or why
    the twin was not compared (``twin`` None: ``missing`` says why). None for a floor without a twin."""
    if not floor.twin:
        return None
    if twin is None:
        return {"chain": floor.twin, "skipped": missing or f"{floor.twin} has no result in this run"}
    shared = [m for m in floor.twin_metrics if m in metrics and m in twin]
    return {"chain": floor.twin, "metrics": {m: twin[m] for m in shared},
            "difference": {m: metrics[m] - twin[m] for m in shared}}


def check_reference(floor: Floor, metrics: Mapping[str, float]) -> list[Violation]:
    """A known failure may not get worse than its recorded reference values (beyond the tolerance)."""
    out = []
    for metric, value in floor.reference.items():
        measured, direction = metrics.get(metric, math.nan), lookup(metric).direction
        limit = value * (1 - direction * floor.reference_tolerance)
        worse = not (measured >= limit if direction > 0 else measured <= limit)
        if worse:
            out.append(Violation(f"reference.{metric}", (
                f"{metric} {measured:.4g} is worse than its reference {value:.4g} by more than "
                f"{floor.reference_tolerance:.0%} (limit {limit:.4g})")))
    return out


class FloorBook:
    def __init__(self, families: dict[str, Floor], models: dict[str, Floor],
                 overrides: dict[tuple[str, str], Floor], source: str = "<defaults>",
                 methods: dict[str, Floor] | None = None):
        self.families, self.models, self.overrides, self.source = families, models, overrides, source
        self.methods = methods or {}

    def floor_for(self, model_id: str, chain_id: str, family_of: Mapping[str, str]) -> Floor:
        floor = None
        for stage in parse_chain(chain_id, family_of):
            stage_floor = self.families.get(family_of[stage], Floor()).overridden_by(self.methods.get(stage, Floor()))
            floor = stage_floor if floor is None else floor.then(stage_floor)
        floor = (floor or Floor()).overridden_by(self.models.get(model_id, Floor()))
        return floor.overridden_by(self.overrides.get((model_id, chain_id), Floor()))


def _rule(table: Any, where: str, source: str, keys: tuple[str, ...] = RULE_KEYS) -> Floor:
    if not isinstance(table, dict):
        raise FloorsError(f"{source}: [{where}] must be a table, got {type(table).__name__}")
    unknown = set(table) - set(keys)
    if unknown:
        raise FloorsError(f"{source}: [{where}] has unknown key(s) {', '.join(sorted(unknown))}; "
                          f"valid: {', '.join(keys)}")
    bounds = {key: _metric_bounds(table.get(key, {}), f"{where}.{key}", source) for key in BOUND_KEYS}
    size = table.get("max_size_mb")
    if size is not None and (not isinstance(size, int | float) or isinstance(size, bool) or size <= 0):
        raise FloorsError(f"{source}: [{where}] max_size_mb must be a positive number, got {size!r}")
    ratio = table.get("max_size_ratio")
    # up to 2: a speculative decoder ships its target unchanged and a smaller draft beside it
    if ratio is not None and (not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0 < ratio <= 2):
        raise FloorsError(f"{source}: [{where}] max_size_ratio must be a ratio in (0, 2], got {ratio!r}")
    for metric, value in bounds["min_recovery"].items():
        if not 0 < value <= 1.5:
            raise FloorsError(f"{source}: [{where}] min_recovery.{metric} = {value} is not a ratio in (0, 1.5]")
    for metric, value in bounds["max_increase"].items():
        if value < 0:  # a ceiling below the baseline demands that compression improve the model
            raise FloorsError(f"{source}: [{where}] max_increase.{metric} = {value} must be >= 0 "
                              "(a fraction of the baseline the metric may grow by)")
    for key in ("min", "max"):
        for metric, value in bounds[key].items():
            low, high = lookup(metric).value_range
            if not low <= value <= high:
                raise FloorsError(f"{source}: [{where}] {key}.{metric} = {value} is outside the values "
                                  f"{metric} can take [{low:g}, {high:g}]")
    return Floor(**bounds, max_size_mb=size, max_size_ratio=ratio, **_known_failure(table, where, source),
                 **_twin(table, where, source))


def _twin(table: dict, where: str, source: str) -> dict[str, Any]:
    """twin (a row id) and twin_metrics (the metrics compared with it: a non-empty list)."""
    twin, compared = table.get("twin"), table.get("twin_metrics")
    if twin is None:
        if compared is not None:
            raise FloorsError(f"{source}: [{where}] twin_metrics needs a twin (the row id to compare with)")
        return {}
    if not isinstance(twin, str) or not twin.strip():
        raise FloorsError(f"{source}: [{where}] twin must be a row id, got {twin!r}")
    if not isinstance(compared, list) or not compared or not all(isinstance(m, str) for m in compared):
        raise FloorsError(f"{source}: [{where}] twin_metrics must be a non-empty list of metric names, "
                          f"got {compared!r}")
    unknown = [m for m in compared if m not in METRICS]
    if unknown:
        raise FloorsError(f"{source}: [{where}] twin_metrics names unknown metric {unknown[0]!r}; "
                          f"valid: {', '.join(sorted(METRICS))}")
    return {"twin": twin.strip(), "twin_metrics": tuple(compared)}


def _known_failure(table: dict, where: str, source: str) -> dict[str, Any]:
    """expected_failure (a non-empty reason), its reference values and their tolerance."""
    out: dict[str, Any] = {}
    reason = table.get("expected_failure")
    if reason is not None:
        if not isinstance(reason, str) or not reason.strip():
            raise FloorsError(f"{source}: [{where}] expected_failure must be a non-empty reason, got {reason!r}")
        out["expected_failure"] = reason.strip()
    if "reference" in table:
        out["reference"] = _metric_bounds(table["reference"], f"{where}.reference", source)
    tolerance = table.get("reference_tolerance")
    if tolerance is not None:
        if not isinstance(tolerance, int | float) or isinstance(tolerance, bool) or not 0 <= tolerance < 1:
            raise FloorsError(f"{source}: [{where}] reference_tolerance must be a fraction in [0, 1), "
                              f"got {tolerance!r}")
        out["reference_tolerance"] = float(tolerance)
    return out


def _metric_bounds(table: Any, where: str, source: str) -> dict[str, float]:
    if not isinstance(table, dict):
        raise FloorsError(f"{source}: {where} must be an inline table of metric = number")
    out = {}
    for metric, value in table.items():
        if metric not in METRICS:
            raise FloorsError(f"{source}: {where} names unknown metric {metric!r}; valid: {', '.join(sorted(METRICS))}")
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise FloorsError(f"{source}: {where}.{metric} must be a finite number, got {value!r}")
        out[metric] = float(value)
    return out


def _check_twin(floor: Floor, row_id: str, where: str, source: str, methods: Mapping[str, Any]) -> None:
    if floor.twin is None:
        return
    if floor.twin == row_id:
        raise FloorsError(f"{source}: [{where}] twin {floor.twin!r} is the row itself")
    try:
        parse_chain(floor.twin, methods)
    except (KeyError, ValueError) as err:
        raise FloorsError(f"{source}: [{where}] twin: {err.args[0]}") from None


def _check_known(name: str, valid: Iterable[str], what: str, where: str, source: str) -> None:
    valid = sorted(valid)
    if name not in valid:
        raise FloorsError(f"{source}: [{where}] unknown {what} {name!r}; valid: {', '.join(valid)}")


def parse(data: dict[str, Any], source: str, model_ids: Iterable[str], methods: Mapping[str, Any]) -> FloorBook:
    model_ids = tuple(model_ids)
    families_known = {m.family for m in methods.values()}
    unknown = set(data) - set(TOP_LEVEL)
    if unknown:
        raise FloorsError(f"{source}: unknown section(s) {', '.join(sorted(unknown))}; valid: {', '.join(TOP_LEVEL)}")
    families = {}
    for family, table in data.get("family", {}).items():
        _check_known(family, families_known, "method family", f"family.{family}", source)
        families[family] = _rule(table, f"family.{family}", source)
    method_floors = {}
    for method_id, table in data.get("method", {}).items():
        _check_known(method_id, methods, "method", f"method.{method_id}", source)
        method_floors[method_id] = _rule(table, f"method.{method_id}", source)
        _check_twin(method_floors[method_id], method_id, f"method.{method_id}", source, methods)
    models = {}
    for model_id, table in data.get("model", {}).items():
        _check_known(model_id, model_ids, "model", f"model.{model_id}", source)
        models[model_id] = _rule(table, f"model.{model_id}", source)
    overrides = {}
    for model_id, per_method in data.get("override", {}).items():
        _check_known(model_id, model_ids, "model", f"override.{model_id}", source)
        if not isinstance(per_method, dict):
            raise FloorsError(f"{source}: [override.{model_id}] must hold one table per method id")
        for chain_id, table in per_method.items():
            try:
                parse_chain(chain_id, methods)
            except (KeyError, ValueError) as err:
                raise FloorsError(f"{source}: [override.{model_id}.\"{chain_id}\"] {err.args[0]}") from None
            overrides[(model_id, chain_id)] = _rule(table, f"override.{model_id}.{chain_id}", source,
                                                    OVERRIDE_KEYS)
            _check_twin(overrides[(model_id, chain_id)], chain_id, f"override.{model_id}.{chain_id}", source, methods)
    return FloorBook(families, models, overrides, source, method_floors)


# compresslab's default floors, shipped in the package: what a project gets unless it says otherwise
DEFAULT_FLOORS = Path(__file__).with_name("floors.toml")


def read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FloorsError(f"floors file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise FloorsError(f"{path}: not valid TOML: {err}") from None


def load(path: Path, model_ids: Iterable[str], methods: Mapping[str, Any]) -> FloorBook:
    return parse(read(path), str(path), model_ids, methods)


def merged(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base``, table by table down to single values: a project's
    ``[family.int8] min_recovery = { accuracy = 0.995 }`` changes that one bound and keeps the rest."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_layers(path: Path, overlay: Mapping[str, Any], overlay_source: str | None, model_ids: Iterable[str],
                methods: Mapping[str, Any]) -> FloorBook:
    """The floors file at ``path`` with a project's floors over it. The overlay is checked on its own
    first, so that an error in it names the project's file, not the merge."""
    model_ids, name = tuple(model_ids), source_name(path)
    base = read(path)
    if not overlay:
        return parse(base, name, model_ids, methods)
    parse(overlay, overlay_source or "project floors", model_ids, methods)
    return parse(merged(base, overlay), f"{name} + {overlay_source}", model_ids, methods)


def source_name(path: Path) -> str:
    """How messages name a floors file: the default one by its place in the package, not this machine's."""
    return "compresslab/floors.toml (the defaults)" if Path(path).resolve() == DEFAULT_FLOORS.resolve() else str(path)
