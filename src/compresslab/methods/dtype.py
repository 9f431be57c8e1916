"""Baseline and dtype casts: fp32 (the reference every ratio is taken against) and bf16."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from compresslab.methods.base import Method, StageContext
from compresslab.models.loading import load_pretrained

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Baseline(Method):
    """The uncompressed fp32 checkpoint, unchanged."""

    family: ClassVar[str] = "baseline"
    identity: ClassVar[bool] = True


@dataclass(frozen=True)
class DtypeCast(Method):
    dtype: str = "bfloat16"
    family: ClassVar[str] = "dtype"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"DtypeCast.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        model = load_pretrained(src, ctx.kind, dtype=DTYPES[self.dtype])
        model.save_pretrained(out)
