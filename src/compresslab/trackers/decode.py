"""Decode latency of a causal LM: per-token time of greedy steps through the KV cache.

The prefill (the prompt) is timed by the main benchmark; here each round prefills untimed, then
times every single-token step, synchronizing the device before each clock read.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from compresslab.trackers.latency import percentile, synchronizer


@dataclass(frozen=True)
class DecodeStats:
    step_s: tuple[float, ...]  # every timed step of every round
    round_s: tuple[float, ...]  # the whole decode loop of each round
    new_tokens: int
    prompt_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / statistics.median(self.round_s)

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_s)

    def step_percentile(self, q: float) -> float:
        return percentile(self.step_s, q)


def time_decode(runner, prompt_ids: torch.Tensor, new_tokens: int = 16, device: str = "cpu", rounds: int = 5,
            warmup: int = 1) -> DecodeStats:
    if new_tokens < 1 or rounds < 1:
        raise ValueError(f"new_tokens and rounds must be >= 1, got {new_tokens} and {rounds}")
    sync = synchronizer(device)
    steps: list[float] = []
    loops: list[float] = []
    for round_index in range(warmup + rounds):
        logits, state = runner.start(prompt_ids)
        sync()
        timed: list[float] = []
        for _ in range(new_tokens):
            token = logits.argmax(-1, keepdim=True)
            start = time.perf_counter()
            logits, state = runner.step(token, state)
            sync()
            timed.append(time.perf_counter() - start)
        if round_index >= warmup:
            steps.extend(timed)
            loops.append(sum(timed))
    return DecodeStats(tuple(steps), tuple(loops), new_tokens, int(prompt_ids.shape[1]))
