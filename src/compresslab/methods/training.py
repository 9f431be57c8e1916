"""Training inside a compression stage: recovery fine-tunes and distillation, on the task's training data.

Classifiers train on the labelled training split of their task; causal LMs on the training part
of the Wikipedia text (never the held-out text perplexity is measured on).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from compresslab.methods.base import StageContext
from compresslab.models.finetune import FinetuneConfig, classifier_batches, lm_batches, train
from compresslab.models.loading import load_tokenizer
from compresslab.models.spec import RECORDS_DIR

WIKI_CHUNK_TOKENS = 400  # a 2000-character calibration chunk is about 450 SmolLM2 tokens
MAX_WIKI_CHUNKS = 1000  # the training part holds about 1050 chunks; later epochs reshuffle them


def training_batches(ctx: StageContext, config: FinetuneConfig):
    """Endless batches of the stage's training data, enough distinct examples for the whole budget."""
    tokenizer = load_tokenizer(ctx.base_dir)
    rng = random.Random(config.seed)
    if ctx.kind == "classifier":
        return classifier_batches(tokenizer, ctx.training_examples(config.max_steps * config.batch_size), config, rng)
    tokens = config.max_steps * config.batch_size * config.max_length
    n_chunks = max(config.batch_size, math.ceil(tokens / WIKI_CHUNK_TOKENS))
    return lm_batches(tokenizer, ctx.calibration_texts(min(n_chunks, MAX_WIKI_CHUNKS)), config, rng)




def recovery_finetune(model, ctx: StageContext, config: FinetuneConfig, desc: str) -> dict[str, float]:
    """The model's own supervised loss (cross-entropy on labels, or next-token) on the training data."""
    return train(model, training_batches(ctx, config), lambda batch: model(**batch).loss, config, desc)


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) of temperature-softened distributions, times T^2 (Hinton et al.)
    so its gradients keep their scale as T changes; averaged over the unmasked positions."""
    vocab = student_logits.shape[-1]
    student = F.log_softmax(student_logits.reshape(-1, vocab).float() / temperature, -1)
    teacher = F.log_softmax(teacher_logits.reshape(-1, vocab).float() / temperature, -1)
    per_row = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
    if mask is not None:
        keep = mask.reshape(-1).bool()
        per_row = per_row[keep]
    return per_row.mean() * temperature**2


def distillation_loss(student, teacher, temperature: float, alpha: float) -> Callable[[dict], torch.Tensor]:
    """alpha * soft-target KL + (1 - alpha) * the student's own loss on the hard labels."""

    def loss(batch: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
        out = student(**batch)
        soft = soft_target_loss(out.logits, teacher_logits, temperature, batch.get("attention_mask")
                                if out.logits.dim() == 3 else None)
        return alpha * soft + (1 - alpha) * out.loss

    return loss


def write_record(out: Path, name: str, record: dict[str, Any]) -> None:
    """A stage's build record (training steps and seconds, ranks, ...) beside its checkpoint;
    records/ is not part of the artifact's measured size."""
    records = Path(out) / RECORDS_DIR
    records.mkdir(exist_ok=True)
    (records / f"{name}.json").write_text(json.dumps(record, indent=2))
