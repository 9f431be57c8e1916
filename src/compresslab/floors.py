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

A chain's default is the loosest of its stages' family defaults: error accumulates along a
chain, and an override states the real target.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compresslab.pipeline import parse_chain
from compresslab.tasks.metrics import DIRECTIONS, direction

BOUND_KEYS = ("min_recovery", "max_increase", "min", "max")
RULE_KEYS = (*BOUND_KEYS, "max_size_mb")
TOP_LEVEL = ("family", "model", "override")


class FloorsError(ValueError):
    pass


@dataclass(frozen=True)
class Floor:
    min_recovery: Mapping[str, float] = field(default_factory=dict)
    max_increase: Mapping[str, float] = field(default_factory=dict)
    min: Mapping[str, float] = field(default_factory=dict)
    max: Mapping[str, float] = field(default_factory=dict)
    max_size_mb: float | None = None

    def loosest(self, other: Floor) -> Floor:
        return Floor(
            min_recovery=_merge(self.min_recovery, other.min_recovery, min),
            max_increase=_merge(self.max_increase, other.max_increase, max),
            min=_merge(self.min, other.min, min),
            max=_merge(self.max, other.max, max),
            max_size_mb=_pick(self.max_size_mb, other.max_size_mb, max),
        )

    def overridden_by(self, other: Floor) -> Floor:
        return Floor(
            min_recovery={**self.min_recovery, **other.min_recovery},
            max_increase={**self.max_increase, **other.max_increase},
            min={**self.min, **other.min},
            max={**self.max, **other.max},
            max_size_mb=other.max_size_mb if other.max_size_mb is not None else self.max_size_mb,
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: dict(getattr(self, k)) for k in BOUND_KEYS if getattr(self, k)}
        if self.max_size_mb is not None:
            out["max_size_mb"] = self.max_size_mb
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
    return value / baseline if direction(metric) > 0 else baseline / value


def check(floor: Floor, metrics: Mapping[str, float], baseline: Mapping[str, float],
          size_mb: float | None) -> list[Violation]:
    out = []
    for metric, minimum in floor.min_recovery.items():
        if metric in metrics and metric in baseline:
            bound = minimum * baseline[metric]
            if metrics[metric] < bound:
                out.append(Violation(f"min_recovery.{metric}", (
                    f"{metric} {metrics[metric]:.4g} < floor {bound:.4g} ({minimum:.1%} of baseline "
                    f"{baseline[metric]:.4g}); recovery {metrics[metric] / baseline[metric]:.2%}")))
    for metric, allowed in floor.max_increase.items():
        if metric in metrics and metric in baseline:
            bound = (1 + allowed) * baseline[metric]
            if metrics[metric] > bound:
                out.append(Violation(f"max_increase.{metric}", (
                    f"{metric} {metrics[metric]:.4g} > ceiling {bound:.4g} (baseline {baseline[metric]:.4g} "
                    f"+{allowed:.1%}); increase {metrics[metric] / baseline[metric] - 1:+.2%}")))
    for metric, minimum in floor.min.items():
        if metric in metrics and metrics[metric] < minimum:
            out.append(Violation(f"min.{metric}", f"{metric} {metrics[metric]:.4g} < absolute floor {minimum:.4g}"))
    for metric, maximum in floor.max.items():
        if metric in metrics and metrics[metric] > maximum:
            out.append(Violation(f"max.{metric}", f"{metric} {metrics[metric]:.4g} > absolute ceiling {maximum:.4g}"))
    if floor.max_size_mb is not None and size_mb is not None and size_mb > floor.max_size_mb:
        out.append(Violation("max_size_mb", f"size {size_mb:.2f} MB > ceiling {floor.max_size_mb:.2f} MB"))
    return out


class FloorBook:
    def __init__(self, families: dict[str, Floor], models: dict[str, Floor],
                 overrides: dict[tuple[str, str], Floor], source: str = "<defaults>"):
        self.families, self.models, self.overrides, self.source = families, models, overrides, source

    def floor_for(self, model_id: str, chain_id: str, family_of: Mapping[str, str]) -> Floor:
        stages = chain_id.split("+")
        floor = None
        for stage in stages:
            family_floor = self.families.get(family_of[stage], Floor())
            floor = family_floor if floor is None else floor.loosest(family_floor)
        floor = (floor or Floor()).overridden_by(self.models.get(model_id, Floor()))
        return floor.overridden_by(self.overrides.get((model_id, chain_id), Floor()))


def _rule(table: Any, where: str, source: str) -> Floor:
    if not isinstance(table, dict):
        raise FloorsError(f"{source}: [{where}] must be a table, got {type(table).__name__}")
    unknown = set(table) - set(RULE_KEYS)
    if unknown:
        raise FloorsError(f"{source}: [{where}] has unknown key(s) {', '.join(sorted(unknown))}; "
                          f"valid: {', '.join(RULE_KEYS)}")
    bounds = {key: _metric_bounds(table.get(key, {}), f"{where}.{key}", source) for key in BOUND_KEYS}
    size = table.get("max_size_mb")
    if size is not None and (not isinstance(size, int | float) or isinstance(size, bool) or size <= 0):
        raise FloorsError(f"{source}: [{where}] max_size_mb must be a positive number, got {size!r}")
    for metric, value in bounds["min_recovery"].items():
        if not 0 < value <= 1.5:
            raise FloorsError(f"{source}: [{where}] min_recovery.{metric} = {value} is not a ratio in (0, 1.5]")
    return Floor(**bounds, max_size_mb=size)


def _metric_bounds(table: Any, where: str, source: str) -> dict[str, float]:
    if not isinstance(table, dict):
        raise FloorsError(f"{source}: {where} must be an inline table of metric = number")
    out = {}
    for metric, value in table.items():
        if metric not in DIRECTIONS:
            raise FloorsError(f"{source}: {where} names unknown metric {metric!r}; valid: {', '.join(sorted(DIRECTIONS))}")
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            raise FloorsError(f"{source}: {where}.{metric} must be a number, got {value!r}")
        out[metric] = float(value)
    return out


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
                parse_chain(chain_id, dict(methods))
            except (KeyError, ValueError) as err:
                raise FloorsError(f"{source}: [override.{model_id}.\"{chain_id}\"] {err.args[0]}") from None
            overrides[(model_id, chain_id)] = _rule(table, f"override.{model_id}.{chain_id}", source)
    return FloorBook(families, models, overrides, source)


def load(path: Path, model_ids: Iterable[str], methods: Mapping[str, Any]) -> FloorBook:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FloorsError(f"floors file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise FloorsError(f"{path}: not valid TOML: {err}") from None
    return parse(data, str(path), model_ids, methods)
