"""Magnitude pruning of the transformer blocks' Linear weights: per layer, global, 2:4, iterative.

Masks come from ``torch.nn.utils.prune`` (L1 magnitude) or, for 2:4, the two largest of every
four consecutive input weights. Iterative pruning raises sparsity over rounds on the cubic
schedule of Zhu & Gupta (2017) with a recovery fine-tune after each round, masks held during
training. Masks are made permanent before saving: the checkpoint holds plain dense weights with
zeros (no weight_orig/weight_mask pairs), so it is exactly as large as the dense model; the
zstd size shows what the zeros save in transfer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch.nn.utils import prune

from compresslab.methods.base import Method, StageContext
from compresslab.methods.training import recovery_finetune, write_record
from compresslab.models.finetune import TrainBudget
from compresslab.models.loading import load_pretrained
from compresslab.models.runner import SPARSITY_FILE
from compresslab.models.structure import block_linears

SCOPES = ("layer", "global")
PATTERNS = ("unstructured", "2:4")


def semi_structured_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest-magnitude weights of every 4 consecutive weights along the input dim."""
    out_features, in_features = weight.shape
    if in_features % 4:
        raise ValueError(f"2:4 sparsity needs in_features divisible by 4, got {in_features}")
    groups = weight.detach().abs().reshape(out_features, in_features // 4, 4)
    keep = groups.topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(out_features, in_features)


def mark_semi_structured(out: Path, module_names) -> None:
    """Name the 2:4 layers beside the checkpoint, so a GPU runner can use sparse tensor cores."""
    (Path(out) / SPARSITY_FILE).write_text(json.dumps({"pattern": "2:4", "modules": sorted(module_names)}))


def cubic_schedule(final: float, round_: int, rounds: int) -> float:
    """Sparsity after round ``round_`` of ``rounds`` (1-based): fast early, gentle near the end."""
    return final * (1 - (1 - round_ / rounds) ** 3)


def current_sparsity(modules) -> float:
    zeros = sum(int((m.weight == 0).sum()) for m in modules)
    return zeros / sum(m.weight.numel() for m in modules)


def prune_to(modules: list, target: float, scope: str, pattern: str) -> None:
    """Add masks so the modules reach ``target`` sparsity (masks compose with earlier rounds)."""
    if pattern == "2:4":
        for module in modules:
            prune.custom_from_mask(module, "weight", semi_structured_mask(module.weight))
        return
    done = current_sparsity(modules)
    if target <= done:
        return
    amount = (target - done) / (1 - done)  # torch's amount is a fraction of the still-unpruned weights
    if scope == "global":
        prune.global_unstructured([(m, "weight") for m in modules], prune.L1Unstructured, amount=amount)
    else:
        for module in modules:
            prune.l1_unstructured(module, "weight", amount=amount)


@dataclass(frozen=True)
class MagnitudePrune(Method):
    """Zero the smallest-magnitude weights of each block Linear (``layer``) or of all of them at
    once (``global``); ``rounds`` > 1 prunes iteratively with a recovery fine-tune per round."""

    sparsity: float = 0.5
    scope: str = "layer"
    pattern: str = "unstructured"
    rounds: int = 1
    recovery: TrainBudget | None = None  # a fine-tune after each round; None: one-shot
    family: ClassVar[str] = "prune"

    def __post_init__(self) -> None:
        if not 0 < self.sparsity < 1:
            raise ValueError(f"MagnitudePrune.sparsity must be in (0, 1), got {self.sparsity}")
        if self.scope not in SCOPES:
            raise ValueError(f"MagnitudePrune.scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"MagnitudePrune.pattern must be one of {', '.join(PATTERNS)}, got {self.pattern!r}")
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ValueError(f"2:4 sparsity is 0.5 by definition, got sparsity={self.sparsity}")
        if self.rounds < 1 or (self.rounds > 1 and self.recovery is None):
            raise ValueError("MagnitudePrune.rounds must be >= 1, and iterative pruning (rounds > 1) needs a "
                             "recovery fine-tune config")

    @property
    def uses_task_data(self) -> bool:  # type: ignore[override]  # training data enters the cache key
        return self.recovery is not None

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        model = load_pretrained(src, ctx.kind, dtype=torch.float32)
        named = block_linears(model)
        modules = list(named.values())
        record = {"rounds": []}
        for round_ in range(1, self.rounds + 1):
            target = 0.5 if self.pattern == "2:4" else cubic_schedule(self.sparsity, round_, self.rounds)
            prune_to(modules, target, self.scope, self.pattern)
            entry = {"round": round_, "target": target}
            if self.recovery is not None:
                entry["recovery"] = recovery_finetune(model, ctx, self.recovery.for_kind(ctx.kind),
                                                      f"{ctx.model_id}: prune round {round_}/{self.rounds}: recover")
            record["rounds"].append(entry)
        for module in modules:
            prune.remove(module, "weight")  # weight = weight_orig * mask, permanently
        record["sparsity"] = current_sparsity(modules)
        model.save_pretrained(out)
        if self.pattern == "2:4":
            mark_semi_structured(out, named)
        write_record(out, "prune", record)
