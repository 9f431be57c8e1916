"""Roofline: how far each row is from this machine's limits.

Two halves. The probe (:func:`probe`) measures the hardware once per session, with the threads the
suite pinned: peak GEMM throughput per dtype (``torch.mm`` on square matrices, ``torch._int_mm`` for
int8 where torch has it) and memory bandwidth (a streaming read, ``sum``, of a tensor larger than
the last-level cache). Each figure is the best of a fixed number of calls after a fixed warm-up:
noise only ever slows a call down, so the fastest is the closest to the ceiling. No time budgets.

The counts (:func:`count_forward`) are the work one timed forward does, counted by
``torch.utils.flop_counter.FlopCounterMode`` on the torch model with the timed inputs, tallied by
the dtype of the matmul operands (what the row computes in). Graph runtimes have no torch module:
their FLOPs are counted on the torch checkpoint the graph was exported from (quantizing or
converting a graph changes the arithmetic's precision, not its count), and their dtype is read from
the graph (:func:`graph_compute_dtype`).

The fractions (:func:`compute_fraction`, :func:`memory_fraction`) divide the achieved rate by the
peak; a missing, zero or non-finite input gives None, never inf or a crash.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MIB = 2**20
GEMM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int8: "int8",
               torch.uint8: "int8"}
STREAM = "read"  # the bandwidth figure counts the bytes read by sum(); nothing is written


@dataclass(frozen=True)
class ProbeSizes:
    """How big and how many: fixed counts, so the probe's length is set by the machine, not a clock.
    The defaults take about 1.5 s on two quiet cores; tests pass small ones."""

    # large enough to be compute-bound here: fp32 reaches ~85% of its 2048 rate at 1024, bf16 (AMX) is
    # fastest at 1024, while torch._int_mm stays on a slow path below 2048
    gemm_n: dict[str, int] = field(default_factory=lambda: {"fp32": 1024, "bf16": 1024, "int8": 2048})
    stream_bytes: int = 256 * MIB
    warmup: int = 2
    reps: int = 5


@dataclass(frozen=True)
class Peaks:
    """The probe's figures: GFLOP/s per dtype, GB/s (1e9 bytes) read, and why a dtype has none."""

    gflops: dict[str, float]
    bandwidth_gbs: float | None
    skipped: dict[str, str]
    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"peak_gflops": dict(self.gflops), "bandwidth_gbs": self.bandwidth_gbs,
                "skipped": dict(self.skipped), **self.details}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Peaks:
        rest = {k: v for k, v in document.items() if k not in ("peak_gflops", "bandwidth_gbs", "skipped")}
        return cls(dict(document.get("peak_gflops") or {}), document.get("bandwidth_gbs"),
                   dict(document.get("skipped") or {}), rest)


# --- the probe -------------------------------------------------------------------------------------------


def best_seconds(fn: Callable[[], object], sync: Callable[[], None], warmup: int, reps: int,
                 clock: Callable[[], float] = time.perf_counter) -> float:
    """The fastest of ``reps`` calls after ``warmup`` calls; the device is synchronized before each
    clock read, so queued GPU work is inside the interval."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    for _ in range(warmup):
        fn()
    sync()
    best = math.inf
    for _ in range(reps):
        start = clock()
        fn()
        sync()
        best = min(best, clock() - start)
    return best


def synchronizer(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def gemm_operands(dtype: str, n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    if dtype == "int8":
        return tuple(torch.randint(-64, 64, (n, n), dtype=torch.int8, device=device) for _ in range(2))
    return tuple(torch.randn(n, n, device=device).to(GEMM_DTYPES[dtype]) for _ in range(2))


def int8_gemm_problem(device: str) -> str | None:
    """Why torch._int_mm cannot serve as the int8 GEMM here, or None when it works (checked exactly
    against an int32 product on a small case)."""
    if not hasattr(torch, "_int_mm"):
        return f"torch {torch.__version__} has no torch._int_mm"
    a, b = gemm_operands("int8", 64, device)
    try:
        got = torch._int_mm(a, b)
    except RuntimeError as err:
        return f"torch._int_mm fails on {device}: {str(err).splitlines()[0]}"
    if not torch.equal(got.cpu(), a.cpu().int() @ b.cpu().int()):
        return f"torch._int_mm on {device} differs from the int32 product"
    return None


def gemm_gflops(dtype: str, n: int, device: str, warmup: int, reps: int) -> float:
    a, b = gemm_operands(dtype, n, device)
    mm = torch._int_mm if dtype == "int8" else torch.mm
    seconds = best_seconds(lambda: mm(a, b), synchronizer(device), warmup, reps)
    return 2 * n**3 / seconds / 1e9


def last_level_cache_bytes() -> int | None:
    """The CPU's largest cache (Linux sysfs), or None where it does not say."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes) if sizes else None


def stream_gbs(n_bytes: int, device: str, warmup: int, reps: int) -> float:
    data = torch.ones(n_bytes // 4, dtype=torch.float32, device=device)  # written: every page is backed
    seconds = best_seconds(lambda: data.sum(), synchronizer(device), warmup, reps)
    return data.numel() * 4 / seconds / 1e9


def probe(device: str = "cpu", sizes: ProbeSizes | None = None) -> Peaks:
    """This machine's peaks with torch's current threads (the suite pins them before probing)."""
    sizes = sizes or ProbeSizes()
    gflops, skipped = {}, {}
    for dtype, n in sizes.gemm_n.items():
        problem = int8_gemm_problem(device) if dtype == "int8" else None
        if problem:
            skipped[dtype] = problem
            continue
        gflops[dtype] = gemm_gflops(dtype, n, device, sizes.warmup, sizes.reps)
    bandwidth = stream_gbs(sizes.stream_bytes, device, min(sizes.warmup, 1), sizes.reps)
    # the cache size is recorded beside the stream's so a reader can tell whether the read could
    # have been served from cache (a VM may report its host's whole L3)
    llc = None if device.startswith("cuda") else last_level_cache_bytes()
    details = {"device": device, "threads": torch.get_num_threads(), "gemm_n": dict(sizes.gemm_n),
               "stream": STREAM, "stream_bytes": sizes.stream_bytes, "last_level_cache_bytes": llc,
               "timing": f"best of {sizes.reps} calls after {sizes.warmup} warm-up calls"}
    return Peaks(gflops, bandwidth, skipped, details)


# --- counting the work of a forward --------------------------------------------------------------------

aten = torch.ops.aten


def _weight_pack_mm_flop(a_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's weight-only int8/int4 kernels: activations (m, k) times a packed weight; out (m, n)."""
    return 2 * math.prod(a_shape) * out_shape[-1]


def _extra_kernels() -> dict[Any, Callable]:
    """Matmul kernels quantized torch models call that FlopCounterMode's registry lacks."""
    from torch.utils.flop_counter import mm_flop, shape_wrapper

    extra = {aten._int_mm: mm_flop}  # registered formulas are already in the raw form
    for name in ("_weight_int8pack_mm", "_weight_int4pack_mm", "_weight_int4pack_mm_for_cpu"):
        if hasattr(aten, name):
            extra[getattr(aten, name)] = shape_wrapper(_weight_pack_mm_flop)
    return extra


@dataclass(frozen=True)
class WorkCount:
    """FLOPs of one forward, by the dtype of the first matmul operand (the activations, or int8
    when they are quantized too); ``uncounted``: Linear-like modules that ran without a counted
    matmul (a custom kernel the counter cannot see), which make the total a lower bound."""

    flops_by_dtype: dict[str, int]
    uncounted: tuple[str, ...] = ()

    @property
    def flops(self) -> int:
        return sum(self.flops_by_dtype.values())

    @property
    def compute_dtype(self) -> str | None:
        """The dtype most of the FLOPs are done in."""
        return max(self.flops_by_dtype, key=self.flops_by_dtype.get) if self.flops_by_dtype else None

    @property
    def complete(self) -> bool:
        return not self.uncounted and self.flops > 0


def _tallying(formula: Callable, tally: Counter) -> Callable:
    """``formula`` (FlopCounterMode's raw form: the op's arguments and ``out_val``), adding its count
    to ``tally`` under the dtype of the op's first tensor argument."""
    def count(*args, out_val=None, **kwargs):
        flops = formula(*args, out_val=out_val, **kwargs)
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        name = "?" if first is None else DTYPE_NAMES.get(first.dtype, str(first.dtype).removeprefix("torch."))
        tally[name] += flops
        return flops

    count._get_raw = True
    return count


def _linear_like(module: torch.nn.Module) -> bool:
    return isinstance(getattr(module, "in_features", None), int) and isinstance(
        getattr(module, "out_features", None), int)


def count_forward(forward: Callable[[], object], model: torch.nn.Module | None = None) -> WorkCount:
    """Run ``forward`` once under FlopCounterMode and tally its FLOPs by operand dtype. With
    ``model``, each Linear-like module of it that runs without adding a count is named in
    ``uncounted`` (its kernel is invisible to the counter)."""
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    tally: Counter = Counter()
    mapping = {op: _tallying(formula, tally) for op, formula in {**flop_registry, **_extra_kernels()}.items()}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    uncounted: list[str] = []
    handles = [] if model is None else _watch_linears(model, counter, uncounted)
    try:
        with counter:
            forward()
    finally:
        for handle in handles:
            handle.remove()
    return WorkCount(dict(tally), tuple(uncounted))


def _watch_linears(model: torch.nn.Module, counter, uncounted: list[str]) -> list:
    handles = []
    for name, module in model.named_modules():
        if not _linear_like(module):
            continue
        before: list[int] = []
        handles.append(module.register_forward_pre_hook(lambda m, a, b=before: b.append(counter.get_total_flops())))
        handles.append(module.register_forward_hook(
            lambda m, a, out, b=before, n=name: uncounted.append(n) if counter.get_total_flops() == b.pop() else None))
    return handles


# --- the precision of an exported graph -----------------------------------------------------------------

# ONNX operators that compute with int8 activations (ORT's dynamic quantization writes the first
# three; a QDQ graph's Quantize/DequantizeLinear pairs are fused into int8 kernels by ORT)
ONNX_INT8_OPS = frozenset({"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul",
                           "ConvInteger", "QLinearConv", "QuantizeLinear"})


def graph_compute_dtype(artifact: Path, runtime: dict[str, Any], settings: dict[str, Any] | None) -> str | None:
    """What an exported graph computes its matmuls in: int8 when its activations are quantized
    (OpenVINO FakeQuantize, ONNX integer or QDQ operators), else the runtime's precision (OpenVINO's
    inference hint; ONNX Runtime runs float graphs in fp32). None for a runtime this does not read."""
    model_file = Path(artifact) / runtime["model"]
    name = runtime.get("runtime")
    if name == "openvino":
        if 'type="FakeQuantize"' in model_file.read_text(errors="replace"):
            return "int8"
        precision = str((settings or {}).get("precision", "f32")).lower()
        return {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(precision, precision)
    if name == "onnxruntime":
        import onnx

        graph = onnx.load(str(model_file), load_external_data=False).graph
        return "int8" if any(node.op_type in ONNX_INT8_OPS for node in graph.node) else "fp32"
    return None


# --- fractions of the peaks -----------------------------------------------------------------------------


def _positive(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
               for v in values)


def compute_fraction(flops: Any, latency_s: Any, peak_gflops: Any) -> float | None:
    """Achieved FLOP/s (``flops`` in ``latency_s``) over the peak; None unless all three are positive
    and finite."""
    if not _positive(flops, latency_s, peak_gflops):
        return None
    return flops / latency_s / (peak_gflops * 1e9)


def memory_fraction(bytes_per_step: Any, steps_per_s: Any, bandwidth_gbs: Any) -> float | None:
    """Bytes read per second (``bytes_per_step`` times ``steps_per_s``) over the bandwidth; None
    unless all three are positive and finite."""
    if not _positive(bytes_per_step, steps_per_s, bandwidth_gbs):
        return None
    return bytes_per_step * steps_per_s / (bandwidth_gbs * 1e9)


def add_fractions(result, peaks: Peaks | None) -> None:
    """Into ``result`` (results.CaseResult): the peaks it is held against and its fractions of
    them: compute for the timed batch-1 forward (FLOPs over the median latency, against the peak of
    the dtype it computes in) and memory for decode (the artifact's bytes on disk, all read once
    per generated token, times the decode tokens/s, against the read bandwidth)."""
    if peaks is None or (result.roofline_dtype is None and result.decode_tokens_per_s is None):
        return  # nothing measured to hold against the peaks (a skipped case)
    dtype = result.roofline_dtype
    peak = peaks.gflops.get(dtype) if dtype else None
    result.roofline_peak_gflops, result.roofline_bandwidth_gbs = peak, peaks.bandwidth_gbs
    latency_s = result.latency_p50_ms / 1e3 if _positive(result.latency_p50_ms) else None
    result.roofline_compute = compute_fraction(result.forward_flops, latency_s, peak)
    result.roofline_memory = memory_fraction(result.size_bytes, result.decode_tokens_per_s, peaks.bandwidth_gbs)


# --- one case's work --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseWork:
    """What CaseResult records of a case's timed forward: FLOPs, their dtype, why either is missing."""

    flops: int | None
    compute_dtype: str | None
    note: str | None = None


def torch_work(runner, inputs: dict[str, torch.Tensor]) -> WorkCount:
    """The work of ``runner.logits(inputs)``: the timed forward itself, run once more under the counter."""
    return count_forward(lambda: runner.logits(inputs), runner.model)


def case_work(artifact: Path, runner, count: Callable[[], WorkCount | None]) -> CaseWork:
    """The work of a case's timed forward: ``count()`` counts it (on the artifact's torch model, or
    for an exported graph on the torch stage it was exported from, None when there is none); the
    dtype is the counted one for torch, read from the graph for a graph runtime."""
    from compresslab.models.graph_runner import runtime_of

    runtime = runtime_of(artifact)
    work = count()
    if runtime is None:
        dtype = work.compute_dtype if work is not None else None
    else:
        dtype = graph_compute_dtype(artifact, runtime, getattr(runner, "settings", None))
    notes = []
    if work is None:
        notes.append("no torch checkpoint the graph was exported from to count FLOPs on")
    elif not work.complete:
        some = f" (e.g. {work.uncounted[0]})" if work.uncounted else ""
        notes.append(f"FLOPs not counted: {len(work.uncounted)} Linear module(s) run a kernel FlopCounterMode "
                     f"cannot see{some}")
    if dtype is None and runtime is not None:
        notes.append(f"the compute dtype of a {runtime.get('runtime')} artifact is not read")
    flops = work.flops if work is not None and work.complete else None
    return CaseWork(flops, dtype, "; ".join(notes) or None)
