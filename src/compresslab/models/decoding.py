"""Greedy decoding over any runner's ``start``/``step`` loop (eager PyTorch or an exported graph)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def greedy(runner, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The ``new_tokens`` most likely continuations, one at a time through the runner's KV cache."""
    return timed_greedy(runner, input_ids, new_tokens)[0]


def timed_greedy(runner, input_ids: torch.Tensor, new_tokens: int,
                 sync: Callable[[], None] = lambda: None) -> tuple[torch.Tensor, float]:
    """:func:`greedy`'s tokens and the seconds after the prefill (the ``new_tokens - 1`` steps)."""
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    logits, state = runner.start(input_ids)
    sync()
    began = time.perf_counter()
    tokens = []
    for index in range(new_tokens):
        token = logits.argmax(-1, keepdim=True)
        tokens.append(token)
        if index + 1 < new_tokens:
            logits, state = runner.step(token, state)
    sync()
    return torch.cat(tokens, dim=1), time.perf_counter() - began
