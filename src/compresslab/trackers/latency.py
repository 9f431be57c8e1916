"""Latency: warm-up, timed samples, percentiles. CUDA work is synchronized before each clock read."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LatencyStats:
    samples_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    def percentile(self, q: float) -> float:
        return percentile(self.samples_s, q)



def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), without needing numpy."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within [0, 100], got {q}")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def synchronizer(device: str) -> Callable[[], None]:
    """What to call before reading the clock so queued device work is counted."""
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(fn: Callable[[], object], device: str = "cpu", rounds: int = 30, warmup: int = 5) -> LatencyStats:
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    sync = synchronizer(device)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return LatencyStats(tuple(samples))
