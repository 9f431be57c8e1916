"""The second timed workload of each case, beside the batch-1 latency pytest-benchmark times:
a batch of 16 for a classifier (throughput serving), per-token decode for a causal LM (generation).
Each returns its stats and the median it is compared on; the speedup is against the same
workload of this run's fp32 baseline (results.CaseResult.add_batch16 / add_decode record them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from compresslab.models.speculative import SpeculativeRunner
from compresslab.trackers import decode, latency

BATCH_SIZE = 16  # results.CaseResult names its fields after it (latency_b16_*)
DECODE_TOKENS = 16
# the decode workload of a speculative decoder: longer generations over several prompts (the rows of
# the task's timed input), so that whole draft-and-verify rounds are measured
SPECULATIVE_PROMPTS = 4
SPECULATIVE_TOKENS = 64


@dataclass(frozen=True)
class WorkloadResult:
    stats: Any  # latency.LatencyStats (batch) or decode.DecodeStats
    median_s: float

    @property
    def is_decode(self) -> bool:
        return isinstance(self.stats, decode.DecodeStats)

    def record(self, result, speedup: float) -> None:
        """Into ``result`` (results.CaseResult), with its speedup over fp32 on the same workload."""
        if isinstance(self.stats, decode.SpeculativeStats):
            result.add_speculative_decode(self.stats, speedup)
        elif self.is_decode:
            result.add_decode(self.stats, speedup)
        else:
            result.add_batch16(self.stats, speedup)


def batch_latency(runner, inputs: dict[str, torch.Tensor], device: str, rounds: int, warmup: int) -> WorkloadResult:
    stats = latency.time_calls(lambda: runner.logits(inputs), device, rounds=rounds, warmup=warmup)
    return WorkloadResult(stats, stats.median_s)


def decode_latency(runner, prompt_ids: torch.Tensor, device: str, rounds: int) -> WorkloadResult:
    stats = decode.time_decode(runner, prompt_ids, DECODE_TOKENS, device, rounds=rounds, warmup=1)
    return WorkloadResult(stats, stats.median_step_s)


def speculative_latency(runner, prompts: torch.Tensor, device: str, rounds: int) -> WorkloadResult:
    """Per-token time of speculative decoding, with the target's plain greedy decode in the same rounds."""
    stats = decode.time_speculative(runner, prompts, SPECULATIVE_TOKENS, device, rounds=rounds, warmup=1)
    return WorkloadResult(stats, stats.median_token_s)


def second_workload(runner, batch_inputs: Callable[[int], dict[str, torch.Tensor]], device: str,
                    rounds: int, warmup: int) -> WorkloadResult:
    """``batch_inputs(n)``: the model's timed input at batch ``n`` (the task's fixed length).
    Fewer rounds than the main timing: each round costs 16 inferences."""
    if isinstance(runner, SpeculativeRunner):
        return speculative_latency(runner, batch_inputs(SPECULATIVE_PROMPTS)["input_ids"], device,
                                   rounds=max(2, rounds // 10))
    if runner.is_causal_lm:
        return decode_latency(runner, batch_inputs(1)["input_ids"], device, rounds=max(2, rounds // 10))
    return batch_latency(runner, batch_inputs(BATCH_SIZE), device, rounds=max(3, rounds // 3),
                         warmup=min(warmup, 2))
