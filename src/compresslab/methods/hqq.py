"""HQQ (half-quadratic quantization): calibration-free group-wise 4- or 3-bit weights, saved packed.

hqq's ``HQQLinear`` replaces each Linear the one full-precision rule converts (models/precision.py);
its zero points are fitted to the weights alone by a half-quadratic solver, so no data enters.
``zero_point="min-max"`` turns the solver off and keeps each group's zero point as a float (hqq
rounds it to an integer at 4 bits by default): each group is then the plain min-max grid, which
reproduces weights made on such a grid (SmolLM2's, dequantized from Q4_1: asymmetric, groups of
32 along the input dimension) to fp32 rounding, given fp32 scales (``compute_dtype="float32"``:
hqq keeps scale and zero in the compute dtype, and a bf16 scale is itself off the grid).
transformers 5.17's ``HqqConfig`` is not implemented ("QuantizationMethod.HQQ is not available
yet"), so this module quantizes, saves and reloads through hqq's own module API, and registers
the saved format itself (models/formats.py):
- ``config.json``: the model's transformers config;
- ``hqq_model.safetensors``: HQQLinear's own encoded state (packed uint8 / int32 weights, group
  scales and zeros) and every other tensor in the compute dtype. Not called model.safetensors on
  purpose: transformers' plain loader must refuse the directory rather than load random Linears;
- ``compresslab_hqq.json``: the marker, naming the quantized modules the loader rebuilds.
The format is known to processes that import this module (the registry does); one that imports no
method module cannot reload such a checkpoint, and fails rather than load it wrong.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from compresslab.methods.base import Method, MethodUnsupported, StageContext
from compresslab.models.formats import auto_class, register_format
from compresslab.models.loading import load_pretrained
from compresslab.models.precision import quantizable_linears
from compresslab.models.spec import ModelKind
from compresslab.models.structure import replace_module

BITS = (4, 3)
GROUP_SIZES = (32, 64, 128)
# bf16 halves what stays unquantized (the embedding is most of a small model's bytes once its
# Linears are 4-bit) and runs its matmuls about 4x faster than fp32 on a CPU with BF16 units.
COMPUTE_DTYPES = ("bfloat16", "float32")
# "fitted": hqq's defaults (zero rounded to an integer at 4 bits, then the half-quadratic solver moves
# zero and scale off min-max); "min-max": no solver, a float zero point (the oracle rows' grid)
ZERO_POINTS = ("fitted", "min-max")
MARKER = "compresslab_hqq.json"
WEIGHTS = "hqq_model.safetensors"
FORMAT_SCHEMA = 1


@dataclass(frozen=True)
class HQQ(Method):
    bits: int = 4
    group_size: int = 64
    compute_dtype: str = "bfloat16"
    zero_point: str = "fitted"
    family: ClassVar[str] = "hqq"
    requires_packages: ClassVar[tuple[str, ...]] = ("hqq",)
    # Only the CPU path is verified; hqq's CUDA path would need its GPU kernels checked the same way.
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"HQQ.bits must be one of {', '.join(map(str, BITS))}, got {self.bits!r}")
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"HQQ.group_size must be one of {', '.join(map(str, GROUP_SIZES))}, "
                             f"got {self.group_size!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"HQQ.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, "
                             f"got {self.compute_dtype!r}")
        if self.zero_point not in ZERO_POINTS:
            raise ValueError(f"HQQ.zero_point must be one of {', '.join(ZERO_POINTS)}, got {self.zero_point!r}")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        if is_hqq(src, {}):  # its Linears are HQQLinear already: nothing left to quantize, the marker would lie
            raise MethodUnsupported("its input is HQQ-quantized already")
        model = load_pretrained(src, ctx.kind, dtype=torch.float32)  # quantize from the fp32 weights
        names = quantize_linears(model, ctx.kind, self.bits, self.group_size, getattr(torch, self.compute_dtype),
                                 zero_point=self.zero_point)
        cast_parameters(model, getattr(torch, self.compute_dtype))
        save_hqq(model, out, {"schema": FORMAT_SCHEMA, **asdict(self), "modules": names})  # before any forward


def quantize_linears(model: nn.Module, kind: ModelKind, bits: int, group_size: int, compute_dtype: torch.dtype,
                     device: str = "cpu", zero_point: str = "fitted") -> list[str]:
    """Replace each Linear the precision rule converts by an HQQLinear; returns their names."""
    from hqq.core.quantize import HQQLinear

    config = quant_config(bits, group_size, zero_point)
    linears = quantizable_linears(model, kind)
    for name, linear in linears:
        check_groups_fit(name, linear.in_features, group_size)
    for name, linear in linears:
        replace_module(model, name, HQQLinear(linear, config, compute_dtype=compute_dtype, device=device))
    return [name for name, _ in linears]


def quant_config(bits: int, group_size: int, zero_point: str = "fitted") -> dict:
    """hqq's quantization config for ``bits`` in groups of ``group_size`` along the input dimension."""
    from hqq.core.quantize import BaseQuantizeConfig

    if zero_point not in ZERO_POINTS:
        raise ValueError(f"zero_point must be one of {', '.join(ZERO_POINTS)}, got {zero_point!r}")
    # axis=1: groups run along each row's input dimension, as in GPTQ, AWQ and the GGUF grids; on
    # SmolLM2's blocks it measured 7.3% relative weight error at 4 bits, grouping columns (axis=0) 9%
    config = BaseQuantizeConfig(nbits=bits, group_size=group_size, axis=1)
    if zero_point == "min-max":  # the keys hqq's own config builder sets for its defaults
        config["weight_quant_params"].update(optimize=False, round_zero=False)
    return config


def cast_parameters(model: nn.Module, dtype: torch.dtype) -> None:
    """What stays unquantized (embeddings, norms, the head) in ``dtype``. Not ``model.to(dtype)``: that
    would also cast computed buffers, which transformers' loaders keep in fp32 (rotary frequencies),
    so the model in memory would differ from every reload of it. HQQLinear's packed weight is an
    integer tensor and its scales live outside the module's parameters: both stay as quantized."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            parameter.data = parameter.data.to(dtype)


def check_groups_fit(name: str, in_features: int, group_size: int) -> None:
    # hqq reshapes the weight into rows of group_size: a row that is no multiple would mix output rows
    if in_features % group_size:
        raise MethodUnsupported(f"{name} has {in_features} input features, no multiple of the group size "
                                f"{group_size}")


def save_hqq(model: nn.Module, out: Path, marker: dict) -> None:
    from safetensors.torch import save_model

    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    # a tied tensor (lm_head = embedding) is stored once, its other name in the file's metadata
    save_model(model, str(out / WEIGHTS))
    (out / MARKER).write_text(json.dumps(marker, indent=1))


def is_hqq(path: Path, saved_quantization_config: dict) -> bool:
    return (path / MARKER).is_file()


@register_format("hqq", is_hqq)
def load_hqq(path: Path, kind: ModelKind, device: str, kwargs: dict) -> nn.Module:
    """The model rebuilt from config.json with empty HQQLinear modules at the marker's names, then
    filled from the file (the saved compute dtype decides, not the caller's ``dtype``)."""
    if kwargs.get("quantization_config") is not None:
        raise MethodUnsupported("its input is HQQ-quantized, which transformers' quantizers cannot load; "
                                "put this method before HQQ in the chain")
    marker = json.loads((path / MARKER).read_text())
    model = empty_model(path, kind, getattr(torch, marker["compute_dtype"]), marker["modules"], device)
    fill(model, path / WEIGHTS, device)
    return model


def empty_model(path: Path, kind: ModelKind, compute_dtype: torch.dtype, quantized: list[str],
                device: str) -> nn.Module:
    """The model's modules without weights (placeholders on the meta device), HQQLinear at ``quantized``."""
    from accelerate import init_empty_weights
    from hqq.core.quantize import HQQLinear
    from transformers import AutoConfig

    with init_empty_weights(include_buffers=False):  # buffers (rotary tables) are computed, not saved
        model = auto_class(kind).from_config(AutoConfig.from_pretrained(path), dtype=compute_dtype)
    for name in quantized:
        replace_module(model, name, HQQLinear(None, None, compute_dtype=compute_dtype, device=device,
                                              initialize=False))
    return model


def fill(model: nn.Module, file: Path, device: str) -> None:
    """Every tensor of the model from the file, strictly: one missing would stay an empty placeholder."""
    tensors, aliases = read_weights(file, device)
    # assign: the empty model's parameters are placeholders to replace, not tensors to copy into
    loaded = model.load_state_dict(tensors, strict=False, assign=True)
    missing = sorted(set(loaded.missing_keys) - aliases.keys())
    if missing or loaded.unexpected_keys:
        raise RuntimeError(f"{file} does not fit its model: missing {missing[:5]}, "
                           f"unexpected {loaded.unexpected_keys[:5]}")
    for alias, kept in aliases.items():  # a tied tensor is stored once: its other name points back at it
        replace_parameter(model, alias, model.get_parameter(kept))


def read_weights(file: Path, device: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The file's tensors, and {dropped name: stored name} for the tied ones save_model stored once."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt", device=device) as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = handle.metadata() or {}
    return tensors, {alias: kept for alias, kept in metadata.items() if kept in tensors and alias not in tensors}


def replace_parameter(model: nn.Module, name: str, parameter: nn.Parameter) -> None:
    owner, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(owner), attribute, parameter)
