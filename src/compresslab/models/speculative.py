"""Speculative (assisted) greedy decoding: a small draft proposes tokens, the target verifies them.

Each round the draft proposes up to ``k`` tokens greedily, one forward each through its own KV
cache; the target runs one forward over its pending token and the ``k`` proposals, keeps the longest
prefix of proposals that agrees with its own argmax, then appends its own next token (the correction,
or a bonus token when all ``k`` agreed). Both KV caches are cropped back to the tokens kept. The
output is the target's plain greedy output token for token: a check (``check_exact``) compares
them on the same prompts, and a case where they differ fails (fixture.py, floors.check_exact).

An artifact is speculative when it carries :data:`SPECULATIVE_FILE`: the target checkpoint sits at its
top level (so runner.load_runner, and every tracker, sees the target), the draft checkpoint in a
sub-directory (methods/speculative.py writes both); :func:`load_case_runner` loads the pair.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compresslab.models.decoding import timed_greedy
from compresslab.models.runner import load_runner
from compresslab.models.spec import ModelKind

SPECULATIVE_FILE = "speculative.json"  # {"draft": sub-directory, "num_draft_tokens": k, ...}

# (draft proposals, the target's argmax after the pending token and after each proposal) -> how many
# proposals to keep. The correct rule is longest_agreeing_prefix; tests swap in broken ones.
Verifier = Callable[[list[int], list[int]], int]


def check_num_draft_tokens(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"num_draft_tokens must be an integer >= 1 (tokens the draft proposes per round), got {k!r}")
    return k


def longest_agreeing_prefix(proposed: list[int], target: list[int]) -> int:
    """How many proposals, from the first, equal the target's own greedy choice at their position."""
    kept = 0
    while kept < len(proposed) and proposed[kept] == target[kept]:
        kept += 1
    return kept


def forward(runner, ids: list[int], cache: Any, keep: int) -> tuple[torch.Tensor, Any]:
    """The logits of the last ``keep`` of ``ids`` (batch 1, shape (keep, vocab)) fed after ``cache``."""
    tensor = torch.tensor([ids], device=runner.device)
    with torch.inference_mode() if runner.inference_mode else torch.no_grad():
        out = runner.model(input_ids=tensor, past_key_values=cache, use_cache=True, logits_to_keep=keep)
    return out.logits[0, -keep:], out.past_key_values


def cache_length(cache: Any) -> int:
    return 0 if cache is None else int(cache.get_seq_length())


def rollback(cache: Any, length: int) -> None:
    """Crop a transformers KV cache to its first ``length`` positions (no-op when it holds no more)."""
    extra = cache_length(cache) - length
    if extra > 0:
        cache.crop(-extra)  # transformers >= 5: a negative count removes that many positions from the end


def propose(draft, cache: Any, sequence: list[int], n: int) -> tuple[list[int], Any]:
    """``n`` greedy tokens of the draft after ``sequence``; its first forward feeds every token of the
    sequence its cache lacks (the whole prompt on the first round: the draft's prefill)."""
    logits, cache = forward(draft, sequence[cache_length(cache):], cache, 1)
    proposals = [int(logits[-1].argmax())]
    while len(proposals) < n:
        logits, cache = forward(draft, proposals[-1:], cache, 1)
        proposals.append(int(logits[-1].argmax()))
    return proposals, cache


@dataclass
class SpeculativeRun:
    """One prompt's speculative generation."""

    tokens: list[int]  # the new tokens, the first of them from the target's prefill
    proposed: int = 0  # draft tokens proposed
    accepted: int = 0  # of them kept
    target_forwards: int = 1  # the prefill included, as plain greedy's count is its number of tokens
    decode_s: float = 0.0  # everything after the target's prefill (the draft's prefill included)


def speculative_greedy(runner: SpeculativeRunner, input_ids: torch.Tensor, new_tokens: int,
                       sync: Callable[[], None] = lambda: None) -> SpeculativeRun:
    """``new_tokens`` tokens after ``input_ids`` (batch 1) by draft-and-verify rounds."""
    if new_tokens < 1 or input_ids.shape[0] != 1:
        raise ValueError(f"one prompt and new_tokens >= 1, got {input_ids.shape[0]} prompts and {new_tokens}")
    target, draft, k = runner.target, runner.draft, check_num_draft_tokens(runner.num_draft_tokens)
    sequence = input_ids[0].tolist()
    logits, target_cache = forward(target, sequence, None, 1)
    start = len(sequence)
    sequence.append(int(logits[-1].argmax()))
    run, draft_cache = SpeculativeRun([]), None
    sync()
    began = time.perf_counter()
    while len(sequence) - start < new_tokens:
        n = min(k, new_tokens - (len(sequence) - start) - 1)  # never propose past the last token wanted
        proposals: list[int] = []
        if n > 0:
            proposals, draft_cache = propose(draft, draft_cache, sequence, n)
        logits, target_cache = forward(target, sequence[-1:] + proposals, target_cache, n + 1)
        choices = logits.argmax(-1).tolist()
        kept = runner.verify(proposals, choices)
        sequence += proposals[:kept] + [choices[kept]]
        rollback(target_cache, len(sequence) - 1)  # the last token is pending: fed next round
        if draft_cache is not None:
            rollback(draft_cache, len(sequence) - 1)
        run.proposed, run.accepted, run.target_forwards = run.proposed + n, run.accepted + kept, run.target_forwards + 1
    sync()
    run.decode_s = time.perf_counter() - began
    run.tokens = sequence[start:]
    return run


@dataclass
class SpeculativeRunner:
    """The target's runner (what tasks, timing and memory see) with its draft for speculative decoding."""

    target: Any  # runner.TorchRunner
    draft: Any  # runner.TorchRunner
    num_draft_tokens: int
    verify: Verifier = field(default=longest_agreeing_prefix)

    def __post_init__(self) -> None:
        check_num_draft_tokens(self.num_draft_tokens)

    # the target's runner API, unchanged: perplexity and the batch-1 timing are the target's
    def logits(self, inputs: dict[str, torch.Tensor], keep_last: int | None = None) -> torch.Tensor:
        return self.target.logits(inputs, keep_last)

    def start(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return self.target.start(input_ids)

    def step(self, token_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self.target.step(token_ids, state)

    @property
    def model(self) -> torch.nn.Module:
        return self.target.model

    @property
    def tokenizer(self) -> Any:
        return self.target.tokenizer

    @property
    def device(self) -> str:
        return self.target.device

    @property
    def kind(self) -> ModelKind:
        return self.target.kind

    @property
    def is_causal_lm(self) -> bool:
        return self.target.is_causal_lm

    @property
    def settings(self) -> dict[str, Any]:
        draft_layers = getattr(self.draft.model.config, "num_hidden_layers", None)
        return {**self.target.settings, "decoding": "speculative", "num_draft_tokens": self.num_draft_tokens,
                "draft_layers": draft_layers}

    def n_params(self) -> int:
        return self.target.n_params()


def is_speculative(artifact: Path) -> bool:
    return (Path(artifact) / SPECULATIVE_FILE).is_file()


def write_marker(out: Path, draft_dir: str, num_draft_tokens: int, **details: Any) -> None:
    (Path(out) / SPECULATIVE_FILE).write_text(json.dumps(
        {"draft": draft_dir, "num_draft_tokens": check_num_draft_tokens(num_draft_tokens), **details}, indent=1))


def load_case_runner(artifact: Path, base: Path, kind: ModelKind, device: str) -> Any:
    """runner.load_runner's runner of ``artifact``; for a speculative artifact, that runner (the target's)
    with its draft's. What a case measures and its memory probe loads (cases.py, trackers/memory_probe.py)."""
    runner = load_runner(artifact, base, kind, device)
    if not is_speculative(artifact):
        return runner
    marker = json.loads((Path(artifact) / SPECULATIVE_FILE).read_text())
    draft = load_runner(Path(artifact) / marker["draft"], base, kind, device)
    if not hasattr(runner, "inference_mode") or not hasattr(draft, "inference_mode"):
        raise ValueError(f"{artifact}: speculative decoding runs a target and draft on eager PyTorch")
    return SpeculativeRunner(runner, draft, marker["num_draft_tokens"])


# --- the exactness check -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeculativeCheck:
    """Speculative against plain greedy decoding of the target on the same prompts and token count."""

    prompts: int
    new_tokens: int
    num_draft_tokens: int
    proposed: int
    accepted: int
    target_forwards: int
    mismatch: str | None  # the first difference, None when every prompt's output is the same

    @property
    def exact(self) -> bool:
        return self.mismatch is None

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else float("nan")

    @property
    def tokens_per_target_forward(self) -> float:
        return self.prompts * self.new_tokens / self.target_forwards


def first_difference(speculative: list[int], greedy: list[int]) -> int | None:
    """The first position where the two outputs differ (or their lengths do), None when equal."""
    if speculative == greedy:
        return None
    return next((i for i, (a, b) in enumerate(zip(speculative, greedy)) if a != b), min(len(speculative), len(greedy)))


def describe_mismatch(prompt: int, speculative: list[int], greedy: list[int]) -> str | None:
    at = first_difference(speculative, greedy)
    if at is None:
        return None
    got = speculative[at] if at < len(speculative) else "nothing"
    want = greedy[at] if at < len(greedy) else "nothing"
    return f"prompt {prompt}, new token {at}: speculative gave {got}, plain greedy {want}"


def check_exact(runner: SpeculativeRunner, prompts: torch.Tensor, new_tokens: int) -> SpeculativeCheck:
    """Each row of ``prompts`` decoded both ways, untimed: the outputs and the draft's acceptance."""
    runs, mismatch = [], None
    for row in range(prompts.shape[0]):
        ids = prompts[row:row + 1]
        run = speculative_greedy(runner, ids, new_tokens)
        greedy, _ = timed_greedy(runner.target, ids, new_tokens)
        mismatch = mismatch or describe_mismatch(row, run.tokens, greedy[0].tolist())
        runs.append(run)
    return SpeculativeCheck(len(runs), new_tokens, runner.num_draft_tokens, sum(r.proposed for r in runs),
                            sum(r.accepted for r in runs), sum(r.target_forwards for r in runs), mismatch)
