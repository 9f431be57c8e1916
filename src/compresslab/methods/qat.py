"""Quantization-aware training (QAT) with torchao's QAT flow, converted to a PTQ row's real artifact.

Post-training quantization (PTQ) rounds trained weights once; QAT fine-tunes the model while its
Linears compute with fake-quantized numbers (quantize, then dequantize, in the forward pass; the
gradient passes straight through the rounding), so the weights learn to sit where rounding costs
least. torchao's ``QATConfig(step="prepare")`` swaps each quantizable nn.Linear for a
FakeQuantizedLinear; after a short fine-tune fixed in steps (the model's own loss on the task's
training data: labelled texts for a classifier, next-token on the training part of the Wikipedia
text for a causal LM; methods/training.py), ``QATConfig(step="convert")`` swaps them back to
nn.Linear with the trained weights. torchao's convert step would then apply the base PTQ config in
memory; here the PTQ row itself does that (its ``apply`` on the trained checkpoint), so the QAT
artifact is quantized, saved and reloaded exactly as its PTQ twin's, and the two differ only in
the training:

- ``int8-dynamic`` (methods/torchao_quant.py): int8 weights per output channel, symmetric, as
  torchao's Int8DynamicActivationInt8WeightConfig quantizes them, and int8 activations per token
  (asymmetric while training: torchao's fake quantizer has no symmetric per-token mode).
- ``int4-weight`` (methods/int4_weight.py): on CPU optimum-quanto's qint4 (asymmetric min-max,
  groups quanto chooses per layer: 128, or less where the width needs it, else per channel), fake-
  quantized with the groups quanto's own QLinear picks for each layer; on CUDA torchao's
  Int4WeightOnlyConfig, whose fake quantizer torchao infers from that base config.

The Linears the suite keeps in full precision (models/precision.py) are neither fake-quantized nor
quantized. The build record (records/qat.json) holds the training run and how many Linears trained
fake-quantized.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from compresslab.methods.base import Method, StageContext
from compresslab.methods.int4_weight import Int4WeightOnly
from compresslab.methods.torchao_quant import TorchaoQuant
from compresslab.methods.training import recovery_finetune, write_record
from compresslab.models.finetune import FinetuneConfig, TrainBudget
from compresslab.models.loading import load_pretrained
from compresslab.models.precision import linear_filter, quantizable_linears

TARGETS = ("int8-dynamic", "int4-weight")  # the PTQ rows (registry ids) whose scheme QAT trains for

# Stopped by steps only. A short fine-tune at a low learning rate: the model is already trained, QAT
# only moves its weights to where rounding costs least (fake quantization makes each step slower
# than a plain fine-tune's, about 1.5x on CPU).
DEFAULT_BUDGET = TrainBudget(
    classifier=FinetuneConfig(max_steps=150, batch_size=32, learning_rate=2e-5),
    causal_lm=FinetuneConfig(max_steps=60, batch_size=4, max_length=256, learning_rate=1e-5, safety_limit_s=7200),
)


def _int8_dynamic_configs():
    """(activation, weight) fake-quantize configs for Int8DynamicActivationInt8WeightConfig (torchao
    infers none for it): int8 per output channel, symmetric, for the weights as it quantizes them;
    int8 per token for the activations, asymmetric, the only per-token mode torchao's fake quantizer
    has (0.18: "Symmetric per token is not supported yet"), a grid at most one step finer than the
    symmetric one the converted model computes on."""
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    return (IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False),
            IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True))


def quanto_int4_weight_config(linear: nn.Linear):
    """The fake-quantize config of optimum-quanto's qint4 for this Linear: asymmetric min-max with a
    float zero point, in the groups quanto's own QLinear chooses for its width (None: per channel)."""
    from optimum.quanto import qint4
    from optimum.quanto.nn import QLinear
    from torchao.quantization.qat import IntxFakeQuantizeConfig
    from torchao.quantization.quant_primitives import ZeroPointDomain

    group = QLinear.qcreate(linear, weights=qint4, device="meta").weight_group_size
    return IntxFakeQuantizeConfig(torch.int4, "per_channel" if group is None else "per_group", group_size=group,
                                  is_symmetric=False, zero_point_precision=torch.float32,
                                  zero_point_domain=ZeroPointDomain.FLOAT)


def fake_quantized(model: nn.Module) -> list[str]:
    """The names of the model's torchao fake-quantized Linears."""
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    return [name for name, module in model.named_modules() if isinstance(module, FakeQuantizedLinear)]


def is_quantized_weight(weight: torch.Tensor) -> bool:
    """A tensor subclass that stores integer data (torchao's Int8Tensor, optimum-quanto's packed
    WeightQBitsTensor): what a quantized Linear's weight is. A plain or fake-quantized weight is not."""
    if type(weight) in (torch.Tensor, nn.Parameter) or not hasattr(weight, "__tensor_flatten__"):
        return False
    names, _ = weight.__tensor_flatten__()
    inner = [getattr(weight, name) for name in names]
    return any(isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex() for t in inner) or \
        any(is_quantized_weight(t) for t in inner if isinstance(t, torch.Tensor))


def unquantized_linears(model: nn.Module, kind) -> list[str]:
    """The Linears the suite quantizes (models/precision.py) whose weight is not quantized data."""
    return [name for name, linear in quantizable_linears(model, kind) if not is_quantized_weight(linear.weight)]


@dataclass(frozen=True)
class QuantizationAwareTraining(Method):
    target: str = "int8-dynamic"  # the PTQ row whose scheme it trains for and whose apply() makes the artifact
    group_size: int = 128  # int4-weight only: as Int4WeightOnly.group_size
    budget: TrainBudget = field(default_factory=lambda: DEFAULT_BUDGET)
    uses_task_data: ClassVar[bool] = True  # trains on the task's training data

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"QuantizationAwareTraining.target must be one of {', '.join(TARGETS)}, "
                             f"got {self.target!r}")
        self.ptq()  # validates group_size as the PTQ method does

    def ptq(self) -> Method:
        """The PTQ method of the same scheme: the twin row's config, which converts and saves."""
        if self.target == "int8-dynamic":
            return TorchaoQuant(scheme="int8-dynamic")
        return Int4WeightOnly(group_size=self.group_size)

    @property
    def family(self) -> str:  # type: ignore[override]  # the PTQ twin's family: its floors apply
        return self.ptq().family

    @property
    def requires_packages(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.ptq().requires_packages

    def check_supported(self, kind, device: str) -> None:
        self.ptq().check_supported(kind, device)

    def prepare(self, model: nn.Module, kind, device: str) -> int:
        """Swap the quantizable Linears for torchao FakeQuantizedLinears (in place); returns how many."""
        from torchao.quantization import Int4WeightOnlyConfig, quantize_
        from torchao.quantization.qat import QATConfig

        convert = linear_filter(kind)
        if self.target == "int8-dynamic":
            activations, weights = _int8_dynamic_configs()
            quantize_(model, QATConfig(activation_config=activations, weight_config=weights, step="prepare"),
                      filter_fn=convert)
        elif device.startswith("cuda"):
            quantize_(model, QATConfig(Int4WeightOnlyConfig(group_size=self.group_size), step="prepare"),
                      filter_fn=convert)
        else:
            for name, linear in [(n, m) for n, m in model.named_modules() if convert(m, n)]:
                quantize_(model, QATConfig(weight_config=quanto_int4_weight_config(linear), step="prepare"),
                          filter_fn=lambda module, fqn, name=name: fqn == name)
        return len(fake_quantized(model))

    @staticmethod
    def convert(model: nn.Module) -> None:
        """torchao's convert step without a base config: FakeQuantizedLinear -> nn.Linear, trained weights kept."""
        from torchao.quantization import quantize_
        from torchao.quantization.qat import QATConfig

        quantize_(model, QATConfig(step="convert"))
        left = fake_quantized(model)
        if left:
            raise RuntimeError(f"torchao's QAT convert left {len(left)} fake-quantized Linears, e.g. {left[0]}")

    def train(self, model: nn.Module, ctx: StageContext) -> dict:
        """Prepare, then fine-tune fake-quantized for the budget's steps (in place); the training record."""
        n_fake = self.prepare(model, ctx.kind, ctx.device)
        if n_fake == 0:
            raise RuntimeError(f"{ctx.model_id}: QAT found no Linear to fake-quantize")
        record = recovery_finetune(model, ctx, self.budget.for_kind(ctx.kind), f"{ctx.model_id}: QAT {self.target}")
        return {"target": self.target, "fake_quantized_linears": n_fake, **record}

    def convert_and_save(self, model: nn.Module, out: Path, ctx: StageContext) -> None:
        """torchao's convert step, then the PTQ twin's apply on the trained weights; the artifact must
        reload with every quantizable Linear quantized."""
        self.convert(model)
        with tempfile.TemporaryDirectory(prefix="qat-") as trained:
            model.save_pretrained(trained)
            self.ptq().apply(Path(trained), out, ctx)
        left = unquantized_linears(load_pretrained(out, ctx.kind, ctx.device), ctx.kind)  # torchao int4: CUDA only
        if left:
            raise RuntimeError(f"{ctx.model_id}: {len(left)} Linears of the QAT artifact reload unquantized, "
                               f"e.g. {left[0]}")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        model = load_pretrained(src, ctx.kind, dtype=torch.float32)
        record = self.train(model, ctx)
        self.convert_and_save(model, out, ctx)
        write_record(out, "qat", record)
