"""bitsandbytes int8 (LLM.int8) and 4-bit (nf4/fp4, optional double quantization) through
transformers' BitsAndBytesConfig. Runs on CPU (bitsandbytes >= 0.48) and CUDA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from compresslab.methods.base import Method, StageContext
from compresslab.models.loading import load_pretrained
from compresslab.models.precision import full_precision_names

QUANT_TYPES = ("nf4", "fp4")


@dataclass(frozen=True)
class BitsAndBytesQuant(Method):
    bits: int = 8
    quant_type: str = "nf4"
    double_quant: bool = False
    compute_dtype: str = "bfloat16"
    family: ClassVar[str] = "bnb"
    requires_packages: ClassVar[tuple[str, ...]] = ("bitsandbytes",)

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"BitsAndBytesQuant.bits must be 4 or 8, got {self.bits}")
        if self.quant_type not in QUANT_TYPES:
            raise ValueError(f"BitsAndBytesQuant.quant_type must be one of {', '.join(QUANT_TYPES)}, "
                             f"got {self.quant_type!r}")
        if self.compute_dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"BitsAndBytesQuant.compute_dtype must be bfloat16, float16 or float32, "
                             f"got {self.compute_dtype!r}")

    def quantization_config(self, kind: str):
        from transformers import BitsAndBytesConfig

        # the one full-precision rule (models/precision.py), as transformers' skip list
        skip = full_precision_names(kind)
        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
                                  llm_int8_skip_modules=skip)

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        model = load_pretrained(src, ctx.kind, dtype=torch.float32 if self.bits == 8 else
                                getattr(torch, self.compute_dtype),
                                quantization_config=self.quantization_config(ctx.kind), device_map=ctx.device)
        # Save before any forward pass (see methods/base.py): nf4 saved after one reloads wrong on CPU.
        model.save_pretrained(out)
