"""Structured pruning of a BERT-style encoder: whole attention heads and FFN neurons are removed.

Unlike zeros in dense weights, this makes every block's matrices smaller, so the checkpoint
shrinks and dense kernels run faster. The same fraction is removed in every block (uniform
shapes run best), ranked within the block: a head by the squared norm of its query, key and
value rows and its output-projection columns, an FFN neuron by the norm of its input row times
its output column. A short recovery fine-tune, distilled from the unpruned model, follows.
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
from compresslab.models.finetune import FinetuneConfig, train
from compresslab.models.loading import load_pretrained
from compresslab.models.structure import block_linears, block_list, linear_entry, save_structured

CHANNEL_MULTIPLE = 8  # kept FFN widths are multiples of 8: GEMM kernels prefer them
# the recovery fine-tune of a pruned classifier: about 0.6 s a step (student and teacher) on 2 quiet
# cores; the default safety limit is 30x that
RECOVERY = FinetuneConfig(max_steps=200, batch_size=32, learning_rate=1e-4)


def slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear with only the given output rows and/or input columns of ``linear``."""
    weight, bias = linear.weight.detach(), linear.bias
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach())
    return new


def top_sorted(scores: torch.Tensor, keep: int) -> torch.Tensor:
    return scores.topk(keep).indices.sort().values


def head_scores(attention, output_dense: nn.Linear, n_heads: int) -> torch.Tensor:
    def per_head_rows(linear):
        return linear.weight.detach().pow(2).reshape(n_heads, -1).sum(-1)

    cols = output_dense.weight.detach().pow(2).reshape(output_dense.out_features, n_heads, -1).sum((0, 2))
    return per_head_rows(attention.query) + per_head_rows(attention.key) + per_head_rows(attention.value) + cols


def prune_bert_block(block, n_heads: int, keep_heads: int, keep_neurons: int) -> dict[str, int]:
    attention, output = block.attention.self, block.attention.output.dense
    head_dim = attention.query.out_features // n_heads
    heads = top_sorted(head_scores(attention, output, n_heads), keep_heads)
    rows = (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    for name in ("query", "key", "value"):
        setattr(attention, name, slice_linear(getattr(attention, name), rows=rows))
    block.attention.output.dense = slice_linear(output, cols=rows)
    up, down = block.intermediate.dense, block.output.dense
    neurons = top_sorted(up.weight.detach().norm(dim=1) * down.weight.detach().norm(dim=0), keep_neurons)
    block.intermediate.dense = slice_linear(up, rows=neurons)
    block.output.dense = slice_linear(down, cols=neurons)
    return {"heads": keep_heads, "ffn": keep_neurons}


def kept_counts(n_heads: int, ffn: int, fraction: float) -> tuple[int, int]:
    keep_heads = max(1, n_heads - round(n_heads * fraction))
    keep_neurons = max(CHANNEL_MULTIPLE, round(ffn * (1 - fraction) / CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE)
    return keep_heads, keep_neurons


def distilled_recovery(student, teacher, ctx: StageContext, config: FinetuneConfig, temperature: float,
                       alpha: float, desc: str) -> dict[str, float]:
    """The pruned student's recovery: ``config``'s steps on the task's training data, distilled from
    the unpruned teacher (frozen here). Returns the training record."""
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return train(student, training_batches(ctx, config), distillation_loss(student, teacher, temperature, alpha),
                 config, desc)


@dataclass(frozen=True)
class StructuredPrune(Method):
    fraction: float = 0.3  # of the heads and of the FFN neurons of every block
    temperature: float = 2.0
    alpha: float = 0.5
    recovery: FinetuneConfig = field(default_factory=lambda: RECOVERY)
    family: ClassVar[str] = "prune-struct"
    uses_task_data: ClassVar[bool] = True  # the recovery fine-tune trains on the task's data
    kinds: ClassVar[tuple[str, ...]] = ("classifier",)

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"StructuredPrune.fraction must be in (0, 1), got {self.fraction}")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        teacher = load_pretrained(src, ctx.kind, dtype=torch.float32)
        model = copy.deepcopy(teacher)  # the pruned student; the teacher stays whole
        if not hasattr(block_list(model)[1][0], "attention"):
            raise ValueError(f"structured pruning supports BERT-style encoders, not {type(model).__name__}")
        n_heads, ffn = model.config.num_attention_heads, model.config.intermediate_size
        keep_heads, keep_neurons = kept_counts(n_heads, ffn, self.fraction)
        for block in block_list(model)[1]:
            prune_bert_block(block, n_heads, keep_heads, keep_neurons)
        record = distilled_recovery(model, teacher, ctx, self.recovery, self.temperature, self.alpha,
                                    f"{ctx.model_id}: structured prune: recover")
        save_structured(model, out, {name: linear_entry(m) for name, m in block_linears(model).items()})
        write_record(out, "prune_struct", {"heads": [n_heads, keep_heads], "ffn": [ffn, keep_neurons], **record})
