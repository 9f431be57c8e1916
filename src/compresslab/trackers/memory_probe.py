"""The peak memory of one artifact, measured in a fresh process.

``probe_in_child`` (the parent side, called by cases.py, never during timing) starts
``python -m compresslab.trackers.memory_probe ARTIFACT BASE KIND DEVICE INPUTS_PT THREADS``, which
loads the artifact, runs one inference on the saved inputs and prints JSON with the process's
peak RSS (and CUDA allocator peak).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

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


def probe_in_child(artifact: Path, base: Path, kind: str, device: str,
                              inputs: dict[str, torch.Tensor], threads: int) -> dict[str, Any]:
    """Peak RSS of a fresh process that loads the artifact and runs one timed-shape inference.

    A separate process is what a deployment pays, and keeps this pass off the timed loop.
    """
    with tempfile.TemporaryDirectory(prefix="compresslab-mem-") as tmp:
        inputs_path = Path(tmp) / "inputs.pt"
        torch.save(inputs, inputs_path)
        command = [sys.executable, "-m", "compresslab.trackers.memory_probe", str(artifact), str(base), kind,
                   device, str(inputs_path), str(threads)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"memory probe failed for {artifact}: {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
