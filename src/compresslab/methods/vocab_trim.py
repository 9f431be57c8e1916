"""Vocabulary trimming: keep the word pieces the task's training split uses (and every special
token); the tokenizer and the word embedding shrink together.

Half of MiniLM's parameters are its 30,522 x 384 word embedding, while a task's texts use a
fraction of the vocabulary (the tweet training split: about 13,000 pieces). The kept pieces keep
their order and are renumbered 0..n-1; the embedding rows are gathered in that order, so a text
whose pieces are all kept gets exactly the logits it had. The artifact ships its own tokenizer
(tokenizer/): a WordPiece vocabulary of the kept pieces only, so a word still decomposable into
kept pieces splits into them, and a word that is not becomes the unknown token ([UNK]). The
one-character ASCII pieces are kept by default, so only words with a character outside ASCII that
the training split never used (an unseen emoji, a rare accented letter) become [UNK].

Encoders only: a decoder's head predicts over its vocabulary, and a trimmed head could generate
only kept tokens while its perplexity on text with dropped tokens would no longer be comparable
with the baseline's (every dropped token would be scored as [UNK]).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from compresslab.methods.base import Method, MethodUnsupported, StageContext
from compresslab.methods.training import write_record
from compresslab.models.loading import checkpoint_tokenizer, load_pretrained, load_tokenizer, save_tokenizer
from compresslab.models.spec import TOKENIZER_DIR, ModelKind

TOKENIZER_FILE = "tokenizer.json"  # the tokenizers library's serialized pipeline, ids included
CONTINUATION = "##"  # WordPiece's prefix of a piece that continues a word
TRIMMABLE_MODELS = ("WordPiece",)  # vocabularies without merges: dropping a piece breaks no other
# config fields holding token ids (renumbered with the vocabulary)
TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")


def used_token_counts(tokenizer, texts: Iterable[str]) -> Counter:
    """How often each token id occurs in ``texts`` (the whole text, no truncation; no special tokens)."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    return counts


def ascii_character_ids(tokenizer) -> set[int]:
    """The pieces that are one ASCII character, alone or as a continuation ("a", "##a", "7", "!")."""
    return {index for piece, index in tokenizer.get_vocab().items()
            if len(piece.removeprefix(CONTINUATION)) == 1 and piece.isascii()}


def kept_token_ids(tokenizer, counts: Counter, min_count: int, ascii_characters: bool) -> list[int]:
    """Ids used at least ``min_count`` times, every special and added token and, with
    ``ascii_characters``, every one-character ASCII piece: in the original order."""
    kept = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    kept |= {token for token, count in counts.items() if count >= min_count}
    return sorted(kept | ascii_character_ids(tokenizer) if ascii_characters else kept)


def remap_post_processor(processor: dict[str, Any] | None, new_id: dict[int, int]) -> None:
    """Renumber the special-token ids a post-processor inserts ([CLS], [SEP]), in place."""
    if processor is None:
        return
    kind = processor["type"]
    if kind == "TemplateProcessing":
        for token in processor["special_tokens"].values():
            token["ids"] = [new_id[i] for i in token["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for name in ("sep", "cls"):
            processor[name][1] = new_id[processor[name][1]]
    elif kind == "Sequence":
        for inner in processor["processors"]:
            remap_post_processor(inner, new_id)
    elif kind != "ByteLevel":  # ByteLevel inserts no ids
        raise MethodUnsupported(f"vocab-trim: post-processor {kind!r} has no id remapping; valid: TemplateProcessing, "
                                "BertProcessing, RobertaProcessing, Sequence, ByteLevel")


def trimmed_pipeline(pipeline: dict[str, Any], kept: Sequence[int]) -> dict[str, Any]:
    """A tokenizer.json document whose vocabulary holds only the ``kept`` ids, renumbered in order."""
    model = pipeline["model"]
    if model["type"] not in TRIMMABLE_MODELS:
        raise MethodUnsupported(f"vocab-trim: a {model['type']} tokenizer cannot be trimmed piece by piece; "
                                f"valid: {', '.join(TRIMMABLE_MODELS)}")
    new_id = {old: new for new, old in enumerate(kept)}
    trimmed = json.loads(json.dumps(pipeline))  # a deep copy
    trimmed["model"]["vocab"] = {token: new_id[old] for token, old in model["vocab"].items() if old in new_id}
    for added in trimmed["added_tokens"]:
        added["id"] = new_id[added["id"]]
    remap_post_processor(trimmed.get("post_processor"), new_id)
    if trimmed.get("padding"):
        trimmed["padding"]["pad_id"] = new_id[trimmed["padding"]["pad_id"]]
    return trimmed


def save_trimmed_tokenizer(tokenizer, kept: Sequence[int], artifact: Path):
    """The trimmed tokenizer saved into ``artifact``'s tokenizer/ dir, and reloaded from there."""
    save_tokenizer(tokenizer, artifact)
    path = Path(artifact) / TOKENIZER_DIR / TOKENIZER_FILE
    pipeline = json.loads(tokenizer.backend_tokenizer.to_str())
    path.write_text(json.dumps(trimmed_pipeline(pipeline, kept), ensure_ascii=False))
    trimmed = load_tokenizer(artifact)
    if len(trimmed) != len(kept):
        raise RuntimeError(f"vocab-trim: the saved tokenizer has {len(trimmed)} tokens, expected {len(kept)}")
    return trimmed


def trim_embeddings(model: nn.Module, kept: Sequence[int]) -> None:
    """The input embedding reduced to the ``kept`` rows in that order (row i = old row kept[i]),
    and the config's vocab_size and token ids renumbered to match."""
    if model.get_output_embeddings() is not None:
        raise MethodUnsupported("vocab-trim: the model has an output embedding (a head over the vocabulary); "
                                "only encoders with a task head are trimmed")
    old = model.get_input_embeddings()
    new_id = {old_id: new for new, old_id in enumerate(kept)}
    padding = new_id.get(old.padding_idx) if old.padding_idx is not None else None
    trimmed = nn.Embedding(len(kept), old.embedding_dim, padding_idx=padding, dtype=old.weight.dtype)
    with torch.no_grad():
        trimmed.weight.copy_(old.weight[torch.tensor(list(kept))])
    model.set_input_embeddings(trimmed)
    model.config.vocab_size = len(kept)
    for name in TOKEN_ID_FIELDS:
        value = getattr(model.config, name, None)
        if isinstance(value, int):
            setattr(model.config, name, new_id.get(value))


def oov_rate(original, trimmed, texts: Iterable[str]) -> float:
    """The out-of-vocabulary rate of ``texts``: the share of their tokens under the ``original``
    tokenizer (special tokens excluded) whose piece the ``trimmed`` vocabulary does not hold.
    Each such token is either re-split into kept pieces or, with its word, becomes [UNK]."""
    kept = set(trimmed.get_vocab())
    total = missing = 0
    for text in texts:
        pieces = original.convert_ids_to_tokens(original(text, add_special_tokens=False)["input_ids"])
        total += len(pieces)
        missing += sum(piece not in kept for piece in pieces)
    return missing / total if total else 0.0


@dataclass(frozen=True)
class VocabTrim(Method):
    training_samples: int = 100_000  # texts of the task's training split scanned (all of them, if fewer)
    min_count: int = 1  # a piece is kept when it occurs at least this often in them
    # keep the 136 one-character ASCII pieces too (0.05 MB in int8): an unseen ASCII word then splits
    # into kept pieces, down to letters, instead of becoming [UNK]
    ascii_characters: bool = True
    family: ClassVar[str] = "vocab"
    uses_task_data: ClassVar[bool] = True  # the kept vocabulary comes from the training split
    kinds: ClassVar[tuple[ModelKind, ...]] = ("classifier",)  # see the module docstring

    def __post_init__(self) -> None:
        if self.training_samples < 1:
            raise ValueError(f"VocabTrim.training_samples must be >= 1, got {self.training_samples}")
        if self.min_count < 1:
            raise ValueError(f"VocabTrim.min_count must be >= 1, got {self.min_count}")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        tokenizer = checkpoint_tokenizer(src, ctx.base_dir)
        texts = [example.text for example in ctx.training_examples(self.training_samples)]
        counts = used_token_counts(tokenizer, texts)
        kept = kept_token_ids(tokenizer, counts, self.min_count, self.ascii_characters)
        model = load_pretrained(src, ctx.kind, dtype="auto")
        if model.get_input_embeddings().num_embeddings != len(tokenizer):
            raise ValueError(f"vocab-trim: the embedding has {model.get_input_embeddings().num_embeddings} rows "
                             f"but the tokenizer {len(tokenizer)} tokens")
        trim_embeddings(model, kept)
        model.save_pretrained(out)
        trimmed = save_trimmed_tokenizer(tokenizer, kept, out)
        write_record(out, "vocab_trim", {"training_texts": len(texts), "min_count": self.min_count,
                                         "original_vocab": len(tokenizer), "kept_vocab": len(kept),
                                         "training_oov_rate": oov_rate(tokenizer, trimmed, texts)})
