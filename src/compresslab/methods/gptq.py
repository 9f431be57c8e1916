"""GPTQ and AWQ weight-only quantization through gptqmodel (auto-gptq and autoawq are dead upstream).

The saved checkpoint is a real 4-bit (or 8-bit) GPTQ/AWQ checkpoint; transformers reloads it
through its gptqmodel integration, the path a user would take. On CPU, quantization runs in
bfloat16 with the torch kernels (GPTQ_TORCH / AWQ_TORCH); on CUDA gptqmodel picks its kernels.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compresslab.methods.base import Method, StageContext
from compresslab.models.loading import load_tokenizer
from compresslab.models.spec import TOKENIZER_DIR

# Files gptqmodel writes beside the weights that belong to the tokenizer, not the model.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "vocab.txt")


def cpu_workers_default(threads: int) -> None:
    """gptqmodel sizes its CPU worker pool from GPTQMODEL_CPU_WORKERS; unset, it oversubscribes small machines."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(threads))


@dataclass(frozen=True)
class GPTQModelQuant(Method):
    bits: int = 4
    group_size: int = 128
    sym: bool = True
    calibration_samples: int = 64
    calibration_tokens: int = 512
    needs_calibration: ClassVar[bool] = True
    requires_packages: ClassVar[tuple[str, ...]] = ("gptqmodel",)
    kinds: ClassVar[tuple[str, ...]] = ("causal-lm",)  # gptqmodel quantizes decoder LMs only
    algorithm: ClassVar[str] = "gptq"

    def __post_init__(self) -> None:
        if self.bits not in (2, 3, 4, 8):
            raise ValueError(f"{type(self).__name__}.bits must be one of 2, 3, 4, 8, got {self.bits}")
        if self.group_size != -1 and self.group_size < 16:
            raise ValueError(f"{type(self).__name__}.group_size must be -1 or >= 16, got {self.group_size}")
        if self.calibration_samples < 1 or self.calibration_tokens < 16:
            raise ValueError(f"{type(self).__name__}: need >= 1 calibration sample of >= 16 tokens")

    def quantize_config(self):
        raise NotImplementedError

    def backend(self, device: str):
        from gptqmodel import BACKEND

        if device.startswith("cuda"):
            return BACKEND.AUTO
        return BACKEND.AWQ_TORCH if self.algorithm == "awq" else BACKEND.GPTQ_TORCH

    def calibration(self, ctx: StageContext) -> list[dict[str, list[int]]]:
        tokenizer = load_tokenizer(ctx.base_dir)
        rows = []
        for text in ctx.calibration_texts(self.calibration_samples):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][: self.calibration_tokens]
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
        return rows

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        import torch
        from gptqmodel import GPTQModel

        cpu_workers_default(torch.get_num_threads())
        backend = self.backend(ctx.device)
        with _source_with_tokenizer(src, ctx.base_dir / TOKENIZER_DIR, out.parent) as staged:
            model = GPTQModel.load(str(staged), self.quantize_config(), dtype=torch.bfloat16,
                                   device=ctx.device, backend=backend)
            model.quantize(self.calibration(ctx), batch_size=1, tokenizer=load_tokenizer(ctx.base_dir),
                           backend=backend)
            model.save(str(out))  # before any forward pass (see methods/base.py)
        _move_tokenizer_files(out)


@contextlib.contextmanager
def _source_with_tokenizer(src: Path, tokenizer_dir: Path, scratch: Path) -> Iterator[Path]:
    """A view of src with the tokenizer files beside the weights, where gptqmodel insists on loading them.

    Artifacts keep the tokenizer in tokenizer/ (so it is not counted as model bytes); gptqmodel
    reads it from the model directory and otherwise tries to convert a slow tokenizer and fails.
    Symlinks, so nothing is copied and the cached source stays untouched.
    """
    with tempfile.TemporaryDirectory(prefix=".gptq-src-", dir=scratch) as tmp:
        view = Path(tmp)
        for path in [*Path(src).iterdir(), *tokenizer_dir.iterdir()]:
            if path.is_file() and not (view / path.name).exists():
                (view / path.name).symlink_to(path.resolve())
        yield view


def _move_tokenizer_files(out: Path) -> None:
    """Keep the tokenizer out of the model's bytes, as in every other artifact (trackers/size.py)."""
    for name in TOKENIZER_FILES:
        if (out / name).exists():
            (out / TOKENIZER_DIR).mkdir(exist_ok=True)
            shutil.move(str(out / name), str(out / TOKENIZER_DIR / name))


@dataclass(frozen=True)
class GPTQ(GPTQModelQuant):
    desc_act: bool = False
    damp_percent: float = 0.05
    family: ClassVar[str] = "gptq"
    algorithm: ClassVar[str] = "gptq"

    def quantize_config(self):
        from gptqmodel import QuantizeConfig
        from gptqmodel.quantization import FORMAT, METHOD

        # gptqmodel 7 enables act_group_aware by default, which conflicts with desc_act=True.
        return QuantizeConfig(bits=self.bits, group_size=self.group_size, sym=self.sym, desc_act=self.desc_act,
                              act_group_aware=not self.desc_act, damp_percent=self.damp_percent,
                              method=METHOD.GPTQ, format=FORMAT.GPTQ)


@dataclass(frozen=True)
class AWQ(GPTQModelQuant):
    family: ClassVar[str] = "awq"
    algorithm: ClassVar[str] = "awq"

    def quantize_config(self):
        from gptqmodel import QuantizeConfig
        from gptqmodel.quantization import FORMAT, METHOD

        return QuantizeConfig(bits=self.bits, group_size=self.group_size, sym=self.sym,
                              method=METHOD.AWQ, format=FORMAT.GEMM)
