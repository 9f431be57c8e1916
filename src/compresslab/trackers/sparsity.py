"""Measured sparsity (fraction of exactly-zero weights) and parameter count of a loaded model."""

from __future__ import annotations

import torch
from torch import nn

from compresslab.models.structure import block_linears


def _dense_weight(module: nn.Linear) -> torch.Tensor | None:
    """The weight as a plain tensor of its logical shape, or None where a packed format hides it.

    torchao's quantized weights dequantize (symmetric int8 keeps an exact zero at 0); packed
    4-bit formats (bitsandbytes nf4) do not store one value per weight and are not measurable.
    """
    weight = module.weight
    if hasattr(weight, "dequantize"):
        weight = weight.dequantize()
    if weight.numel() != module.in_features * module.out_features:
        return None
    return weight


def block_sparsity(model: nn.Module) -> float | None:
    """Zeros among the weights of the transformer blocks' Linear layers (what pruning targets)."""
    zeros = total = 0
    with torch.no_grad():
        for module in block_linears(model).values():
            weight = _dense_weight(module)
            if weight is None:
                continue
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total if total else None


def parameter_count(model: nn.Module) -> int:
    """Logical parameters: a Linear-like module counts in x out (+ bias) whatever its storage
    (packed 4-bit, GPTQ buffers); tied tensors count once."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if not (isinstance(in_f, int) and isinstance(out_f, int)):
            continue
        weight = getattr(module, "weight", None)
        if weight is not None and id(weight) in seen:
            continue
        total += in_f * out_f
        for tensor in (weight, getattr(module, "bias", None)):
            if tensor is not None:
                seen.add(id(tensor))
        bias = getattr(module, "bias", None)
        if bias is not None:
            total += bias.numel()
    return total + sum(p.numel() for p in model.parameters() if id(p) not in seen)

