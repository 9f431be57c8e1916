"""Low-rank factorization: each block Linear W (out x in) becomes two thin ones, U_r S_r^1/2 and S_r^1/2 V_r.

The rank of each layer is the smallest that keeps ``energy`` of its squared singular values
(rounded up to a multiple of 8). A layer whose factors would not be smaller than W stays dense:
trained transformer weights are often nearly full-rank, and the build record says how many
layers were factorized and at which ranks. An optional recovery fine-tune follows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from compresslab.methods.base import Method, StageContext
from compresslab.methods.training import recovery_finetune, write_record
from compresslab.models.finetune import FinetuneConfig, TrainBudget
from compresslab.models.loading import load_pretrained
from compresslab.models.structure import LowRankLinear, block_linears, lowrank_entry, replace_module, save_structured

RANK_MULTIPLE = 8

DEFAULT_RECOVERY = TrainBudget(
    classifier=FinetuneConfig(max_steps=200, batch_size=32, learning_rate=1e-4),
    causal_lm=FinetuneConfig(max_steps=80, batch_size=4, max_length=256, learning_rate=5e-5),
)


def choose_rank(singular_values: torch.Tensor, energy: float, multiple: int = RANK_MULTIPLE) -> int:
    """Smallest rank whose singular values hold ``energy`` of the total squared, rounded up to ``multiple``."""
    squared = singular_values.double().pow(2)
    cumulative = squared.cumsum(0) / squared.sum()
    rank = int((cumulative < energy - 1e-12).sum()) + 1
    return min(len(singular_values), math.ceil(rank / multiple) * multiple)


def factorize(linear: nn.Linear, rank: int, svd: tuple[torch.Tensor, ...]) -> LowRankLinear:
    """``svd`` is ``torch.linalg.svd`` of the weight (in float64), computed once by the caller."""
    u, s, vh = svd
    root = s[:rank].sqrt()
    low = LowRankLinear(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
    with torch.no_grad():
        low.down.weight.copy_((root[:, None] * vh[:rank]).to(linear.weight.dtype))
        low.up.weight.copy_((u[:, :rank] * root).to(linear.weight.dtype))
        if linear.bias is not None:
            low.up.bias.copy_(linear.bias.detach())
    return low


def saves_weights(rank: int, linear: nn.Linear) -> bool:
    return rank * (linear.in_features + linear.out_features) < linear.in_features * linear.out_features


@dataclass(frozen=True)
class LowRankSVD(Method):
    energy: float = 0.6
    recover: bool = True
    budget: TrainBudget = field(default_factory=lambda: DEFAULT_RECOVERY)
    family: ClassVar[str] = "lowrank"

    def __post_init__(self) -> None:
        if not 0 < self.energy < 1:
            raise ValueError(f"LowRankSVD.energy must be in (0, 1), got {self.energy}")

    @property
    def uses_task_data(self) -> bool:  # type: ignore[override]  # recovery data enters the cache key
        return self.recover

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        model = load_pretrained(src, ctx.kind, dtype=torch.float32)
        ranks: dict[str, list[int]] = {}
        for name, linear in block_linears(model).items():
            svd = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
            rank = choose_rank(svd[1], self.energy)
            ranks[name] = [rank, min(linear.in_features, linear.out_features)]
            if saves_weights(rank, linear):
                replace_module(model, name, factorize(linear, rank, svd))
        record: dict = {"energy": self.energy, "ranks": ranks}
        if self.recover:
            record["recovery"] = recovery_finetune(model, ctx, self.budget.for_kind(ctx.kind), "low-rank: recover")
        structure = {name: lowrank_entry(m) for name, m in model.named_modules() if isinstance(m, LowRankLinear)}
        save_structured(model, out, structure)
        record["factorized"] = f"{len(structure)} of {len(ranks)} block Linear layers"
        write_record(out, "lowrank", record)
