"""``python -m compresslab.trackers.memory_probe ARTIFACT BASE KIND DEVICE INPUTS_PT THREADS``

Loads one artifact in a fresh process, runs one inference on the saved inputs, prints JSON
with the process's peak RSS (and CUDA allocator peak). Run by measure.py, never during timing.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch


def main(argv: list[str]) -> dict[str, float | None]:
    artifact, base, kind, device, inputs_path, threads = argv
    torch.set_num_threads(int(threads))
    from compresslab.models.runner import load_runner
    from compresslab.trackers.memory import current_rss, measure_peak

    inputs = torch.load(inputs_path)
    before_load = current_rss()
    runner = load_runner(Path(artifact), Path(base), kind, device)
    stats = measure_peak(lambda: runner.logits(inputs), device=device, rss_before=before_load)
    info = stats.as_extra_info()
    # ru_maxrss (KiB on Linux) also covers load-time peaks the sampler may miss.
    info["peak_rss_mb"] = max(info["peak_rss_mb"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    info["rss_delta_mb"] = info["peak_rss_mb"] - before_load / 2**20
    return info


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
