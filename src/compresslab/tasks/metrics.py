"""Task metrics, computed from predictions with plain torch (no scikit-learn dependency)."""

from __future__ import annotations

import math

import torch

# Direction of each metric the suite knows: +1 higher is better, -1 lower is better.
DIRECTIONS: dict[str, int] = {
    "accuracy": +1,
    "macro_f1": +1,
    "hard_accuracy": +1,  # tweet-sentiment on its lower-confidence split
    "hard_macro_f1": +1,
    "micro_f1": +1,
    "fewshot_accuracy": +1,
    "fewshot_macro_f1": +1,
    "perplexity": -1,
}


# The values each metric can take: a floor outside them is a typo that could never (or always) hold.
VALUE_RANGES: dict[str, tuple[float, float]] = {
    **{name: (0.0, 1.0) for name in DIRECTIONS if name != "perplexity"},
    "perplexity": (1.0, math.inf),
}


def direction(metric: str) -> int:
    try:
        return DIRECTIONS[metric]
    except KeyError:
        raise KeyError(f"unknown metric {metric!r}; known: {', '.join(sorted(DIRECTIONS))}") from None


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    if pred.shape != target.shape or pred.numel() == 0:
        raise ValueError(f"accuracy needs equal, non-empty shapes; got {tuple(pred.shape)} and {tuple(target.shape)}")
    return (pred == target).float().mean().item()


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    denom = 2 * tp + fp + fn
    # A class absent from both predictions and targets has no defined F1; count it as 0
    # like scikit-learn's zero_division=0, so missing a class is never rewarded.
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))


def macro_f1(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> float:
    """Unweighted mean of per-class F1 for single-label multi-class predictions."""
    pred_1h = torch.nn.functional.one_hot(pred.long(), n_classes).bool()
    target_1h = torch.nn.functional.one_hot(target.long(), n_classes).bool()
    return multilabel_f1(pred_1h, target_1h)["macro_f1"]


def multilabel_f1(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Micro and macro F1 for ``[samples, labels]`` boolean indicator matrices."""
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(f"need two [samples, labels] matrices; got {tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.bool(), target.bool()
    tp = (pred & target).sum(0).double()
    fp = (pred & ~target).sum(0).double()
    fn = (~pred & target).sum(0).double()
    micro = _f1(tp.sum(), fp.sum(), fn.sum()).item()
    return {"micro_f1": micro, "macro_f1": _f1(tp, fp, fn).mean().item()}


def perplexity(total_nll: float, n_tokens: int) -> float:
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(total_nll / n_tokens)
