"""Baseline fine-tune of a sequence classifier: seeded, stopped by steps only, with a progress bar.

A run stops at ``max_steps`` and nowhere else, so the trained model is the same on a quiet and on
a loaded machine. The wall-clock ``safety_limit_s`` only guards against a hung or hopelessly slow
run: reaching it raises TrainingIncomplete, and the cache publishes nothing for a build that raises.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from compresslab.tasks.tweets import Example

DEFAULT_SAFETY_LIMIT_S = 3600.0  # about 10x the MiniLM baseline fine-tune (250 steps) on 2 quiet cores


class TrainingIncomplete(RuntimeError):
    """Training hit its wall-clock safety limit before max_steps: the partial model must not be used."""


@dataclass(frozen=True)
class FinetuneConfig:
    max_steps: int = 250
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    max_length: int = 64
    seed: int = 13
    # Not a budget: a run that reaches it fails (TrainingIncomplete) instead of keeping a shorter model.
    safety_limit_s: float = DEFAULT_SAFETY_LIMIT_S

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"FinetuneConfig.learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.safety_limit_s <= 0:
            raise ValueError(f"FinetuneConfig.safety_limit_s must be > 0, got {self.safety_limit_s}")

    def fingerprint(self) -> dict[str, object]:
        """What determines the trained weights: the safety limit does not (a run that reaches it
        produces nothing), so raising it on a slow machine keeps the cached artifacts valid."""
        values = asdict(self)
        del values["safety_limit_s"]
        return values


def _batches(examples: Sequence[Example], batch_size: int, rng: random.Random):
    """Endless shuffled batches; epochs are reshuffled with the same seeded generator."""
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [examples[i] for i in order[start : start + batch_size]]


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def classifier_batches(tokenizer, examples: Sequence[Example], config: FinetuneConfig, rng: random.Random):
    """Endless shuffled, tokenized batches of labelled texts, for the model's own loss: cross-entropy
    on class indices, binary cross-entropy on multi-label examples (see label_tensor)."""
    if len(examples) < config.batch_size:  # _batches would loop forever without yielding
        raise ValueError(f"{len(examples)} training examples, fewer than one batch of {config.batch_size}")
    for batch in _batches(examples, config.batch_size, rng):
        inputs = tokenizer([e.text for e in batch], padding=True, truncation=True,
                           max_length=config.max_length, return_tensors="pt")
        yield {**inputs, "labels": label_tensor([e.label for e in batch])}


def label_tensor(labels: Sequence) -> torch.Tensor:
    """Class indices as a long tensor, or multi-label tuples (one 0/1 per label) as a float matrix:
    float targets are what make a HF sequence classifier compute BCE (it infers problem_type
    "multi_label_classification" from them, or uses the one its config sets)."""
    if labels and isinstance(labels[0], tuple):
        return torch.tensor(labels, dtype=torch.float)
    return torch.tensor(labels)


def lm_batches(tokenizer, texts: Sequence[str], config: FinetuneConfig, rng: random.Random):
    """Endless shuffled batches of full ``max_length`` token windows cut from the texts (no
    padding); labels are the inputs, the causal LM shifts them itself."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    n_windows = len(ids) // config.max_length
    if n_windows < config.batch_size:
        raise ValueError(f"{len(ids)} training tokens make {n_windows} windows of {config.max_length}, "
                         f"fewer than one batch of {config.batch_size}")
    windows = ids[: n_windows * config.max_length].view(n_windows, config.max_length)
    for batch in _batches(list(windows), config.batch_size, rng):
        input_ids = torch.stack(batch)
        yield {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids}


def train(model, batches, loss_fn, config: FinetuneConfig, desc: str,
          after_step: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """AdamW with warm-up and cosine decay for exactly max_steps; in place.

    ``loss_fn(batch)`` returns the loss of one batch; ``after_step(step, smoothed_loss)``, if given,
    runs after every step (a learning curve's checkpoints; it leaves the model in train mode). Returns what happened (steps, seconds,
    last smoothed loss) for the build record. Raises TrainingIncomplete when the safety limit
    is reached first (or the batches run out), so no caller can save a shorter run.
    """
    torch.manual_seed(config.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, int(config.max_steps * config.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, config.max_steps, warmup))
    model.train()
    started, loss_ema, step = time.perf_counter(), None, 0
    with tqdm(total=config.max_steps, desc=desc, unit="step", leave=False) as bar:
        for step, batch in enumerate(batches, start=1):
            loss = _step(loss_fn(batch), trainable, optimizer, scheduler)
            loss_ema = loss if loss_ema is None else 0.9 * loss_ema + 0.1 * loss
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}")
            if after_step is not None:
                after_step(step, loss_ema)
            if step >= config.max_steps:
                break
            _check_safety_limit(desc, step, config, time.perf_counter() - started)
    model.eval()
    if step < config.max_steps:
        raise TrainingIncomplete(f"{desc}: the training batches ran out at step {step} of {config.max_steps}; "
                                 "nothing cached")
    return {"steps": step, "max_steps": config.max_steps, "train_s": time.perf_counter() - started,
            "final_loss_ema": float(loss_ema)}


def _step(loss: torch.Tensor, trainable, optimizer, scheduler) -> float:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _check_safety_limit(desc: str, step: int, config: FinetuneConfig, elapsed: float) -> None:
    if elapsed > config.safety_limit_s:
        raise TrainingIncomplete(f"{desc}: stopped at step {step} of {config.max_steps} after the "
                                 f"{config.safety_limit_s:.0f} s safety limit; nothing cached")


def finetune_classifier(model, tokenizer, train_examples: Sequence[Example], config: FinetuneConfig,
                        desc: str = "fine-tune baseline") -> dict[str, float]:
    """Supervised fine-tune of a sequence classifier in place (the baseline's, and recovery after pruning)."""
    batches = classifier_batches(tokenizer, train_examples, config, random.Random(config.seed))
    return train(model, batches, lambda batch: model(**batch).loss, config, desc)


@dataclass(frozen=True)
class TrainBudget:
    """One training config per model kind: a classifier trains on short labelled texts in big
    batches, a causal LM on long token windows in small ones."""

    classifier: FinetuneConfig
    causal_lm: FinetuneConfig

    def for_kind(self, kind: str) -> FinetuneConfig:
        return self.classifier if kind == "classifier" else self.causal_lm
