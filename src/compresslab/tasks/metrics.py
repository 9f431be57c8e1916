"""Task metrics, computed from predictions with plain torch (no scikit-learn dependency), and the
one table of what the suite knows about each metric.

Floors, compare, the report tables and the Pareto plots read a metric's direction, label and range
from ``METRICS`` only: a new metric is one entry here. A metric the table does not know is never
gated or ranked on a guessed direction: ``lookup`` raises a KeyError naming the known ones (a
user's task that emits a new metric needs its entry, or its first run fails at the recovery
ratio). Only display falls back: ``label`` shows an unknown metric of a saved run by its name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads on first use: compare and report read the table without it
    import torch

FRACTION = (0.0, 1.0)


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    label: str  # column label of the report and compare tables
    title: str  # axis title of the Pareto plots
    # the values it can take: a floor outside them is a typo that could never (or always) hold.
    # FRACTION marks a 0..1 fraction: compare's ``pt`` rules and point changes apply to it
    value_range: tuple[float, float] = FRACTION
    unit: str | None = None  # of its values; None for a fraction or a pure number such as perplexity

    def __post_init__(self):
        low, high = self.value_range
        if not low < high:
            raise ValueError(f"metric {self.name!r}: value_range must be (low, high) with low < high, "
                             f"got {self.value_range}")
        if not self.label or not self.title:
            raise ValueError(f"metric {self.name!r} needs a label and a title")

    @property
    def direction(self) -> int:
        """+1 higher is better, -1 lower is better."""
        return 1 if self.higher_is_better else -1

    @property
    def fraction(self) -> bool:
        return self.value_range == FRACTION


# Every metric a task emits (classification.score, TweetSentiment's hard_*, multilabel_f1, jaccard_accuracy, lm.py).
METRICS: dict[str, Metric] = {metric.name: metric for metric in (
    Metric("accuracy", True, "acc", "accuracy"),
    Metric("macro_f1", True, "F1", "macro-F1"),
    Metric("hard_accuracy", True, "hard acc", "accuracy, hard split"),  # tweet-sentiment's low-confidence split
    Metric("hard_macro_f1", True, "hard F1", "macro-F1, hard split"),
    Metric("micro_f1", True, "microF1", "micro-F1"),  # multi-label tasks
    Metric("jaccard", True, "Jacc", "Jaccard accuracy"),  # multi-label: SemEval-2018 E-c's official metric
    Metric("fewshot_accuracy", True, "6-shot acc", "few-shot accuracy"),
    Metric("fewshot_macro_f1", True, "6-shot F1", "few-shot macro-F1"),
    Metric("perplexity", False, "ppl", "perplexity (lower is better)", value_range=(1.0, math.inf)),
)}


def lookup(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))} (a new metric needs "
                       "its entry in compresslab.tasks.metrics.METRICS)") from None


def direction(name: str) -> int:
    return lookup(name).direction


def label(name: str) -> str:
    """The table label; a metric the table does not know (a saved run from elsewhere) by its name."""
    known = METRICS.get(name)
    return known.label if known else name


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    if pred.shape != target.shape or pred.numel() == 0:
        raise ValueError(f"accuracy needs equal, non-empty shapes; got {tuple(pred.shape)} and {tuple(target.shape)}")
    return (pred == target).float().mean().item()


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    import torch

    denom = 2 * tp + fp + fn
    # A class absent from both predictions and targets has no defined F1; count it as 0
    # like scikit-learn's zero_division=0, so missing a class is never rewarded.
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))


def macro_f1(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> float:
    """Unweighted mean of per-class F1 for single-label multi-class predictions."""
    import torch

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


def jaccard_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over samples of |predicted & gold| / |predicted | gold| for ``[samples, labels]``
    indicator matrices: the "Jaccard accuracy" SemEval-2018 E-c ranks systems by. A sample with
    no gold and no predicted label counts 1: predicting nothing for a neutral tweet is right."""
    import torch

    if pred.shape != target.shape or pred.dim() != 2 or pred.shape[0] == 0:
        raise ValueError(f"need two non-empty [samples, labels] matrices; got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    pred, target = pred.bool(), target.bool()
    both = (pred & target).sum(1).double()
    either = (pred | target).sum(1).double()
    return torch.where(either > 0, both / either.clamp(min=1), torch.ones_like(both)).mean().item()


def perplexity(total_nll: float, n_tokens: int) -> float:
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(total_nll / n_tokens)
