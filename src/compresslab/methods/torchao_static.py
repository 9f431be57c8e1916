"""Calibrated static int8 (weights and activations) through torchao's Int8StaticActivationInt8WeightConfig.

Calibration runs the fp32 model on the task's calibration texts and records each Linear's input
absmax with forward pre-hooks; each Linear gets its own per-tensor activation scale (absmax/127),
passed to transformers' TorchAoConfig as an FqnToConfig keyed by the weight's fqn. The
checkpoint is the usual torchao safetensors (int8 ``_weight_qdata`` plus scales, including
``_weight_act_quant_scale``), saved with save_pretrained and reloaded with from_pretrained.

transformers 5.17 needs two fixes for that round trip:
- save (here): TorchAoConfig.to_dict cannot serialize a config holding a tensor ("TypeError: Object of
  type Tensor is not JSON serializable", raised by save_pretrained, and for causal LMs already by
  from_pretrained), so config.json records the scheme without the scale (``act_quant_scale:
  null``); the scales live in the safetensors, next to each weight.
- reload: its torchao quantizer gathers a tensor subclass from a fixed list of field names that
  lacks ``act_quant_scale``; the scale is dropped as UNEXPECTED and TorchAoDeserialize fails
  ("assert not leftover_state_dict"). The reload fix belongs to the checkpoint format, not to
  this method: models/formats.py applies it before loading any torchao checkpoint, in every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from transformers import TorchAoConfig

from compresslab.methods.base import Method, MethodUnsupported, StageContext
from compresslab.models.loading import load_pretrained, load_tokenizer
from compresslab.models.precision import quantizable_linears

WEIGHT_GRANULARITIES = ("per-row", "per-tensor")
INT8_MAX = 127


@dataclass(frozen=True)
class TorchaoStaticInt8(Method):
    """int8 weights and int8 activations with calibrated per-tensor static scales (symmetric).

    Every nn.Linear the one full-precision rule converts (models/precision.py) is quantized and
    calibrated: the task head (``classifier``, ``lm_head``) stays in full precision, as do the
    embeddings (not Linears).
    """

    calibration_samples: int = 128
    calibration_tokens: int = 128
    weight_granularity: str = "per-row"
    family: ClassVar[str] = "int8"
    uses_task_data: ClassVar[bool] = True
    requires_packages: ClassVar[tuple[str, ...]] = ("torchao",)
    devices: ClassVar[tuple[str, ...]] = ("cpu",)  # verified on CPU only
    kinds: ClassVar[tuple[str, ...]] = ("classifier",)

    def check_supported(self, kind, device: str) -> None:
        if kind == "causal-lm":
            # measured on SmolLM2-135M: perplexity 21.5 -> 56.7; decoder activations have outlier
            # channels a per-tensor static scale cannot cover (SmoothQuant-style smoothing is needed)
            raise MethodUnsupported("per-tensor static int8 activations wreck decoder LMs (SmolLM2-135M: "
                                    "perplexity 21.5 -> 56.7); it applies to encoders")
        super().check_supported(kind, device)

    def __post_init__(self) -> None:
        if self.calibration_samples < 1:
            raise ValueError(f"TorchaoStaticInt8.calibration_samples must be >= 1, got {self.calibration_samples}")
        if self.calibration_tokens < 8:
            raise ValueError(f"TorchaoStaticInt8.calibration_tokens must be >= 8, got {self.calibration_tokens}")
        if self.weight_granularity not in WEIGHT_GRANULARITIES:
            raise ValueError(f"TorchaoStaticInt8.weight_granularity must be one of {', '.join(WEIGHT_GRANULARITIES)}, "
                             f"got {self.weight_granularity!r}")

    def activation_scales(self, src: Path, ctx: StageContext) -> dict[str, torch.Tensor]:
        """fqn of each calibrated Linear -> its activation scale, shaped to the rank of its input."""
        model = load_pretrained(src, ctx.kind, device=ctx.device, dtype=torch.float32)
        absmax: dict[str, torch.Tensor] = {}
        ranks: dict[str, int] = {}

        def record(name: str):
            def hook(module, args):
                x = args[0]
                if ranks.setdefault(name, x.ndim) != x.ndim:
                    raise ValueError(f"{name} saw inputs of rank {ranks[name]} and {x.ndim}; a static scale fits one")
                peak = x.detach().abs().amax().float()
                absmax[name] = torch.maximum(absmax[name], peak) if name in absmax else peak
            return hook

        handles = [module.register_forward_pre_hook(record(name))
                   for name, module in quantizable_linears(model, ctx.kind)]
        tokenizer = load_tokenizer(ctx.base_dir)
        try:
            with torch.inference_mode():
                for text in ctx.calibration_texts(self.calibration_samples):
                    inputs = tokenizer(text, truncation=True, max_length=self.calibration_tokens, return_tensors="pt")
                    model(**{key: value.to(ctx.device) for key, value in inputs.items()})
        finally:
            for handle in handles:
                handle.remove()
        eps = torch.finfo(torch.float32).eps
        return {name: (peak.clamp(min=eps) / INT8_MAX).reshape([1] * ranks[name]).cpu()
                for name, peak in absmax.items()}

    def ao_config(self, scales: dict[str, torch.Tensor | None]):
        """One Int8StaticActivationInt8WeightConfig per weight fqn (a None scale: the config as recorded in config.json)."""
        from torchao.quantization import (FqnToConfig, Int8StaticActivationInt8WeightConfig, MappingType, PerRow,
                                          PerTensor)

        weight = PerRow() if self.weight_granularity == "per-row" else PerTensor()
        # Keyed by the parameter, not the module: a module key makes transformers quantize the bias too.
        return FqnToConfig({f"{name}.weight": Int8StaticActivationInt8WeightConfig(
            act_quant_scale=scale, granularity=[PerTensor(), weight], act_mapping_type=MappingType.SYMMETRIC)
            for name, scale in scales.items()})

    def quantized_model(self, src: Path, ctx: StageContext) -> torch.nn.Module:
        """The quantized model, ready to save (no forward pass has run on it)."""
        scales = self.activation_scales(src, ctx)
        config = CalibratedTorchAoConfig(self.ao_config(scales), recorded=self.ao_config(dict.fromkeys(scales)))
        return load_pretrained(src, ctx.kind, dtype="auto", quantization_config=config)

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        # Save before any forward pass (see methods/base.py).
        self.quantized_model(src, ctx).save_pretrained(out)


class CalibratedTorchAoConfig(TorchAoConfig):
    """A TorchAoConfig whose quant_type holds tensors (the calibrated scales), which JSON cannot;
    it serializes as ``recorded``: the same scheme with the scales left to the weights."""

    def __init__(self, quant_type, recorded, **kwargs):
        super().__init__(quant_type, **kwargs)
        self.recorded = recorded

    def to_dict(self):
        return TorchAoConfig(self.recorded, modules_to_not_convert=self.modules_to_not_convert,
                             include_input_output_embeddings=self.include_input_output_embeddings,
                             untie_embedding_weights=self.untie_embedding_weights).to_dict()

