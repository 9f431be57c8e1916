"""Baseline fine-tune of a sequence classifier: seeded, bounded by steps and wall time, with a progress bar."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from compresslab.tasks.tweets import Example

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    max_steps: int = 250
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    max_length: int = 64
    time_budget_s: float = 330.0  # stop early, keeping the model so far, if a slow machine would overrun
    seed: int = 13

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"FinetuneConfig.learning_rate must be in (0, 1), got {self.learning_rate}")

    def fingerprint(self) -> dict[str, object]:
        return asdict(self)


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


def finetune_classifier(model, tokenizer, train: Sequence[Example], config: FinetuneConfig) -> dict[str, float]:
    """Train in place; returns what happened (steps, seconds, last loss) for the build record."""
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, int(config.max_steps * config.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, config.max_steps, warmup))
    model.train()
    started, loss_ema, step = time.perf_counter(), None, 0
    bar = tqdm(total=config.max_steps, desc="fine-tune baseline", unit="step", leave=False)
    for step, batch in enumerate(_batches(train, config.batch_size, rng), start=1):
        inputs = tokenizer([e.text for e in batch], padding=True, truncation=True,
                           max_length=config.max_length, return_tensors="pt")
        labels = torch.tensor([e.label for e in batch])
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.3f}")
        if step >= config.max_steps or time.perf_counter() - started > config.time_budget_s:
            break
    bar.close()
    model.eval()
    elapsed = time.perf_counter() - started
    if step < config.max_steps:
        log.warning("fine-tune stopped at step %d of %d: time budget %.0fs reached", step, config.max_steps, elapsed)
    return {"steps": step, "train_s": elapsed, "final_loss_ema": float(loss_ema or 0.0)}
