"""The task protocol: data with a fixed held-out split, an evaluator, and the timed input."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

TaskKind = Literal["classification", "lm"]


class Runner(Protocol):
    """Anything that maps tokenized inputs to logits: eager PyTorch now, other runtimes later."""

    device: str
    tokenizer: Any

    def logits(self, inputs: dict[str, torch.Tensor], keep_last: int | None = None) -> torch.Tensor:
        """Logits for every position, or only the last ``keep_last`` positions of a causal LM."""


@dataclass
class TaskResult:
    metrics: dict[str, float]
    # Logits over a fixed slice of the eval data, to compare against the baseline (fidelity).
    reference_logits: torch.Tensor | None = field(default=None, repr=False)
    details: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    id: str
    kind: TaskKind
    metrics: tuple[str, ...]

    def check_available(self) -> None:
        """Raise TaskDataUnavailable (quickly) when the task's data cannot be had here."""

    def fingerprint(self) -> dict[str, Any]: ...

    def evaluate(self, runner: Runner) -> TaskResult: ...

    def latency_inputs(self, tokenizer, seq_len: int, batch_size: int = 1) -> dict[str, torch.Tensor]: ...
