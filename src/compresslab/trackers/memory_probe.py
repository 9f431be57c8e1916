"""``python -m compresslab.trackers.memory_probe ARTIFACT BASE KIND DEVICE INPUTS_PT THREADS``

Loads one artifact in a fresh process, runs one inference on the saved inputs, prints JSON
with the process's peak RSS (and CUDA allocator peak). Run by measure.py, never during timing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(argv: list[str]) -> dict[str, float | None]:
    artifact, base, kind, device, inputs_path, threads = argv
    torch.set_num_threads(int(threads))
    from compresslab.models.runner import load_runner
    from compresslab.trackers.memory import current_rss, measure_peak, own_peak_rss

    inputs = torch.load(inputs_path)
    before_load = current_rss()
    runner = load_runner(Path(artifact), Path(base), kind, device)
    stats = measure_peak(lambda: runner.logits(inputs), device=device, rss_before=before_load)
    info = stats.as_extra_info()
    # the high-water mark also covers load-time peaks the sampler may miss
    high_water = own_peak_rss()
    if high_water is not None:
        info["peak_rss_mb"] = max(info["peak_rss_mb"], high_water / 2**20)
    info["rss_delta_mb"] = info["peak_rss_mb"] - before_load / 2**20
    return info


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
