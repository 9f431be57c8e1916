"""What a benchmark gets from the ``compressed`` fixture: one built, evaluated case that it times
with pytest-benchmark (``case.time(benchmark)``) and judges against its floors
(``case.check_floors()``). Its :class:`results.CaseResult` fills as it goes; the plugin records it
when the test ends, however it ends.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass
class Case:
    """A built, evaluated compression case; the benchmark times it and checks its floors."""

    session: Any  # session.CompresslabSession
    spec: Any
    chain_id: str
    measurement: Any  # cases.Measurement
    baseline: Any  # cases.Measurement of the model's fp32
    result: Any = None  # results.CaseResult

    @classmethod
    def build(cls, session, spec, chain_id: str, baseline_chain: str) -> Case:
        """Build (cached), load and evaluate the case and this run's fp32 of its model; what can be
        measured without timing goes into its result."""
        cases = session.cases
        baseline = cases.baseline(spec, baseline_chain)
        measurement = baseline if chain_id == baseline_chain else cases.run(spec, chain_id)
        result = dataclasses.replace(measurement.result)  # the baseline's own stays as measured
        session.run_info(result)
        cases.versus_baseline(measurement, baseline, result)
        return cls(session, spec, chain_id, measurement, baseline, result)

    @property
    def id(self) -> str:
        return f"{self.spec.id}-{self.chain_id}"

    @property
    def is_baseline(self) -> bool:
        return self.measurement is self.baseline

    def extra_info(self, outcome: str | None = None) -> dict[str, Any]:
        from compresslab.results import extra_info

        return extra_info(self.spec.id, self.chain_id, self.result, outcome)

    def time(self, benchmark) -> None:
        """Time one fixed-shape inference with pytest-benchmark, bracketed by fp32 blocks (A B A).

        The speedup divides the fp32 rounds timed just before and just after this case by the
        case's own: a machine that slows down during a run slows both sides of the ratio, which
        fp32 timed once at the start of a model would not. Blocks, not alternating rounds:
        runtimes taking turns round by round slow each other (an OpenVINO int8 IR measured
        0.90 ms back to back and 2.65 ms alternating with eager PyTorch rounds)."""
        from compresslab.trackers import latency

        runner, settings = self.measurement.runner, self.session.settings
        inputs = self.session.cases.timed_inputs(self.spec, runner)
        sync = latency.synchronizer(settings.device)
        benchmark.extra_info.update(self.extra_info())  # recorded even when the timing below fails

        def infer():
            runner.logits(inputs)
            sync()

        timing = not getattr(benchmark, "disabled", False)
        if timing and static_shapes_pay(runner):
            # the timed shape compiled as it would ship; the runner records it in its settings,
            # the very dict the result's runtime already is (cases.py)
            runner.specialize(inputs)
        before = self.session.baseline_block(self.spec, self.baseline) if timing and not self.is_baseline else None
        benchmark.pedantic(infer, rounds=settings.rounds, warmup_rounds=settings.warmup, iterations=1)
        if benchmark.stats is not None and timing:
            stats = latency.LatencyStats(tuple(benchmark.stats.stats.data))
            self.result.add_latency(stats)
            self.record_speedup(stats, before)
            self.time_second_workload()  # only where timing is on (not under xdist or --benchmark-disable)
        self.result.latency_input_shape = list(inputs["input_ids"].shape)
        benchmark.extra_info.update(self.extra_info())

    def record_speedup(self, stats, before) -> None:
        """fp32 at the case's midpoint (the mean of the medians of the blocks before and after:
        exact under a linear drift) over the case's median; the baseline's speedup is 1 by
        definition, on its own rounds."""
        if before is None:
            self.result.baseline_latency_p50_ms, self.result.speedup_vs_baseline = 1e3 * stats.median_s, 1.0
            return
        after = self.session.baseline_block(self.spec, self.baseline)
        fp32_s = (before.median_s + after.median_s) / 2
        self.result.baseline_latency_p50_ms = 1e3 * fp32_s
        self.result.speedup_vs_baseline = fp32_s / stats.median_s
        # how far fp32 moved while this case ran: large values flag a machine under changing load
        self.result.baseline_drift = after.median_s / before.median_s - 1

    def time_second_workload(self) -> None:
        """Batch 16 (classifier) or per-token decode (causal LM), against this run's fp32 on the same."""
        workload = self.session.second_workload(self.spec, self.measurement.runner)
        base = self.session.baseline_workload(self.spec, self.baseline, workload if self.is_baseline else None)
        workload.record(self.result, base.median_s / workload.median_s)

    def expected_metrics(self) -> dict[str, str]:
        """{metric: task id} of every metric this model's tasks must produce."""
        return self.session.catalog.expected_metrics(self.spec)

    def check_floors(self) -> None:
        """Missing or non-finite metrics and broken floors fail the case (BelowFloors, which a
        known failure's xfail marker expects); a known failure that got worse than its reference
        values fails outright."""
        from compresslab import floors

        floor = self.session.floor_for(self.spec.id, self.chain_id)
        metrics = self.measurement.metrics
        violations = [*floors.check_present(metrics, self.expected_metrics()),
                      *floors.check(floor, metrics, self.baseline.metrics, (self.result.size_bytes or 0) / 1e6,
                                    (self.result.baseline_size_bytes or 0) / 1e6),
                      *floors.check_exact(self.result.spec_exact, self.result.spec_mismatch)]
        twin, missing = self.twin_metrics(floor.twin)
        violations += floors.check_twin(floor, metrics, twin) if twin is not None else []
        self.result.twin_comparison = floors.twin_comparison(floor, metrics, twin, missing)
        worse = floors.check_reference(floor, metrics)
        self.result.floors = floor.as_dict()
        self.result.floor_violations = [v.message for v in [*violations, *worse]]
        if worse or violations:
            raise (pytest.fail.Exception if worse else floors.BelowFloors)(self.floor_message(worse or violations),
                                                                          pytrace=False)

    def twin_metrics(self, chain: str | None) -> tuple[dict[str, float] | None, str]:
        """The metrics of this model's ``chain`` case measured earlier in this run (this process's
        records), or None and why not: a twin that did not run, ran in another xdist worker, or
        produced no metrics is not compared, and the case records the reason."""
        if chain is None:
            return None, ""
        for record in reversed(self.session.records):
            if record.model == self.spec.id and record.chain == chain:
                if record.metrics:
                    return record.metrics, ""
                return None, f"{chain} ran in this run but has no metrics ({record.outcome}): not compared"
        return None, (f"{chain} of {self.spec.id} was not measured before this case in this run (or in this "
                      "xdist worker): not compared")

    def floor_message(self, violations: list) -> str:
        lines = "\n".join(f"  - {v.message}" for v in violations)
        return (f"{self.id} is below its floors ({self.session.floors.source}):\n{lines}\n"
                f"  measured: {_fmt(self.measurement.metrics)}\n  baseline: {_fmt(self.baseline.metrics)}")


def static_shapes_pay(runner) -> bool:
    """Whether the case's timed workload runs on a static-shape compile: graph runtimes where
    that measured faster (models/backends.STATIC_SHAPE_RUNTIMES), never eager PyTorch or a decoder."""
    from compresslab.models.backends import STATIC_SHAPE_RUNTIMES

    return getattr(runner, "can_specialize", False) and runner.settings["runtime"] in STATIC_SHAPE_RUNTIMES


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
