"""Language-model tasks: held-out perplexity and zero-shot sentiment by label log-likelihood."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from compresslab.assets import AssetUnavailable
from compresslab.models.spec import ModelUnavailable
from compresslab.tasks import metrics, tweets, wiki
from compresslab.tasks.base import Runner, TaskResult


def _require(load):
    try:
        return load()
    except AssetUnavailable as err:
        raise ModelUnavailable(str(err)) from err


_HELD_OUT_IDS: dict[tuple[str, int, int], torch.Tensor] = {}


def _held_out_ids(tokenizer, n_tokens: int) -> torch.Tensor:
    """The first n_tokens of the held-out articles; tokenizing 0.5M characters once per tokenizer."""
    key = (tokenizer.name_or_path, len(tokenizer), n_tokens)
    if key not in _HELD_OUT_IDS:
        text = "\n\n".join(wiki.load_wiki().held_out)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        if len(ids) < n_tokens:
            raise ValueError(f"held-out text has {len(ids)} tokens, fewer than the {n_tokens} the task needs")
        _HELD_OUT_IDS[key] = ids[:n_tokens]
    return _HELD_OUT_IDS[key]


CALIBRATION_CHARS = 2000  # about 450 SmolLM2 tokens of English prose


@dataclass(frozen=True)
class WikiPerplexity:
    """Perplexity over a fixed token budget of held-out Wikipedia text, in fixed non-overlapping windows."""

    id: str = "wiki-perplexity"
    kind: str = "lm"
    metrics: tuple[str, ...] = ("perplexity",)
    window: int = 512
    n_windows: int = 16
    batch_size: int = 4

    def check_available(self) -> None:
        _require(wiki.load_wiki)

    def fingerprint(self) -> dict[str, Any]:
        return {"task": self.id, "data_sha256": _require(wiki.load_wiki).source_sha256,
                "window": self.window, "n_windows": self.n_windows}

    def windows(self, tokenizer) -> torch.Tensor:
        ids = _held_out_ids(tokenizer, self.window * self.n_windows)
        return ids.view(self.n_windows, self.window)

    def evaluate(self, runner: Runner) -> TaskResult:
        windows = self.windows(runner.tokenizer)
        total_nll, n_scored, reference = 0.0, 0, None
        for start in range(0, len(windows), self.batch_size):
            ids = windows[start : start + self.batch_size]
            logits = runner.logits({"input_ids": ids, "attention_mask": torch.ones_like(ids)}).float().cpu()
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                  reduction="sum")
            total_nll += nll.item()
            n_scored += ids[:, 1:].numel()
            if reference is None:
                reference = logits[0]  # first window: enough positions for fidelity, bounded memory
        return TaskResult({"perplexity": metrics.perplexity(total_nll, n_scored)}, reference_logits=reference,
                          details={"scored_tokens": n_scored})

    def latency_inputs(self, tokenizer, seq_len: int, batch_size: int = 1) -> dict[str, torch.Tensor]:
        ids = self.windows(tokenizer)[:batch_size, :seq_len]
        return {"input_ids": ids.clone(), "attention_mask": torch.ones_like(ids)}

    def calibration_texts(self, n: int, chars: int = CALIBRATION_CHARS) -> list[str]:
        """n chunks of training-part articles (disjoint from the held-out perplexity text)."""
        chunks = [article[start : start + chars] for article in _require(wiki.load_wiki).train
                  for start in range(0, len(article) - chars + 1, chars)]
        if len(chunks) < n:
            raise ValueError(f"only {len(chunks)} calibration chunks of {chars} characters, {n} requested")
        return chunks[:n]


ZERO_SHOT_PROMPT = (
    "Classify the sentiment of the tweet as negative, neutral or positive.\n"
    "Tweet: {text}\n"
    "Sentiment:"
)


@dataclass(frozen=True)
class ZeroShotSentiment:
    """Tweet sentiment with no training: the label whose tokens are most likely after a fixed prompt."""

    id: str = "tweet-sentiment-zeroshot"
    kind: str = "lm"
    metrics: tuple[str, ...] = ("zeroshot_accuracy",)
    n_examples: int = 150
    batch_size: int = 24

    def check_available(self) -> None:
        _require(tweets.load_splits)

    def fingerprint(self) -> dict[str, Any]:
        return {"task": self.id, "data": _require(tweets.load_splits).fingerprint(), "prompt": ZERO_SHOT_PROMPT,
                "n_examples": self.n_examples}

    def _prompts(self, tokenizer) -> list[list[int]]:
        return [tokenizer(ZERO_SHOT_PROMPT.format(text=e.text), add_special_tokens=False)["input_ids"]
                for e in tweets.load_splits().test[: self.n_examples]]

    def _forward_last(self, runner: Runner, sequences: list[list[int]], keep: int) -> torch.Tensor:
        """Log-probs at the last ``keep`` positions of each sequence, batched with left padding
        so only those positions pay for the (vocabulary-wide, expensive) output projection."""
        pad = runner.tokenizer.pad_token_id
        chunks = []
        for start in range(0, len(sequences), self.batch_size):
            batch = sequences[start : start + self.batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in batch])
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in batch])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = runner.logits({"input_ids": ids, "attention_mask": mask, "position_ids": positions},
                                   keep_last=keep)
            chunks.append(F.log_softmax(logits.float().cpu(), -1))
        return torch.cat(chunks)

    def label_scores(self, runner: Runner) -> torch.Tensor:
        """[examples, labels] summed log-likelihood of each label's tokens after the prompt."""
        labels = [runner.tokenizer(" " + name, add_special_tokens=False)["input_ids"] for name in tweets.LABELS]
        prompts = self._prompts(runner.tokenizer)
        if all(len(ids) == 1 for ids in labels):
            # One forward per prompt: every label is read off the same next-token distribution.
            logprobs = self._forward_last(runner, prompts, keep=1)[:, -1]
            return logprobs[:, [ids[0] for ids in labels]]
        # Multi-token labels: a forward per (prompt, label); position p predicts token p + 1.
        keep = max(map(len, labels))
        sequences = [prompt + ids[:-1] for prompt in prompts for ids in labels]
        logprobs = self._forward_last(runner, sequences, keep=keep)
        scores = [logprobs[row, keep - len(ids):, ids].diagonal().sum()
                  for row, ids in enumerate(labels * len(prompts))]
        return torch.stack(scores).view(len(prompts), len(labels))

    def evaluate(self, runner: Runner) -> TaskResult:
        scores = self.label_scores(runner)
        target = torch.tensor([e.label for e in tweets.load_splits().test[: self.n_examples]])
        predictions = scores.argmax(-1)
        share = torch.bincount(predictions, minlength=len(tweets.LABELS)).float() / len(predictions)
        return TaskResult({"zeroshot_accuracy": metrics.accuracy(predictions, target)}, reference_logits=scores,
                          details={"predicted_label_share": dict(zip(tweets.LABELS, share.tolist()))})

    def latency_inputs(self, tokenizer, seq_len: int, batch_size: int = 1) -> dict[str, torch.Tensor]:
        return WikiPerplexity().latency_inputs(tokenizer, seq_len, batch_size)
