"""Tables of a run's results, readable at a glance in a terminal or a CI log."""

from __future__ import annotations

import math
from typing import Any

from compresslab.results import CaseRecord, CaseResult
from compresslab.tasks.metrics import label

COLUMNS = ("model", "method", "result", "metrics", "recovery", "top-1 agree", "size MB", "size x", "zstd MB",
           "sparsity", "p50 ms", "speedup", "b16 ms", "b16 x", "decode tok/s", "decode x", "% peak", "decode % BW")


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def _metrics(result: CaseResult) -> str:
    text = "  ".join(f"{label(k)} {v:.4g}" for k, v in (result.metrics or {}).items())
    return f"{text} *" if text and result.metrics_cached else text


def _recovery(result: CaseResult) -> str:
    recovery = result.recovery or {}
    return " ".join(f"{v:.1%}" for v in recovery.values()) if recovery else "-"


def _mb(size_bytes: int | None) -> float | None:
    return None if size_bytes is None else size_bytes / 1e6


def _compute_peak(result: CaseResult) -> str:
    """The batch-1 forward's share of the GEMM peak of the dtype it computes in, e.g. "12.3% int8"."""
    share = _num(result.roofline_compute, ".1%")
    return share if share == "-" else f"{share} {result.roofline_dtype}"


def row(record: CaseRecord) -> tuple[str, ...]:
    r = record.result
    result = record.outcome
    if record.reason and result != "passed":
        result = f"{result}: {record.reason}"[:60]
    return (
        record.model,
        record.chain,
        result,
        _metrics(r) or "-",
        _recovery(r),
        # how often the fp32 model's answer is kept: recovery near 100% can hide changed answers
        _num(r.top1_agreement, ".1%"),
        _num(_mb(r.size_bytes), ".1f"),
        _num(1 / r.size_ratio if r.size_ratio else None, ".2f"),
        _num(_mb(r.size_zstd_bytes), ".1f"),
        _num(r.sparsity, ".0%"),
        _num(r.latency_p50_ms, ".2f"),
        _num(r.speedup_vs_baseline, ".2f"),
        _num(r.latency_b16_p50_ms, ".2f"),
        _num(r.speedup_b16_vs_baseline, ".2f"),
        _num(r.decode_tokens_per_s, ".1f"),
        _num(r.decode_speedup_vs_baseline, ".2f"),
        # roofline: how far from this machine's measured limits (trackers/roofline.py)
        _compute_peak(r),
        _num(r.roofline_memory, ".1%"),
    )


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns two spaces apart, a dashed rule under the header."""
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


SPARSE = 0.2  # sparsity from which a row's zeros are worth a note on how they are stored
BASELINE_ROW = "fp32"  # registry.BASELINE_METHOD; not imported, so reports load without torch


def by_model(records: list[CaseRecord]) -> list[CaseRecord]:
    """Grouped by model, its baseline first, then the methods in the order given."""
    return sorted(records, key=lambda r: (r.model, r.chain != BASELINE_ROW))


def peaks_line(records: list[CaseRecord]) -> str:
    """The peaks the rows were held against, as their records carry them (an xdist worker's each)."""
    gemm = sorted({(r.result.roofline_dtype, r.result.roofline_peak_gflops) for r in records
                   if r.result.roofline_dtype and r.result.roofline_peak_gflops})
    bandwidth = sorted({r.result.roofline_bandwidth_gbs for r in records if r.result.roofline_bandwidth_gbs})
    parts = [f"{dtype} {peak:.0f} GFLOP/s" for dtype, peak in gemm] + [f"{gbs:.1f} GB/s" for gbs in bandwidth]
    return f" Peaks: {', '.join(parts)}." if parts else ""


def render_table(records: list[CaseRecord]) -> str:
    """A fixed-width table; "size x" and "speedup" are how many times smaller / faster than fp32."""
    lines = format_table(COLUMNS, [row(r) for r in by_model(records)])
    if any((r.result.sparsity or 0) >= SPARSE for r in records):
        lines.append(f"Rows at {SPARSE:.0%}+ sparsity store and run their zeros dense: they are no smaller on disk and "
                     "no faster on dense kernels; only the zstd size shows what the zeros save in transfer. "
                     "Structured pruning and distillation remove weights for real.")
    if any(r.result.roofline_compute is not None or r.result.roofline_memory is not None for r in records):
        lines.append("% peak: counted FLOPs of the batch-1 forward over its median latency, against the GEMM peak "
                     "this session measured for the dtype it computes in; decode % BW: the artifact's bytes on disk "
                     "read once per token times decode tokens/s, against the measured memory read bandwidth."
                     + peaks_line(records))
    if any(r.result.metrics_cached for r in records):
        lines.append("* metrics read from the evaluation cache: same artifact bytes, data, libraries, device and "
                     "threads as when measured; --compresslab-reeval re-measures. Size, memory and latency are "
                     "always measured in this run.")
    return "\n".join(lines)
