"""4-bit weight-only quantization that is saved and reloaded: optimum-quanto on CPU, torchao int4 on CUDA.

torchao's int4 layouts cannot be saved on CPU here (see ../shared/DESIGN.md), so the CPU route is
optimum-quanto's qint4 (group-wise, packed two per byte in safetensors, with a quantization map
beside the weights); models/formats.py reloads such a checkpoint through quanto's own loader. On
CUDA the artifact is torchao's Int4WeightOnlyConfig through transformers' TorchAoConfig, whose
tinygemm kernels make it fast there. The device is part of every cache key, so the two never mix.

quanto cannot make an oracle row on SmolLM2's Q4_1 grid (asymmetric, groups of 32 along the input
dimension; README: "Which 4-bit rows are on the model's original grid"), though its zero point (a
float shift) could hold it: optimum-quanto 0.2.7 takes no group size. QModuleMixin derives it from the
layer width (128, less by 32 until it divides in_features: 96 for SmolLM2's 576-wide inputs, 128 for
its 1536-wide down_proj), and its loader derives it again the same way, so a module quantized at 32
(by setting ``weight_group_size`` before freezing) would save a checkpoint that does not reload.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from compresslab.methods.base import Method, MethodUnsupported, StageContext
from compresslab.models.formats import QUANTO_QMAP, quanto_class
from compresslab.models.loading import load_pretrained
from compresslab.models.precision import full_precision_names, shell_patterns

GROUP_SIZES = (32, 64, 128)
QUANTO_GROUP_SIZE = 128  # fixed by optimum-quanto for qint4 (smaller where in_features needs it: 96 at 576)


@dataclass(frozen=True)
class Int4WeightOnly(Method):
    group_size: int = 128
    # dtype of what stays unquantized (embeddings, head, norms) and of the scales: bf16 halves the
    # embedding, most of a small model's bytes once its Linears are 4-bit, and selects quanto's
    # tinygemm int4 kernels on CPU (see models/formats.py for the one fix they need)
    dtype: str = "bfloat16"
    family: ClassVar[str] = "int4"
    requires_packages: ClassVar[tuple[str, ...]] = ("optimum.quanto", "torchao")

    def __post_init__(self) -> None:
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"Int4WeightOnly.group_size must be one of {', '.join(map(str, GROUP_SIZES))}, "
                             f"got {self.group_size}")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"Int4WeightOnly.dtype must be bfloat16, float16 or float32, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def check_supported(self, kind, device: str) -> None:
        super().check_supported(kind, device)
        if not device.startswith("cuda") and self.group_size != QUANTO_GROUP_SIZE:
            raise MethodUnsupported(f"on {device} int4 goes through optimum-quanto, whose group size is "
                                    f"{QUANTO_GROUP_SIZE}, not {self.group_size}")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        if ctx.device.startswith("cuda"):
            self._apply_torchao(src, out, ctx)
        else:
            self._apply_quanto(src, out, ctx)

    def _apply_quanto(self, src: Path, out: Path, ctx: StageContext) -> None:
        from optimum.quanto import qint4

        model = load_pretrained(src, ctx.kind, dtype=self.torch_dtype)
        # the one full-precision rule (models/precision.py), as quanto's exclude patterns
        quantized = quanto_class(ctx.kind).quantize(model, weights=qint4, exclude=shell_patterns(ctx.kind))
        quantized.save_pretrained(out)  # before any forward pass (see methods/base.py)
        if not (out / QUANTO_QMAP).is_file():
            raise RuntimeError(f"optimum-quanto wrote no {QUANTO_QMAP} to {out}: the checkpoint could not be reloaded")

    def _apply_torchao(self, src: Path, out: Path, ctx: StageContext) -> None:
        from torchao.quantization import Int4WeightOnlyConfig
        from transformers import TorchAoConfig

        config = TorchAoConfig(Int4WeightOnlyConfig(group_size=self.group_size),
                               modules_to_not_convert=full_precision_names(ctx.kind))
        model = load_pretrained(src, ctx.kind, dtype=self.torch_dtype, quantization_config=config,
                                device_map=ctx.device)
        model.save_pretrained(out)
