"""The second timed workload of each case, beside the batch-1 latency pytest-benchmark times:
a batch of 16 for a classifier (throughput serving), per-token decode for a causal LM (generation).

Each returns its extra_info fields and the median it is compared on; speedups are against the
same workload of this run's fp32 baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from compresslab.trackers import decode, latency

BATCH_SIZE = 16
DECODE_TOKENS = 16


@dataclass(frozen=True)
class WorkloadResult:
    extra: dict[str, Any]
    median_s: float
    speedup_key: str


def batch_latency(runner, inputs: dict[str, torch.Tensor], device: str, rounds: int, warmup: int) -> WorkloadResult:
    stats = latency.time_calls(lambda: runner.logits(inputs), device, rounds=rounds, warmup=warmup)
    size = inputs["input_ids"].shape[0]
    ms = stats.as_ms()
    extra = {f"latency_b{size}_p50_ms": ms["latency_p50_ms"], f"latency_b{size}_p90_ms": ms["latency_p90_ms"],
             f"latency_b{size}_rounds": ms["latency_rounds"]}
    return WorkloadResult(extra, stats.median_s, f"speedup_b{size}_vs_baseline")


def decode_latency(runner, prompt_ids: torch.Tensor, device: str, rounds: int) -> WorkloadResult:
    stats = decode.time_decode(runner, prompt_ids, DECODE_TOKENS, device, rounds=rounds, warmup=1)
    return WorkloadResult(stats.as_extra_info(), stats.median_step_s, "decode_speedup_vs_baseline")


def second_workload(runner, batch_inputs: Callable[[int], dict[str, torch.Tensor]], device: str,
                    rounds: int, warmup: int) -> WorkloadResult:
    """``batch_inputs(n)``: the model's timed input at batch ``n`` (the task's fixed length).
    Fewer rounds than the main timing: each round costs 16 inferences."""
    if runner.is_causal_lm:
        return decode_latency(runner, batch_inputs(1)["input_ids"], device, rounds=max(2, rounds // 10))
    return batch_latency(runner, batch_inputs(BATCH_SIZE), device, rounds=max(3, rounds // 3),
                         warmup=min(warmup, 2))
