"""The result of a case, typed, and the files it is kept in.

:class:`CaseResult` is every number and fact the suite records about one case, one definition
each, the unit in each field's name (``_bytes``, ``_mib`` = 2**20 bytes, ``_ms``, ``_s``); the
plugin fills it, and compare, report and the plots read it. :class:`CaseRecord` is a case with
its identity and outcome, as the sidecar stores it. pytest-benchmark's ``extra_info`` is the flat
projection of both (:func:`extra_info`): the identity (``model``, ``chain``) and every field of
the result that was measured, under the same names.

The sidecar results JSON holds every case of a run, written even when pytest-benchmark saves
nothing (``--benchmark-disable``, pytest-xdist). Each finished case is also appended to the run's
journal (``<results>/journal/<run id>-<process>.jsonl``) the moment it ends, so a run that is
killed keeps what it measured: the session end turns the records into the sidecar (marked
incomplete when the run was interrupted) and drops the journal; a journal left by a run that
never reached its end is itself a readable run (``runs.load``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import reprlib
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compresslab import __version__


@dataclass
class CaseResult:
    """What one case measured; None: not measured in this run (a skipped case, timing off)."""

    # where it ran
    device: str | None = None
    device_name: str | None = None
    threads: int | None = None
    libraries: dict[str, str] | None = None
    # size of the saved artifact (its model files; tokenizer and build records excluded)
    size_bytes: int | None = None
    size_zstd_bytes: int | None = None
    bits_per_param: float | None = None
    n_params: int | None = None  # of the loaded torch model (exported graphs have none)
    sparsity: float | None = None  # share of exact zeros in the block Linears
    size_ratio: float | None = None  # size_bytes over the run's fp32 baseline's
    baseline_size_bytes: int | None = None
    # peak memory of a fresh process that loads the artifact and runs one timed-shape inference
    peak_rss_mib: float | None = None
    rss_delta_mib: float | None = None  # peak over the RSS before loading
    cuda_peak_mib: float | None = None
    # how it was built and run
    artifact_key: str | None = None
    stages: list[dict[str, Any]] | None = None  # one stage_entry per pipeline stage, base first
    build_s: float | None = None
    train_s: float | None = None  # training in the compression stages (distillation, recovery)
    baseline_build_s: float | None = None
    runtime: dict[str, Any] | None = None  # threads (and precision) the runtime ran with
    # an artifact with its own (trimmed) vocabulary: the share of the test texts' tokens it dropped
    # (methods/vocab_trim.py oov_rate)
    oov_rate: float | None = None
    # quality, and against the run's fp32 baseline
    metrics: dict[str, float] | None = None
    baseline_metrics: dict[str, float] | None = None
    recovery: dict[str, float] | None = None  # metric over the baseline's, per metric (floors.recovery)
    top1_agreement: float | None = None  # share of the fp32 model's top-1 answers kept
    kl_div: float | None = None
    task_details: dict[str, Any] | None = None
    metrics_cached: bool | None = None  # read from the evaluation cache
    metrics_measured_at: str | None = None
    # batch-1 latency timed by pytest-benchmark, with the fp32 blocks around it
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_rounds: int | None = None
    latency_samples_ms: list[float] | None = None
    latency_input_shape: list[int] | None = None
    baseline_latency_p50_ms: float | None = None
    speedup_vs_baseline: float | None = None
    baseline_drift: float | None = None  # how far fp32 moved while the case ran
    # second workload of a classifier: batch 16
    latency_b16_p50_ms: float | None = None
    latency_b16_p90_ms: float | None = None
    latency_b16_rounds: int | None = None
    speedup_b16_vs_baseline: float | None = None
    # second workload of a causal LM: per-token decode through the KV cache
    decode_ms_per_token_p50: float | None = None
    decode_ms_per_token_p90: float | None = None
    decode_tokens_per_s: float | None = None
    decode_new_tokens: int | None = None
    decode_prompt_tokens: int | None = None
    decode_rounds: int | None = None
    decode_speedup_vs_baseline: float | None = None
    # speculative decoding (models/speculative.py): the draft's acceptance and exactness, checked untimed
    # on the decode workload's prompts and token count, and, timed, the target's plain greedy decode
    # of the same prompts in the same rounds (decode_* above are then the speculative decoder's)
    spec_num_draft_tokens: int | None = None  # k, the tokens the draft proposes per target forward
    spec_prompts: int | None = None
    spec_acceptance_rate: float | None = None  # draft tokens kept over draft tokens proposed
    spec_tokens_per_target_forward: float | None = None  # new tokens over target forwards (prefill included)
    spec_exact: bool | None = None  # the output equals the target's plain greedy output on every prompt
    spec_mismatch: str | None = None  # the first difference when it does not
    spec_greedy_tokens_per_s: float | None = None  # the target's plain greedy decode, same prompts and rounds
    spec_speedup_vs_greedy: float | None = None  # decode_tokens_per_s over spec_greedy_tokens_per_s
    # roofline (trackers/roofline.py): the work of the timed forward, and the share of this session's
    # measured peaks each workload reaches
    forward_flops: int | None = None  # counted FLOPs of the batch-1 timed forward
    roofline_dtype: str | None = None  # what its matmuls compute in: fp32, bf16, int8
    roofline_peak_gflops: float | None = None  # the probe's GEMM peak for roofline_dtype
    roofline_bandwidth_gbs: float | None = None  # the probe's memory read bandwidth (1e9 bytes/s)
    roofline_compute: float | None = None  # forward_flops / latency_p50 over roofline_peak_gflops
    roofline_memory: float | None = None  # size_bytes x decode_tokens_per_s over roofline_bandwidth_gbs
    roofline_note: str | None = None  # why FLOPs or a dtype could not be counted
    # the floors it was judged against and what it broke
    floors: dict[str, Any] | None = None
    floor_violations: list[str] | None = None
    # a floor's twin (floors.twin_comparison): the twin row's metrics of this run and the difference
    # to them ({"chain", "metrics", "difference"}), or why it was not compared ({"chain", "skipped"})
    twin_comparison: dict[str, Any] | None = None

    def measured(self) -> dict[str, Any]:
        """The fields this run measured, by name (the flat extra_info form)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    # --- filled from the trackers' typed stats ---------------------------------------------------

    def add_size(self, stats, n_params: int) -> None:
        """``stats``: trackers.size.SizeStats of the artifact; ``n_params``: the fp32 model's count."""
        self.size_bytes, self.size_zstd_bytes = stats.size_bytes, stats.size_zstd_bytes
        self.bits_per_param = stats.bits_per_param(n_params)

    def add_memory(self, stats) -> None:
        """``stats``: trackers.memory.MemoryStats of the probe process."""
        self.peak_rss_mib = stats.peak_rss_bytes / 2**20
        self.rss_delta_mib = (stats.peak_rss_bytes - stats.rss_before_bytes) / 2**20
        self.cuda_peak_mib = None if stats.cuda_peak_bytes is None else stats.cuda_peak_bytes / 2**20

    def add_fidelity(self, fidelity) -> None:
        """``fidelity``: trackers.fidelity.Fidelity against the fp32 baseline's logits."""
        self.top1_agreement, self.kl_div = fidelity.top1_agreement, fidelity.kl_div

    def add_latency(self, stats) -> None:
        """``stats``: trackers.latency.LatencyStats of the batch-1 rounds pytest-benchmark timed."""
        self.latency_p50_ms, self.latency_p90_ms, self.latency_p99_ms = (
            1e3 * stats.percentile(q) for q in (50, 90, 99))
        self.latency_rounds = len(stats.samples_s)
        # the raw rounds, so `compresslab compare` can test a latency change statistically
        self.latency_samples_ms = [round(1e3 * s, 6) for s in stats.samples_s]

    def add_batch16(self, stats, speedup: float) -> None:
        self.latency_b16_p50_ms, self.latency_b16_p90_ms = 1e3 * stats.percentile(50), 1e3 * stats.percentile(90)
        self.latency_b16_rounds, self.speedup_b16_vs_baseline = len(stats.samples_s), speedup

    def add_decode(self, stats, speedup: float) -> None:
        """``stats``: trackers.decode.DecodeStats."""
        self.decode_ms_per_token_p50 = 1e3 * stats.step_percentile(50)
        self.decode_ms_per_token_p90 = 1e3 * stats.step_percentile(90)
        self.decode_tokens_per_s = stats.tokens_per_s
        self.decode_new_tokens, self.decode_prompt_tokens = stats.new_tokens, stats.prompt_tokens
        self.decode_rounds, self.decode_speedup_vs_baseline = len(stats.round_s), speedup


    def add_speculative_check(self, check) -> None:
        """``check``: models.speculative.SpeculativeCheck (untimed)."""
        self.spec_num_draft_tokens, self.spec_prompts = check.num_draft_tokens, check.prompts
        self.spec_acceptance_rate = check.acceptance_rate
        self.spec_tokens_per_target_forward = check.tokens_per_target_forward
        self.spec_exact, self.spec_mismatch = check.exact, check.mismatch

    def add_speculative_decode(self, stats, speedup: float) -> None:
        """``stats``: trackers.decode.SpeculativeStats; a timed round whose outputs differed breaks exactness too."""
        self.decode_ms_per_token_p50 = 1e3 * stats.median_token_s
        self.decode_ms_per_token_p90 = 1e3 * stats.token_percentile(90)
        self.decode_tokens_per_s = stats.tokens_per_s
        self.decode_new_tokens, self.decode_prompt_tokens = stats.new_tokens, stats.prompt_tokens
        self.decode_rounds, self.decode_speedup_vs_baseline = len(stats.round_s), speedup
        self.spec_greedy_tokens_per_s = stats.greedy_tokens_per_s
        self.spec_speedup_vs_greedy = stats.tokens_per_s / stats.greedy_tokens_per_s
        if stats.mismatch is not None:
            self.spec_exact, self.spec_mismatch = False, self.spec_mismatch or stats.mismatch


def stage_entry(stage) -> dict[str, Any]:
    """One pipeline stage (pipeline.StageResult) as CaseResult.stages holds it."""
    return {"name": stage.name, "key": stage.key, "built_now": stage.built_now, "build_s": stage.build_s,
            **({"records": stage.records} if stage.records and stage.name != "base" else {})}


def stage_build_seconds(stages: list[Any]) -> tuple[float, float] | None:
    """(the method's stages, the base stage) build seconds of CaseResult.stages, or None when a stage
    has no number (an old or hand-edited file)."""
    entries = [stage for stage in stages if isinstance(stage, dict)]
    seconds = [stage.get("build_s") for stage in entries]
    if not entries or not all(isinstance(s, (int, float)) for s in seconds):
        return None
    base = sum(s for stage, s in zip(entries, seconds) if stage.get("name") == "base")
    return float(sum(seconds) - base), float(base)


# Names earlier versions wrote, read as today's: memory was MiB under an "_mb" name, the chain
# was called "method"; "size_mb" (MB, a copy of size_bytes) is no longer written.
LEGACY_NAMES = {"peak_rss_mb": "peak_rss_mib", "rss_delta_mb": "rss_delta_mib", "cuda_peak_mb": "cuda_peak_mib",
                "method": "chain"}
DROPPED = {"size_mb"}


class Malformed(ValueError):
    """A field of one benchmark that is not the shape its type says; runs.py adds the file and benchmark."""


@dataclass
class CaseRecord:
    """One case of a run: its identity, how it ended, and its result."""

    name: str  # the pytest test name, e.g. test_compression[minilm-sentiment-int8-dynamic]
    model: str
    chain: str  # the method, or a chain of methods joined by "+"
    outcome: str  # passed, failed, xfailed, xpassed, skipped, error
    result: CaseResult = field(default_factory=CaseResult)
    fullname: str | None = None
    reason: str | None = None
    expected_failure: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.result.metrics or {})

    @property
    def samples_ms(self) -> tuple[float, ...] | None:
        """The batch-1 latency rounds, when the run kept them."""
        samples = self.result.latency_samples_ms
        return tuple(float(s) for s in samples) if samples else None

    def to_json(self) -> dict[str, Any]:
        """The sidecar's (and the journal's) form of the record."""
        entry = {"name": self.name, "fullname": self.fullname, "model": self.model, "chain": self.chain,
                 "outcome": self.outcome, "reason": self.reason}
        if self.expected_failure is not None:
            entry["expected_failure"] = self.expected_failure
        entry["extra_info"] = extra_info(self.model, self.chain, self.result)
        return entry

    @classmethod
    def from_sidecar(cls, bench: dict[str, Any]) -> CaseRecord:
        result = read_result(object_field(bench, "extra_info"))
        return cls(string_field(bench, "name"), string_field(bench, "model"), _chain(bench),
                   string_field(bench, "outcome", False) or "?", result, string_field(bench, "fullname", False),
                   string_field(bench, "reason", False), string_field(bench, "expected_failure", False))

    @classmethod
    def from_benchmark(cls, bench: dict[str, Any]) -> CaseRecord:
        """A benchmark of pytest-benchmark's JSON whose extra_info is compresslab's projection."""
        extra = object_field(bench, "extra_info")
        result = read_result(extra)
        stats = object_field(bench, "stats")
        median = _number(stats.get("median"), "stats.median")
        data = _numbers(stats.get("data"), "stats.data")  # --benchmark-save-data: seconds per round
        if result.latency_p50_ms is None and median is not None:
            result.latency_p50_ms = 1e3 * median
        if result.latency_samples_ms is None and data:
            result.latency_samples_ms = [1e3 * float(s) for s in data]
        violations = result.floor_violations or []
        outcome = string_field(extra, "outcome", False) or ("failed" if violations else "passed")
        return cls(string_field(bench, "name"), string_field(extra, "model"), _chain(extra), outcome, result,
                   string_field(bench, "fullname", False), "; ".join(violations) or None)


def extra_info(model: str, chain: str, result: CaseResult, outcome: str | None = None) -> dict[str, Any]:
    """The flat projection pytest-benchmark stores: identity, then every measured field."""
    return {"model": model, "chain": chain, **({"outcome": outcome} if outcome else {}), **result.measured()}


def is_case(extra: dict[str, Any]) -> bool:
    """Whether a pytest-benchmark benchmark's extra_info is a compresslab case (it names its model)."""
    return "model" in extra


def read_result(extra: dict[str, Any]) -> CaseResult:
    """A CaseResult from its flat projection, each field checked against its type (NaN and inf are
    numbers; null is absent). Unknown names are not ours (a project's own extra_info) and are left."""
    values = {}
    for key, value in extra.items():
        name = LEGACY_NAMES.get(key, key)
        if name in _RESULT_TYPES and value is not None:
            values[name] = _checked(value, _RESULT_TYPES[name], key)  # the message names the file's key
    return CaseResult(**values)


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(CaseResult, globalns=vars(sys.modules[__name__]))
    return {name: typing.get_args(hint)[0] for name, hint in hints.items()}  # X | None -> X


_RESULT_TYPES = _field_types()


def _checked(value: Any, kind: Any, name: str) -> Any:
    origin = typing.get_origin(kind)
    if kind in (float, int):
        return _number(value, name)
    if kind is bool:
        if not isinstance(value, bool):
            raise Malformed(f"{name} is {show_value(value)}, not true or false")
        return value
    if kind is str:
        return string_field({name: value}, name)
    if origin is list:
        item = typing.get_args(kind)[0]
        if not isinstance(value, list):
            raise Malformed(f"{name} is {show_value(value)}, not a list{' of str' if item is str else ''}")
        if item in (float, int):
            return _numbers(value, name)
        if item is str and not all(isinstance(v, str) for v in value):
            raise Malformed(f"{name} is {show_value(value)}, not a list of str")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise Malformed(f"{name} is {show_value(value)}, not an object")
        if typing.get_args(kind)[1] is float:  # a number map: a null entry is absent
            return {key: v for key, v in value.items() if _number(v, f"{name}.{key}") is not None}
        return value
    return value


def _chain(container: dict[str, Any]) -> str:
    return string_field(container, "chain") if "chain" in container else string_field(container, "method")


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60


def show_value(value: Any) -> str:
    """A value as a message shows it: on one line, cut short (here and in runs.py's messages)."""
    return _SHORT.repr(value)


def object_field(container: dict[str, Any], key: str) -> dict[str, Any]:
    """An object field; {} when absent or null."""
    value = container.get(key)
    if value is not None and not isinstance(value, dict):
        raise Malformed(f"{key} is {show_value(value)}, not an object")
    return value or {}


def string_field(container: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = container.get(key)
    if value is None and not required:
        return None
    if key not in container:
        raise Malformed(f"no {key!r}")
    if not isinstance(value, str):
        raise Malformed(f"{key} is {show_value(value)}, not a string")
    return value


def _number(value: Any, what: str) -> Any:
    """``value`` when it is a number, NaN and inf included (compare has rules for them), or null."""
    if value is None or isinstance(value, float):
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise Malformed(f"{what} is {show_value(value)}, not a number")
    if abs(value) > sys.float_info.max:  # compare's float arithmetic would overflow
        raise Malformed(f"{what} is {show_value(value)}, too large a number")
    return value


def _numbers(values: Any, what: str) -> list[Any] | None:
    """A list of numbers (latency rounds), or absent or null."""
    if values is None:
        return None
    if not isinstance(values, list):
        raise Malformed(f"{what} is {show_value(values)}, not a list of numbers")
    for index, value in enumerate(values):
        if value is None:
            raise Malformed(f"{what}[{index}] is None, not a number")
        _number(value, f"{what}[{index}]")
    return values


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


def sidecar_document(records: list[CaseRecord], results_dir: Path, incomplete: str | None = None,
                     roofline: dict[str, Any] | None = None) -> dict[str, Any]:
    """``incomplete``: why the run ended before its last case (interrupted, SIGTERM, killed), or None;
    ``roofline``: the session's probe of this machine's peaks (trackers/roofline.py), when it ran."""
    document = {
        "schema": SIDECAR_SCHEMA,
        "compresslab_version": __version__,
        "created": time.strftime("%Y%m%dT%H%M%S"),
        "commit_info": git_info(results_dir.parent),
        "machine_info": {"node": platform.node(), "machine": platform.machine(), "python": platform.python_version()},
        "benchmarks": [record.to_json() for record in sorted(records, key=lambda r: r.fullname or r.name)],
    }
    if roofline:
        document["machine_info"]["roofline"] = roofline
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


def append_to_journal(path: Path, record: CaseRecord) -> None:
    """One line per finished case, on disk before the next case starts (a SIGKILL loses at most the
    case that was running)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record.to_json(), default=str, allow_nan=True)
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
