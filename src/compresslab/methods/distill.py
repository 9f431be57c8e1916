"""Knowledge distillation into a shallower student that starts as every other block of the teacher.

As DistilBERT (Sanh et al. 2019): the student is the teacher with blocks 0, 2, 4, ... kept, so it
starts from trained weights, then learns the teacher's temperature-softened outputs plus the
hard targets: the labels for a classifier, the next token for a causal LM (over the training
part of the Wikipedia text). The student is a plain checkpoint of the same architecture with
fewer layers: it reloads with ``from_pretrained`` and chains into any later stage.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from compresslab.methods.base import Method, StageContext
from compresslab.methods.training import distillation_loss, training_batches, write_record
from compresslab.models.finetune import FinetuneConfig, TrainBudget, train
from compresslab.models.loading import load_pretrained
from compresslab.models.structure import block_list, replace_module

# Stopped by steps only; the safety limits are several times a run on 2 shared cores.
DEFAULT_BUDGET = TrainBudget(
    # about 0.8 s a step for a 3-layer MiniLM student plus its teacher on 2 quiet cores: about 5 minutes
    classifier=FinetuneConfig(max_steps=400, batch_size=32, learning_rate=1e-4),
    # a 15-layer SmolLM2 student and its 30-layer teacher on 4 x 256 tokens: about 8 s a step on
    # 2 loaded cores (50 of these 120 steps fitted the old 420 s budget), so 15 to 20 minutes
    causal_lm=FinetuneConfig(max_steps=120, batch_size=4, max_length=256, learning_rate=1e-4,
                             safety_limit_s=7200),
)


def kept_blocks(n_blocks: int, keep_every: int) -> list[int]:
    return list(range(0, n_blocks, keep_every))


def make_student(teacher: nn.Module, keep_every: int) -> tuple[nn.Module, list[int]]:
    """A copy of the teacher keeping every ``keep_every``-th block, its config and layer indices renumbered."""
    kept = kept_blocks(len(block_list(teacher)[1]), keep_every)
    return keep_blocks(teacher, kept), kept


def keep_blocks(teacher: nn.Module, kept: list[int]) -> nn.Module:
    """A copy of the teacher with only the blocks ``kept`` (in order), its config and layer indices renumbered."""
    student = copy.deepcopy(teacher)
    name, blocks = block_list(student)
    replace_module(student, name, nn.ModuleList([blocks[i] for i in kept]))
    config = student.config
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in kept]
    for new_index, block in enumerate(block_list(student)[1]):
        for module in block.modules():
            if hasattr(module, "layer_idx"):  # the KV cache is indexed by it
                module.layer_idx = new_index
    return student


@dataclass(frozen=True)
class LayerDropDistill(Method):
    keep_every: int = 2
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the soft-target term; 1 - alpha goes to the hard targets
    budget: TrainBudget = field(default_factory=lambda: DEFAULT_BUDGET)
    family: ClassVar[str] = "distill"
    uses_task_data: ClassVar[bool] = True  # trains on the task's training data

    def __post_init__(self) -> None:
        if self.keep_every < 2:
            raise ValueError(f"LayerDropDistill.keep_every must be >= 2 (1 keeps every layer), got {self.keep_every}")
        if self.temperature <= 0:
            raise ValueError(f"LayerDropDistill.temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"LayerDropDistill.alpha must be in [0, 1], got {self.alpha}")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        teacher = load_pretrained(src, ctx.kind, dtype=torch.float32)
        student, kept = make_student(teacher, self.keep_every)  # copied before the teacher is frozen
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        config = self.budget.for_kind(ctx.kind)
        record = train(student, training_batches(ctx, config),
                       distillation_loss(student, teacher, self.temperature, self.alpha), config,
                       f"{ctx.model_id}: distill {len(kept)}-layer student")
        student.save_pretrained(out)
        write_record(out, "distill", {"kept_blocks": kept, "teacher_blocks": len(block_list(teacher)[1]),
                                      "temperature": self.temperature, "alpha": self.alpha, **record})
