import time

import numpy as np
import pytest
import torch

from compresslab.tasks import metrics
from compresslab.trackers import fidelity, latency, memory, size


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    samples = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4, 0.5]
    assert latency.percentile(samples, q) == pytest.approx(np.percentile(samples, q))


def test_latency_measure_counts_rounds_and_warmup():
    calls = []
    stats = latency.measure(lambda: calls.append(time.sleep(0.001)), rounds=7, warmup=3)
    assert len(calls) == 10 and len(stats.samples_s) == 7
    assert all(s >= 0.001 for s in stats.samples_s)
    assert set(stats.as_ms()) == {"latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_rounds"}
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        latency.measure(lambda: None, rounds=0)


def test_size_counts_real_bytes_and_zstd(tmp_path):
    (tmp_path / "zeros.bin").write_bytes(bytes(1_000_000))
    (tmp_path / "noise.bin").write_bytes(np.random.default_rng(0).bytes(100_000))
    stats = size.measure_dir(tmp_path)
    assert stats.size_bytes == 1_100_000 and stats.n_files == 2
    assert 100_000 <= stats.size_zstd_bytes < 120_000  # zeros vanish, noise does not compress
    assert stats.bits_per_param(275_000) == pytest.approx(32.0)
    with pytest.raises(FileNotFoundError):
        size.measure_dir(tmp_path / "empty")


def test_memory_peak_sees_a_transient_allocation():
    def allocate():
        block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
        time.sleep(0.05)
        del block

    stats = memory.measure_peak(allocate)
    assert stats.peak_rss_bytes - stats.rss_before_bytes > 250 * 2**20
    assert stats.cuda_peak_bytes is None


@pytest.mark.skipif(memory.own_peak_rss() is None, reason="no /proc/self/status VmHWM on this platform")
def test_probe_high_water_mark_is_its_own_not_the_forking_parents():
    """A child started from a big process reports its own peak, as a memory probe must."""
    import subprocess
    import sys

    held = np.ones(600 * 2**20 // 8)  # 600 MiB resident in this (parent) process
    code = ("import resource; from compresslab.trackers.memory import own_peak_rss; "
            "print(own_peak_rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    own, inherited = map(int, done.stdout.split())
    # the child imports torch (about 220 MiB); ru_maxrss reported the parent's 600+ MiB here
    assert own < 400 * 2**20, (own, inherited)
    assert held.sum() > 0  # keep the block alive (and resident) until the child has run


def test_fidelity_identical_and_different():
    logits = torch.randn(50, 5)
    same = fidelity.compare_logits(logits, logits.clone())
    assert same.top1_agreement == 1.0 and same.kl_div == pytest.approx(0.0, abs=1e-6)
    flipped = fidelity.compare_logits(logits, -logits)
    assert flipped.top1_agreement < 0.2 and flipped.kl_div > 0.5
    with pytest.raises(ValueError, match="shapes differ"):
        fidelity.compare_logits(logits, logits[:10])


def test_classification_metrics():
    pred = torch.tensor([0, 0, 1, 1, 2, 2])
    target = torch.tensor([0, 1, 1, 1, 2, 0])
    assert metrics.accuracy(pred, target) == pytest.approx(4 / 6)
    # per-class F1: class0 P=1/2 R=1/2 -> .5; class1 P=1 R=2/3 -> .8; class2 P=1/2 R=1 -> 2/3
    assert metrics.macro_f1(pred, target, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_multilabel_f1_and_perplexity():
    pred = torch.tensor([[1, 0, 1], [0, 1, 0]])
    target = torch.tensor([[1, 0, 0], [0, 1, 1]])
    scores = metrics.multilabel_f1(pred, target)
    assert scores["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert scores["macro_f1"] == pytest.approx((1 + 1 + 0) / 3)
    assert metrics.perplexity(2.0 * 10, 10) == pytest.approx(np.exp(2.0))
    with pytest.raises(KeyError, match="unknown metric 'bleu'"):
        metrics.direction("bleu")
