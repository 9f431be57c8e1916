"""A shallower decoder that trains: drop the contiguous blocks that change the hidden state least,
then heal the cut by logits distillation from the full model.

Layer-dropping every other block (``distill-half``) halves a 30-block SmolLM2 and leaves a student
that no affordable CPU budget recovers. Gromov et al. 2024 ("The Unreasonable Ineffectiveness of
the Deeper Layers") choose instead the ``n`` consecutive blocks whose input and output hidden
states are closest in angle on calibration text (those blocks barely change the residual stream),
remove them, and heal the model briefly. On SmolLM2-135M the closest run was not the cheapest to
lose (8 blocks from 11: perplexity 233 before healing; from 12: 62), so the distance shortlists
SHORTLIST runs and their measured perplexity on training windows picks one. Here the healing is distillation (the teacher's softened
next-token distribution plus the next token) on the training part of the text, fixed in steps; only
the blocks from a little below the cut upward train, so backward stops there and a step costs a
fraction of a full fine-tune's. The record holds the distances, the cut, and the learning curve:
the smoothed loss and the perplexity on validation windows of the training part (never the
held-out text the suite scores), before training and at a few checkpoints.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compresslab.methods.base import Method, StageContext
from compresslab.methods.distill import keep_blocks
from compresslab.methods.training import MAX_WIKI_CHUNKS, WIKI_CHUNK_TOKENS, distillation_loss, write_record
from compresslab.models.finetune import FinetuneConfig, lm_batches, train
from compresslab.models.loading import load_pretrained, load_tokenizer
from compresslab.models.structure import block_list

# Stopped by steps only; the safety limit is several times a run on 2 shared cores.
# SmolLM2-135M without 8 blocks: about 3.4 s a step on 2 quiet cores, so about 14 minutes; the
# perplexity on the validation windows fell 76 -> 52 in the first 24 steps at this rate (1e-4: 78 -> 64 in 4)
DEFAULT_TRAINING = FinetuneConfig(max_steps=240, batch_size=4, max_length=128, learning_rate=3e-4,
                                  safety_limit_s=7200)
VALIDATION_CHUNKS = 12  # training-part chunks held back from training: about 5k tokens, 10 s to score
VALIDATION_WINDOW = 256
CUT_WINDOWS = 8  # training windows of VALIDATION_WINDOW tokens that choose the cut
SHORTLIST = 4  # closest-in-angle runs whose perplexity is measured


@dataclass(frozen=True)
class BlockDropDistill(Method):
    n_drop: int = 8
    trainable_below_cut: int = 2  # blocks below the cut that train with the ones above it
    curve_points: int = 4  # learning-curve checkpoints after step 0 (evenly spaced, the last at max_steps)
    temperature: float = 1.0
    alpha: float = 0.5  # weight of the soft-target term; 1 - alpha goes to the next token
    training: FinetuneConfig = field(default_factory=lambda: DEFAULT_TRAINING)
    family: ClassVar[str] = "distill"
    uses_task_data: ClassVar[bool] = True
    kinds: ClassVar[tuple[str, ...]] = ("causal-lm",)  # the cut and its healing are next-token ones

    def __post_init__(self) -> None:
        if self.n_drop < 1:
            raise ValueError(f"BlockDropDistill.n_drop must be >= 1, got {self.n_drop}")
        if self.trainable_below_cut < 0 or self.curve_points < 1:
            raise ValueError("BlockDropDistill.trainable_below_cut must be >= 0 and curve_points >= 1, got "
                             f"{self.trainable_below_cut} and {self.curve_points}")
        if self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise ValueError(f"BlockDropDistill: temperature must be > 0 and alpha in [0, 1], got "
                             f"{self.temperature} and {self.alpha}")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        teacher = load_pretrained(src, ctx.kind, dtype=torch.float32)
        n_blocks = len(block_list(teacher)[1])
        if self.n_drop >= n_blocks - 1:
            raise ValueError(f"{ctx.model_id} has {n_blocks} blocks: BlockDropDistill.n_drop={self.n_drop} "
                             "must leave at least two")
        tokenizer = load_tokenizer(ctx.base_dir)
        train_texts, validation = split_training_text(ctx, tokenizer, self.training)
        start, distances, shortlist = choose_cut(teacher, token_windows(tokenizer, train_texts, CUT_WINDOWS),
                                                 self.n_drop)
        kept = dropped(n_blocks, start, self.n_drop)
        student = keep_blocks(teacher, kept)
        first_trainable = freeze_below(student, max(0, start - self.trainable_below_cut))
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        curve = LearningCurve(student, validation, checkpoints(self.training.max_steps, self.curve_points))
        curve.measure(0, None)
        batches = lm_batches(tokenizer, train_texts, self.training, random.Random(self.training.seed))
        record = train(student, batches, distillation_loss(student, teacher, self.temperature, self.alpha),
                       self.training, f"{ctx.model_id}: heal {len(kept)}-block student", curve.measure)
        for parameter in student.parameters():  # saved as a plain checkpoint that trains again if chained
            parameter.requires_grad_(True)
        student.save_pretrained(out)
        write_record(out, "block_distill", {
            "method": "angular-distance block drop + logits distillation (Gromov et al. 2024)",
            "angular_distance_by_start": [round(d, 4) for d in distances], "shortlist_perplexity": shortlist,
            "dropped_blocks": [start, start + self.n_drop],
            "kept_blocks": kept, "teacher_blocks": n_blocks, "first_trainable_block": first_trainable,
            "teacher_validation_perplexity": validation_perplexity(teacher, validation),
            "learning_curve": curve.points, "validation_tokens": int(validation.numel()),
            "temperature": self.temperature, "alpha": self.alpha, **record})


def split_training_text(ctx: StageContext, tokenizer, config: FinetuneConfig) -> tuple[list[str], torch.Tensor]:
    """The training part's first VALIDATION_CHUNKS as token windows that training never sees (the
    learning curve's; the same windows whatever the step count), and the chunks after them to train on."""
    tokens = config.max_steps * config.batch_size * config.max_length
    n_train = max(config.batch_size, math.ceil(tokens / WIKI_CHUNK_TOKENS))
    texts = ctx.calibration_texts(VALIDATION_CHUNKS + min(n_train, MAX_WIKI_CHUNKS - VALIDATION_CHUNKS))
    return texts[VALIDATION_CHUNKS:], token_windows(tokenizer, texts[:VALIDATION_CHUNKS])


def token_windows(tokenizer, texts: list[str], limit: int | None = None) -> torch.Tensor:
    """[n, VALIDATION_WINDOW] token ids cut from the joined texts (at most ``limit`` windows)."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    n_windows = len(ids) // VALIDATION_WINDOW
    if limit is not None:
        n_windows = min(n_windows, limit)
    if n_windows < 1:
        raise ValueError(f"{len(ids)} tokens of text, fewer than one window of {VALIDATION_WINDOW}")
    return ids[: n_windows * VALIDATION_WINDOW].view(n_windows, VALIDATION_WINDOW)


def dropped(n_blocks: int, start: int, n_drop: int) -> list[int]:
    """The blocks kept when ``n_drop`` consecutive ones from ``start`` go."""
    return [i for i in range(n_blocks) if not start <= i < start + n_drop]


def choose_cut(model: nn.Module, windows: torch.Tensor, n_drop: int) -> tuple[int, list[float], dict[int, float]]:
    """The start of the run to drop: of the SHORTLIST runs closest in angle, the one whose removal
    leaves the lowest perplexity on ``windows``. Returns it, every distance, and the shortlist's perplexities."""
    distances = block_distances(model, windows, n_drop)
    n_blocks = len(block_list(model)[1])
    shortlist = sorted(range(len(distances)), key=distances.__getitem__)[:SHORTLIST]
    perplexities = {start: round(validation_perplexity(keep_blocks(model, dropped(n_blocks, start, n_drop)), windows), 3)
                    for start in shortlist}
    return min(perplexities, key=perplexities.__getitem__), distances, perplexities


@torch.no_grad()
def block_distances(model: nn.Module, windows: torch.Tensor, n: int) -> list[float]:
    """Per start block l, the mean angular distance (arccos of the cosine, over pi) between the
    hidden states entering block l and block l + n, over every token of ``windows``."""
    hidden = model(input_ids=windows, attention_mask=torch.ones_like(windows), output_hidden_states=True).hidden_states
    # hidden[i] enters block i; hidden[-1] is after the final norm in Llama-style models, so the
    # last start whose output is a block's raw residual stream is len(hidden) - 2 - n
    return [_angular_distance(hidden[start], hidden[start + n]) for start in range(len(hidden) - 1 - n)]


def _angular_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    cosine = F.cosine_similarity(a.reshape(-1, a.shape[-1]).float(), b.reshape(-1, b.shape[-1]).float(), dim=-1)
    return (torch.arccos(cosine.clamp(-1, 1)) / math.pi).mean().item()


def freeze_below(student: nn.Module, first_trainable: int) -> int:
    """Freeze the embeddings (tied to the output layer) and the blocks below ``first_trainable``;
    everything from there up (blocks, final norm) trains. Returns ``first_trainable``."""
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    for block in block_list(student)[1][first_trainable:]:
        block.requires_grad_(True)
    norm = getattr(getattr(student, "model", student), "norm", None)
    if norm is not None:
        norm.requires_grad_(True)
    return first_trainable


def checkpoints(max_steps: int, points: int) -> set[int]:
    return {max(1, round(max_steps * (i + 1) / points)) for i in range(points)}


@torch.no_grad()
def validation_perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for begin in range(0, len(windows), batch_size):
        ids = windows[begin : begin + batch_size]
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        total += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += ids[:, 1:].numel()
    model.train(was_training)
    return math.exp(total / count)


@dataclass
class LearningCurve:
    """Validation perplexity (and the smoothed training loss) at step 0 and at the checkpoints."""

    model: nn.Module
    windows: torch.Tensor
    at_steps: set[int]
    points: list[dict[str, Any]] = field(default_factory=list)

    def measure(self, step: int, loss: float | None) -> None:
        if step == 0 or step in self.at_steps:
            self.points.append({"step": step, "train_loss_ema": None if loss is None else round(loss, 4),
                                "validation_perplexity": round(validation_perplexity(self.model, self.windows), 3)})
