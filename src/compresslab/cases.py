"""One case = one model x method chain: build (cached), load, evaluate, and measure size,
memory and fidelity. Independent of pytest, so the CLI and the plugin share it. Timing is
not here: the plugin hands the runner's timed call to pytest-benchmark."""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compresslab.cache import ArtifactCache, cache_key
from compresslab.code_digest import module_digest, object_digest
from compresslab.device import device_type
from compresslab.floors import recovery
from compresslab.models.runner import TorchRunner, count_params, load_runner
from compresslab.models.spec import ModelSpec
from compresslab.models.speculative import SpeculativeCheck, SpeculativeRunner, check_exact, load_case_runner
from compresslab.pipeline import BuiltArtifact, Pipeline, library_versions, progress
from compresslab.results import CaseResult, stage_entry
from compresslab.tasks.base import Task
from compresslab.trackers import fidelity, memory_probe, roofline, size, sparsity
from compresslab.trackers.memory import MemoryStats
from compresslab.trackers.workloads import SPECULATIVE_PROMPTS, SPECULATIVE_TOKENS

log = logging.getLogger(__name__)


@dataclass
class Measurement:
    model_id: str
    chain_id: str
    artifact: BuiltArtifact
    runner: TorchRunner | None
    metrics: dict[str, float]
    reference_logits: torch.Tensor | None = field(repr=False, default=None)
    result: CaseResult = field(default_factory=CaseResult)  # what is measured without timing

    def release(self) -> None:
        """Drop the loaded model (and with it the memory) once the case is done."""
        self.runner = None
        gc.collect()


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    reference_logits: torch.Tensor | None
    details: dict[str, Any]
    measured_at: str
    cached: bool


def evaluate_tasks(runner: TorchRunner, tasks: list[Task]) -> tuple[dict[str, float], torch.Tensor | None, dict]:
    metrics, reference, details = {}, None, {}
    for task in tasks:
        started = time.perf_counter()
        result = task.evaluate(runner)
        metrics.update(result.metrics)
        details[task.id] = {**result.details, "eval_s": round(time.perf_counter() - started, 2)}
        if reference is None:
            reference = result.reference_logits
    return metrics, reference, details


# The code every evaluation runs through (loading, eager and graph runners); the tasks add theirs.
RUNNER_MODULES = ("compresslab.models.runner", "compresslab.models.graph_runner", "compresslab.models.backends")
# Bump when the stored layout of an evaluation (the files cached_evaluation writes and reads) changes:
# this module is not in the digests, since hashing it would tie every evaluation to the gating code.
EVAL_SCHEMA = 1
EVAL_RESULTS, EVAL_LOGITS = "evaluation.json", "reference_logits.pt"


def evaluation_key(artifact_key: str, tasks: list[Task], device: str, threads: int) -> str:
    """Everything that determines an evaluation's numbers: the artifact's bytes (its key), the
    task data and settings, the code that loads, runs and scores (so a fixed evaluator never
    serves stale metrics), the device type (as in the artifact's key), the thread count (reduction
    order), the libraries."""
    return cache_key({
        "evaluation": artifact_key,
        "tasks": [task.fingerprint() for task in tasks],
        "code": {"tasks": [object_digest(task) for task in tasks], "runner": module_digest(*RUNNER_MODULES)},
        "device": device_type(device),
        "threads": threads,
        "libraries": library_versions(("torch", "transformers", "torchao", "tokenizers")),
        "schema": EVAL_SCHEMA,
    })


def cached_evaluation(cache: ArtifactCache, artifact_key: str, runner: TorchRunner, tasks: list[Task],
                      device: str, threads: int, reeval: bool, label: str = "") -> Evaluation:
    """Evaluate once per (artifact, data, libraries, device, threads); later runs read the result.

    Inference on fixed bytes, data and library versions is deterministic, so a later run reuses
    the numbers and says so (``cached``); ``reeval`` re-measures."""
    fresh: dict[str, Any] = {}

    def evaluate(out: Path) -> None:
        progress.info("evaluating %s on %s ...", label or artifact_key, ", ".join(task.id for task in tasks))
        started = time.perf_counter()
        metrics, reference, details = evaluate_tasks(runner, tasks)
        progress.info("evaluated in %.1fs", time.perf_counter() - started)
        measured_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        fresh.update(metrics=metrics, reference=reference, details=details, measured_at=measured_at)
        (out / EVAL_RESULTS).write_text(json.dumps({"metrics": metrics, "details": details,
                                                    "measured_at": measured_at}, indent=2))
        if reference is not None:
            torch.save(reference.contiguous(), out / EVAL_LOGITS)

    key = evaluation_key(artifact_key, tasks, device, threads)
    entry, _ = cache.get_or_build(key, evaluate, inputs={"evaluation_of": artifact_key}, rebuild=reeval)
    if fresh:
        return Evaluation(fresh["metrics"], fresh["reference"], fresh["details"], fresh["measured_at"], False)
    saved = json.loads((entry.payload / EVAL_RESULTS).read_text())
    logits_path = entry.payload / EVAL_LOGITS
    reference = torch.load(logits_path) if logits_path.exists() else None
    return Evaluation(saved["metrics"], reference, saved["details"], saved["measured_at"], True)


def training_seconds(artifact: BuiltArtifact) -> float:
    """Seconds spent training in the compression stages (distillation, recovery fine-tunes):
    every ``train_s`` in their build records, however nested (one per pruning round)."""
    def total(record) -> float:
        if isinstance(record, dict):
            return sum(value if key == "train_s" else total(value) for key, value in record.items())
        if isinstance(record, list):
            return sum(total(item) for item in record)
        return 0.0

    return sum(total(stage.records) for stage in artifact.stages[1:])


class CaseRunner:
    """Builds and measures cases; keeps each model's baseline of this run for the ratios."""

    def __init__(self, pipeline: Pipeline, tasks: dict[str, Task], device: str, threads: int,
                 memory: str = "subprocess", reeval: bool = False):
        self.pipeline, self.tasks, self.device, self.threads, self.memory = pipeline, tasks, device, threads, memory
        self.reeval = reeval
        self._baselines: dict[str, Measurement] = {}
        self._params: dict[str, int] = {}
        self._work: dict[str, roofline.WorkCount] = {}  # by the key of the torch stage it was counted on

    def model_tasks(self, spec: ModelSpec) -> list[Task]:
        return [self.tasks[name] for name in spec.tasks]

    def check_available(self, spec: ModelSpec) -> None:
        spec.source.check_available()
        for task in self.model_tasks(spec):
            task.check_available()

    def timed_inputs(self, spec: ModelSpec, runner: TorchRunner) -> dict[str, torch.Tensor]:
        """The fixed-shape input every case of a model is timed (and memory-probed) on: batch 1."""
        return self.tasks[spec.tasks[0]].latency_inputs(runner.tokenizer, spec.latency_seq_len, batch_size=1)

    def run(self, spec: ModelSpec, chain_id: str) -> Measurement:
        artifact = self.pipeline.build(spec, chain_id, self.device)
        runner = load_case_runner(artifact.path, artifact.base.payload, spec.kind, self.device)
        evaluation = cached_evaluation(self.pipeline.cache, artifact.entry.key, runner, self.model_tasks(spec),
                                       self.device, self.threads, self.reeval, label=f"{spec.id}-{chain_id}")
        measurement = Measurement(spec.id, chain_id, artifact, runner, evaluation.metrics,
                                  evaluation.reference_logits)
        self._record_untimed(measurement.result, spec, artifact, runner)
        measurement.result.metrics = dict(evaluation.metrics)
        measurement.result.task_details = evaluation.details
        measurement.result.metrics_cached, measurement.result.metrics_measured_at = evaluation.cached, \
            evaluation.measured_at
        return measurement

    def _record_untimed(self, result: CaseResult, spec: ModelSpec, artifact: BuiltArtifact,
                        runner: TorchRunner) -> None:
        """Size, build, sparsity and memory: everything of the case but its quality and timings."""
        result.add_size(size.measure_dir(artifact.path), self.baseline_params(spec, artifact))
        result.stages = [stage_entry(stage) for stage in artifact.stages]
        result.build_s, result.baseline_build_s = artifact.build_s, artifact.stages[0].build_s
        result.train_s = training_seconds(artifact)
        result.artifact_key = artifact.entry.key
        # threads (and precision) each runtime ran with: the runner's own settings dict, not a copy,
        # so what it records later (the timed shape's static compile, fixture.py) shows up here too
        result.runtime = runner.settings
        result.oov_rate = self.test_oov_rate(spec, artifact, runner)
        if runner.model is not None:  # exported graphs have no torch module to inspect
            result.sparsity = sparsity.block_sparsity(runner.model)
            result.n_params = sparsity.parameter_count(runner.model)
        self._record_work(result, spec, artifact, runner)
        if isinstance(runner, SpeculativeRunner):
            result.add_speculative_check(self.speculative_check(spec, runner))
        if self.memory == "subprocess":
            result.add_memory(MemoryStats(**memory_probe.probe_in_child(
                artifact.path, artifact.base.payload, spec.kind, self.device, self.timed_inputs(spec, runner),
                self.threads, self.pipeline.format_providers(artifact.chain_id))))

    def speculative_check(self, spec: ModelSpec, runner: SpeculativeRunner) -> SpeculativeCheck:
        """Speculative against plain greedy decoding on the decode workload's prompts and token count
        (trackers/workloads.py), untimed: it runs whether or not the case is timed."""
        prompts = self.tasks[spec.tasks[0]].latency_inputs(runner.tokenizer, spec.latency_seq_len, SPECULATIVE_PROMPTS)
        return check_exact(runner, prompts["input_ids"], SPECULATIVE_TOKENS + 1)

    def _record_work(self, result: CaseResult, spec: ModelSpec, artifact: BuiltArtifact, runner) -> None:
        """The counted FLOPs of the timed forward and the dtype they compute in (trackers/roofline.py)."""
        work = roofline.case_work(artifact.path, runner, lambda: self._stage_work(spec, artifact, runner))
        result.forward_flops, result.roofline_dtype, result.roofline_note = work.flops, work.compute_dtype, work.note

    def _stage_work(self, spec: ModelSpec, artifact: BuiltArtifact, runner) -> roofline.WorkCount | None:
        """The work of the timed forward, counted once per torch stage: on the artifact's own model, or
        for an exported graph on the torch checkpoint it was exported from (the stage before the first
        whose payload is a graph): converting or quantizing a graph changes the arithmetic's
        precision, not its count."""
        from compresslab.models.graph_runner import runtime_of

        key, load = artifact.entry.key, lambda: runner
        if runtime_of(artifact.path) is not None:
            entries = [self.pipeline.cache.lookup(stage.key) for stage in artifact.stages]
            sources = [source for source, entry in zip(entries, entries[1:])
                       if source is not None and entry is not None and runtime_of(entry.payload) is not None]
            if not sources or runtime_of(sources[0].payload) is not None:
                return None
            key = sources[0].key
            load = lambda: load_runner(sources[0].payload, artifact.base.payload, spec.kind, self.device)  # noqa: E731
        if key not in self._work:
            source_runner = load()
            self._work[key] = roofline.torch_work(source_runner, self.timed_inputs(spec, source_runner))
        return self._work[key]

    def test_oov_rate(self, spec: ModelSpec, artifact: BuiltArtifact, runner: TorchRunner) -> float | None:
        """Of an artifact whose vocabulary differs from the baseline's (it ships its own tokenizer):
        the out-of-vocabulary rate of its first task's test texts, measured here, never at build
        time (a method sees no test data). None for the rest, or a task that does not list its texts."""
        from compresslab.models.loading import load_tokenizer, ships_tokenizer

        test_texts = getattr(self.tasks[spec.tasks[0]], "test_texts", None)
        if artifact.path == artifact.base.payload or not ships_tokenizer(artifact.path) or test_texts is None:
            return None
        from compresslab.methods.vocab_trim import oov_rate

        return oov_rate(load_tokenizer(artifact.base.payload), runner.tokenizer, test_texts())

    def baseline_params(self, spec: ModelSpec, artifact: BuiltArtifact) -> int:
        if spec.id not in self._params:
            self._params[spec.id] = count_params(artifact.base.payload)
        return self._params[spec.id]

    def baseline(self, spec: ModelSpec, baseline_chain: str) -> Measurement:
        """The fp32 measurement of this run, measured once per model and kept (without its model)."""
        if spec.id not in self._baselines:
            self._baselines[spec.id] = self.run(spec, baseline_chain)
        return self._baselines[spec.id]

    @staticmethod
    def versus_baseline(measurement: Measurement, baseline: Measurement, result: CaseResult) -> None:
        """Into ``result``: the case's quality and size relative to the run's fp32 baseline."""
        result.baseline_metrics = dict(baseline.metrics)
        result.recovery = {m: recovery(m, v, baseline.metrics[m]) for m, v in measurement.metrics.items()
                           if m in baseline.metrics}
        result.size_ratio = measurement.result.size_bytes / baseline.result.size_bytes
        result.baseline_size_bytes = baseline.result.size_bytes
        if measurement.reference_logits is not None and baseline.reference_logits is not None:
            result.add_fidelity(fidelity.compare_logits(baseline.reference_logits, measurement.reference_logits))
