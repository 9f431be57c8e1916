"""torchao quantization through transformers' TorchAoConfig (saved as safetensors, reloaded as shipped)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from compresslab.methods.base import Method, StageContext
from compresslab.models.loading import load_pretrained
from compresslab.models.precision import full_precision_names

SCHEMES = ("int8-dynamic", "int8-weight")


def _ao_config(scheme: str):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    return {"int8-dynamic": Int8DynamicActivationInt8WeightConfig, "int8-weight": Int8WeightOnlyConfig}[scheme]()


@dataclass(frozen=True)
class TorchaoQuant(Method):
    """int8 weights (per-channel) with int8 dynamic activations, or int8 weights only.

    torchao replaces every nn.Linear weight; embeddings stay in the source dtype, so the
    size ratio of a model whose embedding dominates (MiniLM, SmolLM2) is well above 0.25.
    """

    scheme: str = "int8-dynamic"
    family: ClassVar[str] = "int8"
    requires_packages: ClassVar[tuple[str, ...]] = ("torchao",)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"TorchaoQuant.scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        from transformers import TorchAoConfig

        on_gpu = ctx.device.startswith("cuda")
        model = load_pretrained(src, ctx.kind, dtype=torch.bfloat16 if on_gpu else "auto",
                                quantization_config=TorchAoConfig(_ao_config(self.scheme),
                                                                  modules_to_not_convert=full_precision_names(ctx.kind)),
                                device_map=ctx.device if on_gpu else None)
        # Save before any forward pass (see methods/base.py).
        model.save_pretrained(out)
