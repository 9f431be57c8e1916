"""Tiny real models for fast tests: built from config with the MiniLM tokenizer, trained a few steps."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compresslab.models.embedded import MINILM_WEIGHTS
from compresslab.models.loading import save_tokenizer
from compresslab.assets import locate
from compresslab.tasks import classification
from compresslab.tasks.base import TaskResult
from compresslab.tasks.tweets import Example

POSITIVE = ("good", "great", "love", "happy", "nice", "excellent")
NEGATIVE = ("bad", "awful", "hate", "sad", "terrible", "poor")
FILLER = ("the", "movie", "was", "really", "day", "food", "and", "it")


@functools.cache
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(locate(MINILM_WEIGHTS).parent)


def synthetic_examples(n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randrange(2)
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        out.append(Example(" ".join(words), label))
    return out


def calibration_texts(n: int) -> list[str]:
    """``n`` calibration texts of synthetic sentences, as a StageContext's ``calibration`` gives."""
    return [" ".join(e.text for e in synthetic_examples(40, seed=5 + i)) for i in range(n)]


def stage_context(src: Path, kind: str = "classifier"):
    """A StageContext on synthetic calibration and training data, for method tests on tiny models."""
    from compresslab.methods.base import StageContext

    return StageContext("tiny", kind, "cpu", src, calibration=calibration_texts,
                        training=lambda n: synthetic_examples(n, seed=3))


def tiny_bert_classifier(train_steps: int = 30, seed: int = 0, hidden_size: int = 64):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer().vocab_size, hidden_size=hidden_size, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=128, num_labels=2)
    model = BertForSequenceClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = synthetic_examples(32 * train_steps, seed)
    for step in range(train_steps):
        batch = data[step * 32 : (step + 1) * 32]
        inputs = tokenizer()([e.text for e in batch], padding=True, return_tensors="pt")
        loss = model(**inputs, labels=torch.tensor([e.label for e in batch])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def tiny_llama(train_steps: int = 20, seed: int = 0, hidden_size: int = 64, num_hidden_layers: int = 2,
               tie_word_embeddings: bool = True):
    """``train_steps=0, tie_word_embeddings=False``: an untrained decoder whose greedy output still varies
    with its context (a tied untrained one mostly repeats its input token)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tokenizer().vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_hidden_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=tie_word_embeddings,
                         pad_token_id=tokenizer().pad_token_id)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = synthetic_examples(16 * train_steps, seed)
    for step in range(train_steps):
        texts = [e.text for e in data[step * 16 : (step + 1) * 16]]
        inputs = tokenizer()(texts, padding=True, return_tensors="pt")
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@dataclass(frozen=True)
class TinySource:
    """A BaseSource that trains and saves a tiny classifier or LM (for pipeline and plugin tests)."""

    kind: str = "classifier"
    seed: int = 0

    def check_available(self) -> None:
        locate(MINILM_WEIGHTS)

    def fingerprint(self) -> dict[str, Any]:
        return {"source": "tiny", "kind": self.kind, "seed": self.seed}

    def build(self, out: Path) -> None:
        model = tiny_bert_classifier(seed=self.seed) if self.kind == "classifier" else tiny_llama(seed=self.seed)
        model.save_pretrained(out)
        save_tokenizer(tokenizer(), out)


@dataclass(frozen=True)
class SyntheticSentiment:
    """Two-class keyword sentiment, learnable by the tiny classifier in a few steps."""

    id: str = "synthetic-sentiment"
    kind: str = "classification"
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")
    n_test: int = 128

    def check_available(self) -> None:
        pass

    def fingerprint(self) -> dict[str, Any]:
        return {"task": self.id, "n_test": self.n_test}

    def evaluate(self, runner) -> TaskResult:
        test = synthetic_examples(self.n_test, seed=999)
        logits = classification.classify(runner, [e.text for e in test], 32)
        return TaskResult(classification.score(test, logits, 2), reference_logits=logits)

    def latency_inputs(self, tokenizer, seq_len: int, batch_size: int = 1):
        texts = [e.text for e in synthetic_examples(batch_size, seed=5)]
        return classification.fixed_length_inputs(tokenizer, texts, seq_len, batch_size)


def build_methods(tmp_path_factory, model, kind: str, methods: dict) -> tuple[Path, Any, dict[str, Path]]:
    """The tiny ``model`` saved as a baseline (with the tokenizer) and each of ``methods`` ({id: Method})
    applied to it: (baseline dir, model, {id: artifact dir})."""
    base = tmp_path_factory.mktemp(f"{kind}-fp32")
    model.save_pretrained(base)
    save_tokenizer(tokenizer(), base)
    outs = {}
    for method_id, method in methods.items():
        outs[method_id] = tmp_path_factory.mktemp(f"{kind}-{method_id}")
        method.apply(base, outs[method_id], stage_context(base, kind))
    return base, model, outs
