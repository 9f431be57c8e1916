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
    stats = latency.time_calls(lambda: calls.append(time.sleep(0.001)), rounds=7, warmup=3)
    assert len(calls) == 10 and len(stats.samples_s) == 7
    assert all(s >= 0.001 for s in stats.samples_s)
    assert stats.percentile(0) == min(stats.samples_s) and stats.percentile(100) == max(stats.samples_s)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        latency.time_calls(lambda: None, rounds=0)


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


# A child reads its high-water mark with the probe under test and with ru_maxrss, before and after
# writing a 100 MiB block of its own.
PEAK_CHILD = """import resource
from compresslab.trackers.memory import own_peak_rss


def ru_maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


before = own_peak_rss(), ru_maxrss()
block = bytearray(b"x") * (100 * 2**20)
after = own_peak_rss(), ru_maxrss()
print(*before, *after)
"""


def assert_own_peak(before: int, after: int) -> None:
    """A probe in a child of a process of 600+ MiB: it sees the child's own 100 MiB block and
    stays below the parent's size (the child imports torch: about 220 MiB)."""
    grown = (after - before) / 2**20
    assert grown >= 95, f"the child's 100 MiB block moved the peak by {grown:.0f} MiB"
    assert after < 500 * 2**20, f"peak {after / 2**20:.0f} MiB: the forking parent's, not the child's"


@pytest.mark.skipif(memory.own_peak_rss() is None, reason="no /proc/self/status VmHWM on this platform")
def test_probe_high_water_mark_is_its_own_not_the_forking_parents():
    """A child started from a big process reports its own peak, as a memory probe must."""
    import subprocess
    import sys

    held = np.ones(600 * 2**20 // 8)  # 600 MiB resident in this (parent) process
    done = subprocess.run([sys.executable, "-c", PEAK_CHILD], capture_output=True, text=True, check=True)
    del held  # resident until the child has run
    own_before, inherited_before, own_after, inherited_after = map(int, done.stdout.split())
    assert_own_peak(own_before, own_after)
    # the set-up is one where the naive reading is wrong: ru_maxrss carried the parent's peak
    assert inherited_before >= 600 * 2**20, inherited_before
    with pytest.raises(AssertionError, match="moved the peak by 0 MiB"):
        assert_own_peak(inherited_before, inherited_after)
    with pytest.raises(AssertionError, match="moved the peak by 0 MiB"):  # a probe returning a constant
        assert_own_peak(200 * 2**20, 200 * 2**20)


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
