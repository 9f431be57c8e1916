"""Training stops by steps only: a slow or loaded machine trains the same model, or fails outright."""

import itertools
import time

import pytest
import torch

from compresslab.cache import ArtifactCache
from compresslab.models.finetune import FinetuneConfig, TrainingIncomplete, finetune_classifier, train
from tiny import synthetic_examples, tiny_bert_classifier, tokenizer

CONFIG = FinetuneConfig(max_steps=6, batch_size=8, learning_rate=1e-3, max_length=32)


def jumping_clock(seconds_per_call: float):
    """A perf_counter that advances ``seconds_per_call`` on every read: each step looks that slow."""
    ticks = itertools.count()
    return lambda: next(ticks) * seconds_per_call


def finetuned_weights(config: FinetuneConfig) -> tuple[dict, torch.Tensor]:
    model = tiny_bert_classifier(train_steps=0, hidden_size=32)
    record = finetune_classifier(model, tokenizer(), synthetic_examples(64, seed=3), config, desc="test")
    return record, model.classifier.weight.detach().clone()


def test_slow_steps_still_train_every_step_and_the_same_model(monkeypatch):
    _, quiet = finetuned_weights(CONFIG)
    # 1000 s a step: the old 330 s time budget stopped such a run after its first step
    monkeypatch.setattr(time, "perf_counter", jumping_clock(1000.0))
    record, loaded = finetuned_weights(FinetuneConfig(**{**CONFIG.fingerprint(), "safety_limit_s": 1e9}))
    assert record["steps"] == record["max_steps"] == CONFIG.max_steps
    torch.testing.assert_close(loaded, quiet, rtol=0, atol=0)  # seeded: the machine's speed changes nothing


def test_safety_limit_fails_the_build_and_caches_nothing(monkeypatch, tmp_path):
    cache = ArtifactCache(tmp_path)
    config = FinetuneConfig(**{**CONFIG.fingerprint(), "safety_limit_s": 3600})

    def build(out):
        model = tiny_bert_classifier(train_steps=0, hidden_size=32)
        monkeypatch.setattr(time, "perf_counter", jumping_clock(1000.0))
        finetune_classifier(model, tokenizer(), synthetic_examples(64, seed=3), config, desc="tiny-baseline")
        model.save_pretrained(out)

    with pytest.raises(TrainingIncomplete, match=r"tiny-baseline: stopped at step \d of 6 after the 3600 s "
                                                 r"safety limit; nothing cached"):
        cache.get_or_build("key", build)
    assert cache.lookup("key") is None
    assert not any((tmp_path / ".tmp").iterdir())


def test_running_out_of_batches_is_incomplete_too():
    model = torch.nn.Linear(4, 1)
    batches = [torch.randn(8, 4) for _ in range(3)]
    with pytest.raises(TrainingIncomplete, match="ran out at step 3 of 6"):
        train(model, batches, lambda x: model(x).pow(2).mean(), CONFIG, desc="short data")


def test_fingerprint_holds_steps_not_seconds():
    fingerprint = CONFIG.fingerprint()
    assert fingerprint["max_steps"] == 6
    assert "time_budget_s" not in fingerprint and "safety_limit_s" not in fingerprint
    # a raised safety limit (a slower machine) reuses the artifacts of the same steps
    assert FinetuneConfig(**{**fingerprint, "safety_limit_s": 99999}).fingerprint() == fingerprint


def test_safety_limit_must_be_positive():
    with pytest.raises(ValueError, match="safety_limit_s must be > 0"):
        FinetuneConfig(safety_limit_s=0)
