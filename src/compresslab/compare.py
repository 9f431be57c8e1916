"""Compare two runs benchmark by benchmark and decide regressions by rules such as ``size:+1%``.

A rule ``FIELD:<sign><N><unit>`` names a field (size, latency, speedup, memory or a task metric),
the direction that is bad (``+``: an increase, ``-``: a decrease) and how much of it is tolerated:
``%`` relative to the base value, ``pt`` absolute points of a 0..1 metric (0.5pt = 0.005).

Latency is noisy, so a latency (or speedup) rule fails only when the medians moved past the
threshold *and* the stored rounds say the shift is not noise: a one-sided Mann-Whitney U test
(p < alpha) and a bootstrap 95% interval of the median ratio that excludes 1. Without stored
rounds the threshold alone decides, and the row says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from compresslab.report import BASELINE_ROW, METRIC_LABELS
from compresslab.runs import Record, Run, RunError

ALPHA = 0.05
# fields every record may have (beside its task metrics), with their column titles
GENERIC_FIELDS = {"size": "size MB", "latency": "p50 ms", "speedup": "speedup", "memory": "memory MB",
                  "b16": "b16 ms", "decode": "decode tok/s"}
OPTIONAL_FIELDS = ("memory", "b16", "decode")  # shown only when a rule names them
SAMPLED = {"latency", "speedup"}
RULE = re.compile(r"^(?P<field>[A-Za-z][\w-]*):(?P<sign>[+-])(?P<amount>\d+(?:\.\d+)?)(?P<unit>%|pt)$")


class RuleError(ValueError):
    """A malformed rule or an unknown field: bad input (exit 2)."""


@dataclass(frozen=True)
class Rule:
    field: str
    direction: int  # +1: an increase is bad, -1: a decrease is bad
    amount: float  # a fraction for %, an absolute difference for pt
    unit: str
    text: str

    def change(self, base: float, head: float) -> float:
        if self.unit == "pt":
            return head - base
        return (head - base) / base if base else float("inf") if head > base else 0.0

    def exceeded(self, base: float, head: float) -> bool:
        return self.direction * self.change(base, head) > self.amount + 1e-12


def valid_fields(*runs: Run) -> list[str]:
    metrics = {name for run in runs for r in run.records.values() for name in r.metrics}
    return [*GENERIC_FIELDS, *sorted(metrics | set(METRIC_LABELS))]


def parse_rules(texts: Iterable[str], fields: Iterable[str]) -> list[Rule]:
    """Rules from ``--fail`` arguments; each may hold several, separated by commas or spaces."""
    fields = list(fields)
    rules = []
    for text in (t for chunk in texts for t in re.split(r"[,\s]+", chunk) if t):
        match = RULE.match(text)
        if not match:
            raise RuleError(f"malformed rule {text!r}: write FIELD:+N% or FIELD:-Npt, e.g. size:+1% accuracy:-0.5pt")
        name, unit = match["field"], match["unit"]
        if name not in fields:
            raise RuleError(f"unknown field {name!r} in rule {text!r}; valid fields: {', '.join(fields)}")
        if unit == "pt" and name in GENERIC_FIELDS:
            raise RuleError(f"rule {text!r}: points (pt) are for 0..1 task metrics; use % for {name}")
        amount = float(match["amount"]) / 100
        rules.append(Rule(name, 1 if match["sign"] == "+" else -1, amount, unit, text))
    return rules


@dataclass(frozen=True)
class ShiftTest:
    """Is ``head`` slower than ``base``? ratio of medians, one-sided Mann-Whitney U, bootstrap CI."""

    ratio: float
    p_value: float
    ci: tuple[float, float]
    worse: str = "greater"

    def significant(self, alpha: float) -> bool:
        """Both agree: the rank test, and the interval lies wholly on the bad side of 1. Heavy
        contention makes a few rounds explode; the rank test alone can then call noise a shift."""
        beyond = self.ci[0] > 1 if self.worse == "greater" else self.ci[1] < 1
        return self.p_value < alpha and beyond

    def describe(self) -> str:
        return f"p={self.p_value:.2g}, median ratio {self.ratio:.3f} (95% CI {self.ci[0]:.3f}-{self.ci[1]:.3f})"


def shift_test(base: tuple[float, ...], head: tuple[float, ...], worse: str = "greater",
               resamples: int = 2000, seed: int = 0) -> ShiftTest:
    """``worse``: "greater" when larger samples are the regression (latency), "less" otherwise."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    base_a, head_a = np.asarray(base, dtype=float), np.asarray(head, dtype=float)
    p_value = float(mannwhitneyu(head_a, base_a, alternative=worse).pvalue)
    rng = np.random.default_rng(seed)
    ratios = (np.median(rng.choice(head_a, (resamples, head_a.size)), axis=1)
              / np.median(rng.choice(base_a, (resamples, base_a.size)), axis=1))
    low, high = np.percentile(ratios, [2.5, 97.5])
    return ShiftTest(float(np.median(head_a) / np.median(base_a)), p_value, (float(low), float(high)), worse)


def _samples(record: Record, name: str) -> tuple[float, ...] | None:
    """Rounds for a sampled field: latency as stored; speedup as latency over the run's own fp32 p50,
    so a slower machine (every case slower alike) does not move it."""
    samples = record.samples_ms
    if not samples or name not in SAMPLED:
        return None
    if name == "latency":
        return samples
    reference = record.extra.get("baseline_latency_p50_ms")
    return tuple(s / reference for s in samples) if reference else None


@dataclass(frozen=True)
class Delta:
    field: str
    base: float | None
    head: float | None
    rule: Rule | None = None
    test: ShiftTest | None = None
    regression: bool = False
    note: str = ""

    @property
    def points(self) -> bool:
        """Shown as absolute points: a 0..1 task metric."""
        return self.field not in GENERIC_FIELDS and all(v is not None and 0 <= v <= 1 for v in (self.base, self.head))

    def change_text(self) -> str:
        if self.base is None or self.head is None:
            return ""
        if self.points:
            return f"{100 * (self.head - self.base):+.2f}pt"
        return f"{(self.head - self.base) / self.base:+.1%}" if self.base else ""


def field_delta(name: str, base: Record, head: Record, rule: Rule | None, alpha: float) -> Delta:
    before, after = base.value(name), head.value(name)
    if before is None or after is None:
        return Delta(name, before, after, rule)
    base_samples, head_samples = _samples(base, name), _samples(head, name)
    test = None
    if base_samples and head_samples:
        # for latency more is worse; for speedup the samples are normalized latency, so less speedup = more
        slower_is_bad = (rule.direction if rule else 1) * (1 if name == "latency" else -1) > 0
        test = shift_test(base_samples, head_samples, "greater" if slower_is_bad else "less")
    if rule is None:
        return Delta(name, before, after, None, test)
    beyond = rule.exceeded(before, after)
    note = "" if test or name not in SAMPLED else "no samples; threshold only"
    return Delta(name, before, after, rule, test, beyond and (test is None or test.significant(alpha)), note)


@dataclass
class Row:
    name: str
    model: str
    method: str
    base: Record | None
    head: Record | None
    deltas: dict[str, Delta] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "new" if self.base is None else "missing" if self.head is None else "both"

    @property
    def outcome_changed(self) -> bool:
        return self.status == "both" and self.base.outcome != self.head.outcome

    @property
    def regressions(self) -> list[str]:
        found = []
        if self.outcome_changed and self.base.outcome == "passed" and self.head.outcome == "failed":
            found.append(f"outcome passed -> failed ({self.head.reason or 'see the test report'})")
        for delta in self.deltas.values():
            if delta.regression:
                detail = f", {delta.test.describe()}" if delta.test else f", {delta.note}" if delta.note else ""
                found.append(f"{delta.field} {_value(delta.field, delta.base)} -> {_value(delta.field, delta.head)} "
                             f"({delta.change_text()}; rule {delta.rule.text}{detail})")
        return found


@dataclass
class Comparison:
    base: Run
    head: Run
    rules: list[Rule]
    rows: list[Row]
    alpha: float = ALPHA

    @property
    def regressions(self) -> list[tuple[Row, str]]:
        return [(row, message) for row in self.rows for message in row.regressions]


def compare(base: Run, head: Run, rules: list[Rule], alpha: float = ALPHA) -> Comparison:
    if not base.models & head.models:
        raise RunError(f"the runs share no model: base has {', '.join(sorted(base.models))}; "
                       f"head has {', '.join(sorted(head.models))}")
    by_rule = {rule.field: rule for rule in rules}
    rows = []
    every = {**base.records, **head.records}
    for name in sorted(every, key=lambda n: (every[n].model, every[n].method != BASELINE_ROW, every[n].method)):
        before, after = base.records.get(name), head.records.get(name)
        either = every[name]
        row = Row(name, either.model, either.method, before, after)
        if before and after:
            shown = ["latency", "speedup", "size", *(f for f in OPTIONAL_FIELDS if f in by_rule),
                     *dict.fromkeys([*before.metrics, *after.metrics])]
            row.deltas = {f: field_delta(f, before, after, by_rule.get(f), alpha) for f in shown}
        rows.append(row)
    return Comparison(base, head, rules, rows, alpha)


def _value(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name == "size":
        return f"{value / 1e6:.1f} MB"
    if name == "latency":
        return f"{value:.2f} ms"
    if name == "memory":
        return f"{value:.0f} MB"
    if name == "speedup":
        return f"{value:.2f}x"
    return f"{value:.4f}" if 0 <= value <= 1 else f"{value:.4g}"


def _cell(delta: Delta | None) -> str:
    if delta is None or delta.head is None:
        return "-"
    text = f"{_value(delta.field, delta.head).split()[0]} {delta.change_text()}".rstrip()
    if delta.test:
        text += f" p={delta.test.p_value:.2g}"
    elif delta.note:
        text += " (threshold only)"
    return f"{text} !" if delta.regression else text


def _outcome(row: Row) -> str:
    if row.status != "both":
        return f"{row.status}: {(row.head or row.base).outcome}"
    if row.outcome_changed:
        return f"CHANGED {row.base.outcome} -> {row.head.outcome}"
    return row.head.outcome


def render(comparison: Comparison, list_regressions: bool = True) -> str:
    """Per model: one row per benchmark, head values with their change against base; then each
    regression on its own line (unless the caller lists them itself) and a closing summary."""
    from compresslab.report import format_table

    rules = " ".join(rule.text for rule in comparison.rules) or "none (report only)"
    lines = [f"base: {comparison.base.describe()}", f"head: {comparison.head.describe()}",
             f"rules: {rules}; latency and speedup also need a one-sided Mann-Whitney U p < {comparison.alpha:g} "
             "and a 95% interval of the median ratio beyond 1 on the stored rounds", ""]
    for model in sorted({row.model for row in comparison.rows}):
        rows = [row for row in comparison.rows if row.model == model]
        fields = list(dict.fromkeys(f for row in rows for f in row.deltas))
        header = ("method", "outcome", *(GENERIC_FIELDS.get(f, METRIC_LABELS.get(f, f)) for f in fields), "verdict")
        body = [(row.method, _outcome(row), *(_cell(row.deltas.get(f)) for f in fields),
                 "REGRESSION" if row.regressions else "") for row in rows]
        lines += [model, *("  " + line for line in format_table(header, body)), ""]
    lines.append("values are head's, changes are head vs base; ! marks the value that broke a rule")
    regressions = comparison.regressions
    for row, message in regressions if list_regressions else ():
        lines.append(f"REGRESSION {row.model} {row.method}: {message}")
    counts = {status: sum(row.status == status for row in comparison.rows) for status in ("both", "new", "missing")}
    summary = f"{counts['both']} compared, {counts['new']} new, {counts['missing']} missing"
    if regressions:
        fields: dict[str, list[str]] = {}
        for row, message in regressions:
            fields.setdefault(f"{row.model}-{row.method}", []).append(message.split()[0])
        names = ", ".join(f"{name} ({', '.join(found)})" for name, found in fields.items())
        lines.append(f"{len(regressions)} regression{'s' * (len(regressions) != 1)} ({summary}): {names}")
    else:
        lines.append(f"no regressions ({summary})")
    return "\n".join(lines)
