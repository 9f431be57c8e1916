"""Fidelity of a compressed model to its baseline: top-1 agreement and KL divergence of outputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Fidelity:
    top1_agreement: float
    kl_div: float  # mean KL(baseline || compressed) per position, in nats



def compare_logits(baseline: torch.Tensor, compressed: torch.Tensor) -> Fidelity:
    """Both tensors are ``[..., classes]`` logits over the same inputs."""
    if baseline.shape != compressed.shape:
        raise ValueError(f"logit shapes differ: baseline {tuple(baseline.shape)} vs {tuple(compressed.shape)}")
    base = baseline.float().reshape(-1, baseline.shape[-1])
    comp = compressed.float().reshape(-1, compressed.shape[-1])
    agreement = (base.argmax(-1) == comp.argmax(-1)).float().mean().item()
    kl = F.kl_div(F.log_softmax(comp, -1), F.log_softmax(base, -1), log_target=True, reduction="batchmean")
    return Fidelity(top1_agreement=agreement, kl_div=max(kl.item(), 0.0))
