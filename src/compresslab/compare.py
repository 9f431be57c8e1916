"""Compare two runs benchmark by benchmark and decide regressions by rules such as ``size:+1%``.

A rule ``FIELD:<sign><N><unit>`` names a field (size, latency, speedup, memory or a task metric),
the direction that is bad (``+``: an increase, ``-``: a decrease) and how much of it is tolerated:
``%`` relative to the base value, ``pt`` absolute points of a 0..1 metric (0.5pt = 0.005). A task
metric's rule names the change that makes it worse (``accuracy:-``, ``perplexity:+``): its direction
and whether it is a 0..1 fraction come from the metric table (compresslab.tasks.metrics).

Latency is noisy, so a latency (or speedup) rule fails only when the medians moved past the
threshold *and* the stored rounds say the shift is not noise: a one-sided Mann-Whitney U test
(p < alpha) and a bootstrap 95% interval of the median ratio that excludes 1. Without stored
rounds the threshold alone decides, and the row says so. With too few rounds for the rank test
ever to reach p < alpha (3 against 3: p >= 0.05 always) the threshold and the interval decide, and
the row and the summary say so. Given earlier runs (``history``), a timing rule's threshold is at
least the largest change of that case between two of them: identical code on a shared VM moves by
20% from one process to the next, which rounds of one process cannot show.

A case that passed in base and did not pass in head (failed, error, xfailed; skipped or missing
unless ``allow_missing``) is a regression, and so is a rule's value that became NaN, inf or missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from compresslab.report import BASELINE_ROW
from compresslab.results import CaseRecord
from compresslab.runs import Run, RunError
from compresslab.tasks.metrics import METRICS, label, lookup

ALPHA = 0.05
# fields every record may have (beside its task metrics), with their column titles and where the
# record holds them (the *_speedup fields are the second workload's ratios to the same run's fp32)
GENERIC_FIELDS = {"size": "size MB", "latency": "p50 ms", "speedup": "speedup", "memory": "memory MiB",
                  "b16": "b16 ms", "decode": "decode tok/s", "b16_speedup": "b16 x", "decode_speedup": "decode x"}
FIELD_VALUES = {
    "size": lambda r: r.size_bytes,
    "latency": lambda r: r.latency_p50_ms,
    "speedup": lambda r: r.speedup_vs_baseline,
    "memory": lambda r: r.cuda_peak_mib or r.peak_rss_mib,  # what the device the case ran on holds
    "b16": lambda r: r.latency_b16_p50_ms,
    "decode": lambda r: r.decode_tokens_per_s,
    "b16_speedup": lambda r: r.speedup_b16_vs_baseline,
    "decode_speedup": lambda r: r.decode_speedup_vs_baseline,
}
# shown only when a rule names them; the *_speedup fields are the second workload's same-run ratios
OPTIONAL_FIELDS = ("memory", "b16", "decode", "b16_speedup", "decode_speedup")
SAMPLED = {"latency", "speedup"}
# absolute timings: the fields that move from one process to the next on shared machines
TIMING_FIELDS = ("latency", "b16", "decode")
MIN_HISTORY = 3  # values of a case (base included) before its run-to-run spread is trusted
# outcomes of a case that ran to its end and passed ("xpassed": marked xfail, passed anyway)
PASSING = {"passed", "xpassed"}
# not run at all: --allow-missing accepts these; failed, error and xfailed stay regressions
NOT_RUN = {"skipped", "missing"}
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

    def exceeded(self, base: float, head: float, amount: float | None = None) -> bool:
        """``amount``: a threshold other than the rule's own (one learned from history)."""
        limit = self.amount if amount is None else amount
        return self.direction * self.change(base, head) > limit + 1e-12


def field_value(record: CaseRecord, name: str) -> float | None:
    """The number a rule field names (a generic field or a task metric), or None when the record has none."""
    if name in FIELD_VALUES:
        return FIELD_VALUES[name](record.result)
    return record.metrics.get(name)


def valid_fields(*runs: Run) -> list[str]:
    metrics = {name for run in runs for r in run.records.values() for name in r.metrics}
    return [*GENERIC_FIELDS, *sorted(metrics | set(METRICS))]


def parse_rules(texts: Iterable[str], fields: Iterable[str]) -> list[Rule]:
    """Rules from ``--fail`` arguments; each may hold several, separated by commas or spaces."""
    fields = list(fields)
    rules: list[Rule] = []
    for text in (t for chunk in texts for t in re.split(r"[,\s]+", chunk) if t):
        match = RULE.match(text)
        if not match:
            raise RuleError(f"malformed rule {text!r}: write FIELD:+N% or FIELD:-Npt, e.g. size:+1% accuracy:-0.5pt")
        name, unit = match["field"], match["unit"]
        if name not in fields:
            raise RuleError(f"unknown field {name!r} in rule {text!r}; valid fields: {', '.join(fields)}")
        if unit == "pt" and name in GENERIC_FIELDS:
            raise RuleError(f"rule {text!r}: points (pt) are for 0..1 task metrics; use % for {name}")
        _check_not_repeated(name, text, rules)
        sign = 1 if match["sign"] == "+" else -1
        if name not in GENERIC_FIELDS:
            _check_metric_rule(name, sign, unit, text)
        rules.append(Rule(name, sign, float(match["amount"]) / 100, unit, text))
    return rules


def _check_metric_rule(name: str, sign: int, unit: str, text: str) -> None:
    """A task metric's rule in a unit its values have, on the side that is worse for it: a rule on
    the improving side flags improvements and never fires on the regression it was written for."""
    try:
        metric = lookup(name)
    except KeyError as err:  # a metric of a saved run that the table does not know: no direction
        raise RuleError(f"rule {text!r}: {err.args[0]}") from None
    if unit == "pt" and not metric.fraction:
        raise RuleError(f"rule {text!r}: points (pt) are for 0..1 task metrics; use % for {name}")
    if sign == metric.direction:
        worse = "+" if metric.direction < 0 else "-"
        raise RuleError(f"rule {text!r} fails on an improvement: {'higher' if metric.higher_is_better else 'lower'} "
                        f"{name} is better; write {name}:{worse}{text.partition(':')[2][1:]}")


def _check_not_repeated(name: str, text: str, rules: list[Rule]) -> None:
    """One rule per field: a second one used to replace the first without a word."""
    earlier = next((rule.text for rule in rules if rule.field == name), None)
    if earlier is not None:
        raise RuleError(f"rule {text!r} repeats field {name!r} (already {earlier!r}): give one rule per field")


def smallest_p_value(n: int, m: int) -> float:
    """The smallest one-sided p a rank test can reach with n and m rounds: under no shift each of
    the C(n+m, n) orderings is equally likely, and complete separation is one of them."""
    return 1 / math.comb(n + m, n)


def rounds_needed(n: int, alpha: float) -> int:
    """The fewest rounds that, against n stored rounds, let the rank test reach p < alpha."""
    m = 1
    while smallest_p_value(n, m) >= alpha and m < 10_000:  # alpha near 0 has no answer
        m += 1
    return m


def powerless_rounds(rules: Iterable[Rule], base: Run, rounds: int, alpha: float = ALPHA) -> str | None:
    """Why the latency/speedup rules could never pass the rank test with ``rounds`` timed rounds
    against the base's stored ones, or None when they can."""
    sampled = [rule.text for rule in rules if rule.field in SAMPLED]
    stored = [len(r.samples_ms) for r in base.records.values() if r.samples_ms]
    if not sampled or not stored or smallest_p_value(min(stored), rounds) < alpha:
        return None
    n = min(stored)
    return (f"{' '.join(sampled)}: {n} stored vs {rounds} timed rounds, the rank test can never reach "
            f"p < {alpha:g} (smallest p {smallest_p_value(n, rounds):.2g}); use --compresslab-rounds "
            f"{rounds_needed(n, alpha)} or more")


@dataclass(frozen=True)
class ShiftTest:
    """Is ``head`` slower than ``base``? ratio of medians, one-sided Mann-Whitney U, bootstrap CI."""

    ratio: float
    p_value: float
    ci: tuple[float, float]
    worse: str = "greater"
    rounds: tuple[int, int] | None = None  # base, head

    def can_reject(self, alpha: float) -> bool:
        return self.rounds is None or smallest_p_value(*self.rounds) < alpha

    def significant(self, alpha: float) -> bool:
        """Both agree: the rank test, and the interval lies wholly on the bad side of 1. Heavy
        contention makes a few rounds explode; the rank test alone can then call noise a shift.
        With too few rounds for the rank test to ever reject, the interval alone decides: it lies
        beyond 1 only when the rounds barely overlap, so a 30x slowdown still shows."""
        beyond = self.ci[0] > 1 if self.worse == "greater" else self.ci[1] < 1
        return beyond and (self.p_value < alpha or not self.can_reject(alpha))

    def powerless_note(self, alpha: float) -> str:
        if self.can_reject(alpha):
            return ""
        n, m = self.rounds
        return (f"{n} vs {m} rounds: the rank test cannot reject at alpha {alpha:g} "
                f"(smallest p {smallest_p_value(n, m):.2g}); decided by threshold and interval only")

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
    return ShiftTest(float(np.median(head_a) / np.median(base_a)), p_value, (float(low), float(high)), worse,
                     (base_a.size, head_a.size))


def _samples(record: CaseRecord, name: str) -> tuple[float, ...] | None:
    """Rounds for a sampled field: latency as stored; speedup as latency over the run's own fp32 p50,
    so a slower machine (every case slower alike) does not move it."""
    samples = record.samples_ms
    if not samples or name not in SAMPLED:
        return None
    if name == "latency":
        return samples
    reference = record.result.baseline_latency_p50_ms
    return tuple(s / reference for s in samples) if reference else None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _state(value: float | None) -> str:
    return "missing" if value is None else str(value)  # "nan", "inf", "-inf"


@dataclass(frozen=True)
class Delta:
    field: str
    base: float | None
    head: float | None
    rule: Rule | None = None
    test: ShiftTest | None = None
    regression: bool = False
    note: str = ""
    limit: float | None = None  # the threshold history widened the rule's to, if it did
    powerless: bool = False  # too few rounds for the rank test: threshold and interval decided

    @property
    def usable(self) -> bool:
        return _finite(self.base) and _finite(self.head)

    @property
    def points(self) -> bool:
        """Shown as absolute points: a 0..1 task metric (one the table does not know: relative)."""
        known = METRICS.get(self.field)
        return known is not None and known.fraction

    def change_text(self) -> str:
        if not self.usable:
            return ""
        if self.points:
            return f"{100 * (self.head - self.base):+.2f}pt"
        return f"{(self.head - self.base) / self.base:+.1%}" if self.base else ""

    def message(self) -> str:
        """The regression line of this field (only meaningful when ``regression``)."""
        if not self.usable:
            return f"{self.note} (rule {self.rule.text})"
        detail = "; ".join(part for part in (self.test.describe() if self.test else "", self.note) if part)
        return (f"{self.field} {_value(self.field, self.base)} -> {_value(self.field, self.head)} "
                f"({self.change_text()}; rule {self.rule.text}{f', {detail}' if detail else ''})")


def field_delta(name: str, base: CaseRecord, head: CaseRecord, rule: Rule | None, alpha: float,
                spread: Spread | None = None) -> Delta:
    before, after = field_value(base, name), field_value(head, name)
    if not (_finite(before) and _finite(after)):
        return _unusable_delta(name, before, after, rule, head.outcome in PASSING)
    test = _shift_test(name, base, head, rule)
    if rule is None:
        return Delta(name, before, after, None, test)
    limit, history_note = _learned_limit(rule, spread)
    powerless = test is not None and not test.can_reject(alpha)
    notes = [_test_note(name, test, alpha), history_note]
    regression = rule.exceeded(before, after, limit) and (test is None or test.significant(alpha))
    return Delta(name, before, after, rule, test, regression, "; ".join(n for n in notes if n), limit, powerless)


def _test_note(name: str, test: ShiftTest | None, alpha: float) -> str:
    if test is not None:
        return test.powerless_note(alpha)
    return "no samples; threshold only" if name in SAMPLED else ""


def _unusable_delta(name: str, before: float | None, after: float | None, rule: Rule | None,
                    head_passed: bool) -> Delta:
    """No number to compare on one side. Every comparison with NaN is False, so a rule would never
    fire: a value that base had and a passing head lost (NaN, inf, missing) is a regression itself.
    A head that did not pass is judged by its outcome instead (see lost_case)."""
    broken = rule is not None and head_passed and _finite(before) and not _finite(after)
    note = f"{name} is {_state(after)} in head (base {_value(name, before)})" if broken else ""
    return Delta(name, before, after, rule, regression=broken, note=note)


def _shift_test(name: str, base: CaseRecord, head: CaseRecord, rule: Rule | None) -> ShiftTest | None:
    base_samples, head_samples = _samples(base, name), _samples(head, name)
    if not (base_samples and head_samples):
        return None
    # for latency more is worse; for speedup the samples are normalized latency, so less speedup = more
    slower_is_bad = (rule.direction if rule else 1) * (1 if name == "latency" else -1) > 0
    return shift_test(base_samples, head_samples, "greater" if slower_is_bad else "less")


# --- run-to-run noise from history ---------------------------------------------------------------

@dataclass(frozen=True)
class Spread:
    """How far one case's timing moved between runs: the largest ratio of two of its values, minus 1."""

    amount: float
    runs: int


def _learned_limit(rule: Rule, spread: Spread | None) -> tuple[float | None, str]:
    """The rule's threshold widened to the run-to-run spread history showed, and a note; no history
    (spread None): the rule's own threshold, as before."""
    if spread is None or rule.field not in TIMING_FIELDS:
        return None, ""
    if spread.runs < MIN_HISTORY:
        return None, f"history holds {spread.runs} run(s) of it, {MIN_HISTORY} needed to learn a threshold"
    if spread.amount <= rule.amount:
        return None, ""
    return spread.amount, f"threshold {spread.amount:.1%} learned from {spread.runs} runs"


def run_to_run_spread(runs: Sequence[Run]) -> dict[tuple[str, str], Spread]:
    """Per (case, timing field): the spread of its values over ``runs`` (passing cases only)."""
    values: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        for name, record in run.records.items():
            for timing in TIMING_FIELDS:
                value = field_value(record, timing)
                if record.outcome in PASSING and _finite(value) and value > 0:
                    values.setdefault((name, timing), []).append(value)
    return {key: Spread(max(found) / min(found) - 1, len(found)) for key, found in values.items()}


def distinct_runs(candidates: Iterable[Run], exclude: Sequence[Run]) -> list[Run]:
    """Each session once, and none of ``exclude``: a session's pytest-benchmark JSON, its sidecar and
    latest.json hold the same timings, and a glob of saved runs usually holds head itself, whose own
    shift must not widen its threshold."""
    seen = [_fingerprint(run) for run in exclude]
    kept = []
    for run in candidates:
        mark = _fingerprint(run)
        if mark and not any(mark & other for other in seen):
            seen.append(mark)
            kept.append(run)
    return kept


def _fingerprint(run: Run) -> set[tuple[str, float]]:
    """Medians measured to the microsecond never repeat across sessions; equal ones are one session."""
    latency = {name: field_value(record, "latency") for name, record in run.records.items()}
    return {(name, value) for name, value in latency.items() if _finite(value)}


# --- rows and the comparison ----------------------------------------------------------------------

def lost_case(base: CaseRecord | None, head: CaseRecord | None, allow_missing: bool = False) -> str | None:
    """Why a case that passed in base did not pass in head, or None. Skipped and missing cases can be
    accepted (``allow_missing``: a smaller matrix, a machine without the package); failures cannot."""
    if base is None or base.outcome not in PASSING:
        return None
    outcome = head.outcome if head else "missing"
    if outcome in PASSING or (allow_missing and outcome in NOT_RUN):
        return None
    reason = head.reason if head else "not in head"
    return f"outcome {base.outcome} -> {outcome} ({reason or 'see the test report'})"


@dataclass
class Row:
    name: str
    model: str
    chain: str
    base: CaseRecord | None
    head: CaseRecord | None
    deltas: dict[str, Delta] = field(default_factory=dict)
    lost: str | None = None  # set by compare(): why a passing case is lost in head

    @property
    def status(self) -> str:
        return "new" if self.base is None else "missing" if self.head is None else "both"

    @property
    def outcome_changed(self) -> bool:
        return self.status == "both" and self.base.outcome != self.head.outcome

    @property
    def regressions(self) -> list[str]:
        found = [self.lost] if self.lost else []
        return found + [delta.message() for delta in self.deltas.values() if delta.regression]


@dataclass
class Comparison:
    base: Run
    head: Run
    rules: list[Rule]
    rows: list[Row]
    alpha: float = ALPHA
    history: int = 0  # earlier runs (beside base) the timing thresholds learned from

    @property
    def regressions(self) -> list[tuple[Row, str]]:
        return [(row, message) for row in self.rows for message in row.regressions]


def compare(base: Run, head: Run, rules: list[Rule], alpha: float = ALPHA, allow_missing: bool = False,
            history: Sequence[Run] = ()) -> Comparison:
    """``history``: earlier runs of the same cases (base and head among them are ignored); without
    it the timing rules keep their own thresholds."""
    if not base.models & head.models:
        raise RunError(f"the runs share no model: base has {', '.join(sorted(base.models)) or 'no case'}; "
                       f"head has {', '.join(sorted(head.models))}")
    by_rule = {rule.field: rule for rule in rules}
    earlier = distinct_runs(history, [base, head])
    spreads = run_to_run_spread([base, *earlier]) if history else {}
    rows = []
    every = {**base.records, **head.records}
    for name in sorted(every, key=lambda n: (every[n].model, every[n].chain != BASELINE_ROW, every[n].chain)):
        before, after = base.records.get(name), head.records.get(name)
        either = every[name]
        row = Row(name, either.model, either.chain, before, after, lost=lost_case(before, after, allow_missing))
        if before and after:
            shown = ["latency", "speedup", "size", *(f for f in OPTIONAL_FIELDS if f in by_rule),
                     *dict.fromkeys([*before.metrics, *after.metrics])]
            row.deltas = {f: field_delta(f, before, after, by_rule.get(f), alpha, spreads.get((name, f)))
                          for f in shown}
        rows.append(row)
    return Comparison(base, head, rules, rows, alpha, len(earlier))


def _value(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name == "size":
        return f"{value / 1e6:.1f} MB"
    if name == "latency":
        return f"{value:.2f} ms"
    if name == "memory":
        return f"{value:.0f} MB"
    if name in ("speedup", "b16_speedup", "decode_speedup"):
        return f"{value:.2f}x"
    return f"{value:.4f}" if 0 <= value <= 1 else f"{value:.4g}"


def _cell(delta: Delta | None) -> str:
    if delta is None or (delta.head is None and not delta.regression):
        return "-"
    value = "missing" if delta.head is None else _value(delta.field, delta.head).split()[0]
    text = f"{value} {delta.change_text()}".rstrip()
    if delta.test:
        text += f" p={delta.test.p_value:.2g}"
    if delta.powerless:
        text += " ({} vs {} rounds)".format(*delta.test.rounds)
    elif delta.test is None and delta.rule and delta.field in SAMPLED and delta.usable:
        text += " (threshold only)"
    if delta.limit is not None:
        text += f" (limit {delta.limit:+.0%})"
    return f"{text} !" if delta.regression else text


def _outcome(row: Row) -> str:
    if row.status != "both":
        return f"{row.status}: {(row.head or row.base).outcome}"
    if row.outcome_changed:
        return f"CHANGED {row.base.outcome} -> {row.head.outcome}"
    return row.head.outcome


def _powerless_notes(comparison: Comparison) -> list[str]:
    """One line per round count whose rank test could not reject: a rule that looks statistical but is not."""
    groups: dict[tuple[int, int], list[str]] = {}
    for row in comparison.rows:
        for delta in row.deltas.values():
            if delta.powerless:
                groups.setdefault(delta.test.rounds, []).append(f"{row.model}-{row.chain} {delta.field}")
    return [f"note: {n} vs {m} rounds: the rank test cannot reject at alpha {comparison.alpha:g} (smallest p "
            f"{smallest_p_value(n, m):.2g}); decided by threshold and interval only: {', '.join(names)}"
            for (n, m), names in groups.items()]


def render(comparison: Comparison, list_regressions: bool = True) -> str:
    """Per model: one row per benchmark, head values with their change against base; then each
    regression on its own line (unless the caller lists them itself) and a closing summary."""
    from compresslab.report import format_table

    rules = " ".join(rule.text for rule in comparison.rules) or "none (report only)"
    lines = [f"base: {comparison.base.describe()}", f"head: {comparison.head.describe()}",
             f"rules: {rules}; latency and speedup also need a one-sided Mann-Whitney U p < {comparison.alpha:g} "
             "and a 95% interval of the median ratio beyond 1 on the stored rounds"]
    if comparison.history:
        lines.append(f"history: {comparison.history} earlier run(s); a timing rule's threshold is at least the "
                     "largest change of the case between two runs (base included)")
    lines.append("")
    for model in sorted({row.model for row in comparison.rows}):
        rows = [row for row in comparison.rows if row.model == model]
        fields = list(dict.fromkeys(f for row in rows for f in row.deltas))
        header = ("method", "outcome", *(GENERIC_FIELDS.get(f, label(f)) for f in fields), "verdict")
        body = [(row.chain, _outcome(row), *(_cell(row.deltas.get(f)) for f in fields),
                 "REGRESSION" if row.regressions else "") for row in rows]
        lines += [model, *("  " + line for line in format_table(header, body)), ""]
    lines.append("values are head's, changes are head vs base; ! marks the value that broke a rule")
    regressions = comparison.regressions
    for row, message in regressions if list_regressions else ():
        lines.append(f"REGRESSION {row.model} {row.chain}: {message}")
    lines += _powerless_notes(comparison)
    counts = {status: sum(row.status == status for row in comparison.rows) for status in ("both", "new", "missing")}
    summary = f"{counts['both']} compared, {counts['new']} new, {counts['missing']} missing"
    if regressions:
        fields: dict[str, list[str]] = {}
        for row, message in regressions:
            fields.setdefault(f"{row.model}-{row.chain}", []).append(message.split()[0])
        names = ", ".join(f"{name} ({', '.join(found)})" for name, found in fields.items())
        lines.append(f"{len(regressions)} regression{'s' * (len(regressions) != 1)} ({summary}): {names}")
    else:
        lines.append(f"no regressions ({summary})")
    return "\n".join(lines)
