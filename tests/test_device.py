"""Device selection: pytest-xdist workers spread over the GPUs (checked with a mocked GPU count)."""

import pytest
import torch

from compresslab import device


@pytest.mark.parametrize("worker, count, expected", [
    (None, 4, 0), ("gw0", 4, 0), ("gw1", 4, 1), ("gw5", 4, 1), ("gw3", 1, 0), ("master", 2, 0),
])
def test_worker_gpu_index(worker, count, expected):
    assert device.worker_gpu_index(worker, count) == expected


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("requested, worker, expected", [
    ("auto", "gw0", "cuda:0"), ("auto", "gw1", "cuda:1"), ("auto", "gw2", "cuda:0"), ("cuda", "gw3", "cuda:1"),
    ("cuda", None, "cuda:0"), ("cuda:1", "gw0", "cuda:1"), ("cpu", "gw1", "cpu"),
])
def test_xdist_workers_are_pinned_to_their_own_gpu(two_gpus, requested, worker, expected):
    assert device.resolve(requested, worker) == expected


def test_cpu_machine_stays_on_cpu_under_xdist():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert device.resolve("auto", "gw1") == "cpu"
    with pytest.raises(device.DeviceError, match="no CUDA device"):
        device.resolve("cuda", "gw1")
