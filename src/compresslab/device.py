"""Device and thread selection: one place decides where a case runs and with how many threads."""

from __future__ import annotations

import os
import re

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DeviceError(ValueError):
    pass


def device_type(device: str) -> str:
    """``cuda`` of ``cuda:1``: what a method supports, and how artifact and evaluation keys name the
    device (pytest-xdist puts each worker on its own GPU, so a two-phase run must find on ``cuda:1``
    what a worker built and evaluated on ``cuda:0``; the GPUs of one machine are taken to be alike)."""
    return device.split(":")[0]


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve(requested: str, worker_id: str | None = None) -> str:
    """'auto' picks CUDA when present. Under pytest-xdist, worker gwN gets GPU N mod count."""
    if not DEVICE_PATTERN.match(requested):
        raise DeviceError(f"--compresslab-device {requested!r} is not one of: auto, cpu, cuda, cuda:N")
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--compresslab-device {requested} requested but torch sees no CUDA device")
        if requested == "cuda":
            requested = f"cuda:{worker_gpu_index(worker_id, torch.cuda.device_count())}"
    return requested


def worker_gpu_index(worker_id: str | None, device_count: int) -> int:
    """pytest-xdist worker ``gwN`` -> GPU ``N mod device_count``: one worker per GPU, round-robin."""
    if not worker_id or not worker_id.startswith("gw") or not worker_id[2:].isdigit() or device_count < 1:
        return 0
    return int(worker_id[2:]) % device_count


def pin_threads(threads: int) -> None:
    """Pin torch's intra-op pool (and children's OpenMP pools) to ``threads``."""
    if threads < 1:
        raise DeviceError(f"--compresslab-threads must be >= 1, got {threads}")
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def describe(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine()
