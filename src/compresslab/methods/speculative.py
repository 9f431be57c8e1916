"""Speculative decoding with a draft the suite builds: the target unchanged, plus a draft beside it.

The artifact is the input checkpoint (the target) as it was, so perplexity, few-shot accuracy and the
batch-1 timing are the target's, and in ``draft/`` the artifact of the ``draft`` method (by default
``distill-half``: the layer-dropped, distilled student of the same model, so the tokenizers match),
which the pipeline builds of the baseline as that method's own cached stage (pipeline.companions_of).
Its runner (models/speculative.py) decodes by draft-and-verify rounds of ``num_draft_tokens``; the
decode workload measures it against the same run's plain greedy decode of the target, and a case
whose speculative output differs from plain greedy fails.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compresslab.methods.base import Method, MethodUnsupported, StageContext
from compresslab.methods.training import write_record
from compresslab.models.graph_runner import runtime_of
from compresslab.models.loading import ships_tokenizer
from compresslab.models.spec import RECORDS_DIR, TOKENIZER_DIR
from compresslab.models.speculative import check_num_draft_tokens, write_marker

DRAFT_DIR = "draft"


def link_or_copy(source: str, target: str) -> str:
    """A hard link where the file system allows (cache payloads are never edited in place), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def copy_checkpoint(source: Path, out: Path) -> None:
    """The model files of a checkpoint directory (not its tokenizer or build records) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(source).iterdir()):
        if path.name in (TOKENIZER_DIR, RECORDS_DIR):
            continue
        if path.is_dir():
            shutil.copytree(path, out / path.name, copy_function=link_or_copy)
        else:
            link_or_copy(str(path), str(out / path.name))


@dataclass(frozen=True)
class SpeculativeDecoding(Method):
    draft: str = "distill-half"  # the registered method whose artifact of the baseline drafts
    num_draft_tokens: int = 4  # k: tokens the draft proposes per target forward
    family: ClassVar[str] = "speculative"
    kinds: ClassVar[tuple[str, ...]] = ("causal-lm",)

    def __post_init__(self) -> None:
        try:
            check_num_draft_tokens(self.num_draft_tokens)
        except ValueError as err:
            raise ValueError(f"SpeculativeDecoding.{err}") from None
        if not isinstance(self.draft, str) or not self.draft:
            raise ValueError(f"SpeculativeDecoding.draft must be a registered method id, got {self.draft!r}")

    def companions(self) -> tuple[str, ...]:
        return (self.draft,)

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        if runtime_of(src) is not None:
            raise MethodUnsupported(f"decodes on eager PyTorch; its input is a {runtime_of(src)['runtime']} graph")
        if ships_tokenizer(src) and Path(src) != Path(ctx.base_dir):
            raise MethodUnsupported("its input changed the vocabulary; the draft, built of the baseline, keeps "
                                    "the baseline's token ids")
        draft = getattr(ctx, "companions", {}).get(self.draft)  # pipeline.CompanionContext
        if draft is None:
            raise MethodUnsupported(f"the pipeline built no {self.draft!r} draft for it (pipeline.CompanionContext)")
        copy_checkpoint(Path(src), Path(out))
        copy_checkpoint(Path(draft), Path(out) / DRAFT_DIR)
        write_marker(out, DRAFT_DIR, self.num_draft_tokens, draft_method=self.draft)
        write_record(out, "speculative", {"draft_method": self.draft, "num_draft_tokens": self.num_draft_tokens})
