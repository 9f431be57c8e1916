"""Greedy decoding over any runner's ``start``/``step`` loop (eager PyTorch or an exported graph)."""

from __future__ import annotations

import torch


def greedy(runner, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The ``new_tokens`` most likely continuations, one at a time through the runner's KV cache."""
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    logits, state = runner.start(input_ids)
    tokens = []
    for index in range(new_tokens):
        token = logits.argmax(-1, keepdim=True)
        tokens.append(token)
        if index + 1 < new_tokens:
            logits, state = runner.step(token, state)
    return torch.cat(tokens, dim=1)
