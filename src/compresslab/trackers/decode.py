"""Decode latency of a causal LM: per-token time of greedy steps through the KV cache.

The prefill (the prompt) is timed by the main benchmark; here each round prefills untimed, then
times every single-token step, synchronizing the device before each clock read.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from compresslab.models.decoding import timed_greedy
from compresslab.models.speculative import describe_mismatch, speculative_greedy
from compresslab.trackers.latency import percentile, synchronizer


@dataclass(frozen=True)
class DecodeStats:
    step_s: tuple[float, ...]  # every timed step of every round
    round_s: tuple[float, ...]  # the whole decode loop of each round
    new_tokens: int
    prompt_tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / statistics.median(self.round_s)

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_s)

    def step_percentile(self, q: float) -> float:
        return percentile(self.step_s, q)


def time_decode(runner, prompt_ids: torch.Tensor, new_tokens: int = 16, device: str = "cpu", rounds: int = 5,
            warmup: int = 1) -> DecodeStats:
    if new_tokens < 1 or rounds < 1:
        raise ValueError(f"new_tokens and rounds must be >= 1, got {new_tokens} and {rounds}")
    sync = synchronizer(device)
    steps: list[float] = []
    loops: list[float] = []
    for round_index in range(warmup + rounds):
        logits, state = runner.start(prompt_ids)
        sync()
        timed: list[float] = []
        for _ in range(new_tokens):
            token = logits.argmax(-1, keepdim=True)
            start = time.perf_counter()
            logits, state = runner.step(token, state)
            sync()
            timed.append(time.perf_counter() - start)
        if round_index >= warmup:
            steps.extend(timed)
            loops.append(sum(timed))
    return DecodeStats(tuple(steps), tuple(loops), new_tokens, int(prompt_ids.shape[1]))


@dataclass(frozen=True)
class SpeculativeStats:
    """Speculative decoding of a few prompts against plain greedy decoding of its target on the same
    prompts and token count, timed in the same rounds; the seconds of a round are summed over the
    prompts, each timed after the target's prefill (the draft's prefill is in the speculative time)."""

    round_s: tuple[float, ...]  # speculative
    greedy_round_s: tuple[float, ...]  # the target alone
    new_tokens: int  # timed tokens per prompt (after the one the prefill gives)
    prompts: int
    prompt_tokens: int
    mismatch: str | None = None  # a timed round whose outputs differed (None: all the same)

    @property
    def tokens(self) -> int:
        return self.new_tokens * self.prompts

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / statistics.median(self.round_s)

    @property
    def greedy_tokens_per_s(self) -> float:
        return self.tokens / statistics.median(self.greedy_round_s)

    @property
    def median_token_s(self) -> float:
        return statistics.median(self.round_s) / self.tokens

    def token_percentile(self, q: float) -> float:
        return percentile(self.round_s, q) / self.tokens


def time_speculative(runner, prompts: torch.Tensor, new_tokens: int, device: str = "cpu", rounds: int = 3,
                     warmup: int = 1) -> SpeculativeStats:
    """``runner``: a models.speculative.SpeculativeRunner; each row of ``prompts`` is one prompt. Every
    round decodes every prompt plainly (the target) and then speculatively, ``new_tokens`` timed tokens each."""
    if new_tokens < 1 or rounds < 1:
        raise ValueError(f"new_tokens and rounds must be >= 1, got {new_tokens} and {rounds}")
    sync = synchronizer(device)
    speculative_s: list[float] = []
    greedy_s: list[float] = []
    mismatch = None
    for round_index in range(warmup + rounds):
        plain = spec = 0.0
        for row in range(prompts.shape[0]):
            ids = prompts[row:row + 1]
            tokens, seconds = timed_greedy(runner.target, ids, new_tokens + 1, sync)
            run = speculative_greedy(runner, ids, new_tokens + 1, sync)
            plain, spec = plain + seconds, spec + run.decode_s
            mismatch = mismatch or describe_mismatch(row, run.tokens, tokens[0].tolist())
        if round_index >= warmup:
            greedy_s.append(plain)
            speculative_s.append(spec)
    return SpeculativeStats(tuple(speculative_s), tuple(greedy_s), new_tokens, int(prompts.shape[0]),
                            int(prompts.shape[1]), mismatch)
