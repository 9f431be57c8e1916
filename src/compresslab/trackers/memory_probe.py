"""The peak memory of one artifact, measured in a fresh process.

``probe_in_child`` (the parent side, called by cases.py, never during timing) starts
``python -m compresslab.trackers.memory_probe ARTIFACT BASE KIND DEVICE INPUTS_PT THREADS``, which
loads the artifact, runs one inference on the saved inputs and prints JSON with the process's
peak RSS (and CUDA allocator peak).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from compresslab.child_process import TAIL_LINES, ChildProcessFailed, run_module


def main(argv: list[str]) -> dict[str, int | None]:
    """The probe process: MemoryStats of loading the artifact and one inference, as a dict."""
    import dataclasses

    import importlib

    artifact, base, kind, device, inputs_path, threads, *providers = argv
    torch.set_num_threads(int(threads))
    for module in providers:  # the method modules that wrote the artifact register how it reloads
        importlib.import_module(module)
    from compresslab.models.speculative import load_case_runner
    from compresslab.trackers.memory import current_rss, measure_peak, own_peak_rss

    inputs = torch.load(inputs_path)
    before_load = current_rss()
    runner = load_case_runner(Path(artifact), Path(base), kind, device)  # a speculative decoder: with its draft
    stats = measure_peak(lambda: runner.logits(inputs), device=device, rss_before=before_load)
    # the high-water mark also covers load-time peaks the sampler may miss
    high_water = own_peak_rss()
    if high_water is not None:
        stats = dataclasses.replace(stats, peak_rss_bytes=max(stats.peak_rss_bytes, high_water))
    return dataclasses.asdict(stats)


# A probe loads one artifact and runs one inference; far longer means it hangs (a stuck thread pool).
PROBE_TIMEOUT_S = 1800


def probe_in_child(artifact: Path, base: Path, kind: str, device: str, inputs: dict[str, torch.Tensor],
                   threads: int, providers: tuple[str, ...] = ()) -> dict[str, Any]:
    """Peak RSS of a fresh process that loads the artifact and runs one timed-shape inference.

    A separate process is what a deployment pays, and keeps this pass off the timed loop.
    ``providers``: the modules of the chain's methods that save a format of their own
    (Pipeline.format_providers). Such a method registers its loader when its module is imported
    (models/formats.py), and a fresh process has imported nothing, so the probe imports them first.
    """
    what = f"memory probe of {artifact}"
    with tempfile.TemporaryDirectory(prefix="compresslab-mem-") as tmp:
        inputs_path = Path(tmp) / "inputs.pt"
        torch.save(inputs, inputs_path)
        stdout = run_module("compresslab.trackers.memory_probe",
                            [str(artifact), str(base), kind, device, str(inputs_path), str(threads), *providers],
                            what=what, timeout=PROBE_TIMEOUT_S)
    return last_line_json(stdout, what)


def last_line_json(stdout: str, what: str) -> dict[str, Any]:
    """The JSON object the probe prints as its last line (libraries may print before it)."""
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise ChildProcessFailed(what, "printed no JSON on its last line", lines[-TAIL_LINES:]) from None


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
