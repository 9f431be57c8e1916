"""Plain English text from the shortened Wikipedia dump shipped in gensim's wheel test data.

Articles are split by position into a calibration/training part and a held-out part, so
perplexity is never measured on text that calibration or distillation has seen.
"""

from __future__ import annotations

import bz2
import functools
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from compresslab.assets import AssetFile, locate_with_hash

WIKI_DUMP = AssetFile(
    "gensim", "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
HELD_OUT_FRACTION = 0.2
MIN_ARTICLE_CHARS = 2000

_MARKUP = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>]*/>"), ""),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"\[\[(?:File|Image|Category):[^\]]*(?:\[\[[^\]]*\]\][^\]]*)*\]\]", re.I), ""),
    (re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1"),
    (re.compile(r"&nbsp;"), " "),
    (re.compile(r"\n{3,}"), "\n\n"),
]


def _strip_nested(text: str, open_: str, close: str) -> str:
    """Remove balanced {{templates}} / {| tables |}; regexes cannot match nesting."""
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith(open_, i):
            depth, i = depth + 1, i + len(open_)
        elif depth and text.startswith(close, i):
            depth, i = depth - 1, i + len(close)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def clean_wikitext(text: str) -> str:
    text = _strip_nested(_strip_nested(text, "{{", "}}"), "{|", "|}")
    for pattern, replacement in _MARKUP:
        text = pattern.sub(replacement, text)
    return text.strip()


@dataclass(frozen=True)
class WikiText:
    train: tuple[str, ...]
    held_out: tuple[str, ...]
    source_sha256: str


def _articles(path) -> list[str]:
    articles = []
    with bz2.open(path, "rb") as handle:
        for _, element in ET.iterparse(handle):
            if element.tag.endswith("}text") and element.text and not element.text.startswith("#REDIRECT"):
                cleaned = clean_wikitext(element.text)
                if len(cleaned) >= MIN_ARTICLE_CHARS:
                    articles.append(cleaned)
            element.clear()
    return articles


@functools.cache
def load_wiki() -> WikiText:
    path, digest = locate_with_hash(WIKI_DUMP)
    articles = _articles(path)
    n_held = max(1, int(len(articles) * HELD_OUT_FRACTION))
    return WikiText(tuple(articles[:-n_held]), tuple(articles[-n_held:]), digest)
