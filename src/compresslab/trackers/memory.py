"""Peak memory of a workload, measured in its own pass (never during the timed loop).

CPU: resident set size sampled by a thread while the workload runs; the sampler would
steal a core from the timed loop, which is why latency and memory are separate passes.
CUDA: the allocator's exact peak (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import torch

SAMPLE_INTERVAL_S = 0.002


@dataclass(frozen=True)
class MemoryStats:
    rss_before_bytes: int
    peak_rss_bytes: int
    cuda_peak_bytes: int | None = None



class _RssSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._process = psutil.Process()
        self._halt = threading.Event()
        self.peak = self._process.memory_info().rss

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_INTERVAL_S):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        return self.peak


def current_rss() -> int:
    return psutil.Process().memory_info().rss


def own_peak_rss() -> int | None:
    """This process's own resident high-water mark (VmHWM, Linux), or None where there is none.

    Not ``ru_maxrss``: Linux carries the forking parent's high-water mark across exec into the
    child's ``ru_maxrss``, so a probe started from a 1.8 GB pytest process reported 1.8 GB for a
    90 MB model. VmHWM belongs to the address space that exec creates fresh.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # reported in kB
    return None


def measure_peak(fn: Callable[[], object], device: str = "cpu", rss_before: int | None = None) -> MemoryStats:
    """Run ``fn`` once and report peak RSS (and CUDA peak on a GPU).

    ``rss_before`` lets the caller take the reference before loading the model, so the
    delta covers weights plus activations.
    """
    before = current_rss() if rss_before is None else rss_before
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    sampler = _RssSampler()
    sampler.start()
    try:
        fn()
        if on_cuda:
            torch.cuda.synchronize(device)
    finally:
        peak = sampler.stop()
    cuda_peak = torch.cuda.max_memory_allocated(device) if on_cuda else None
    return MemoryStats(before, peak, cuda_peak)
