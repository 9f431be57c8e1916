"""Saved checkpoint formats: each knows its marker and how to reload itself.

Methods save in one of a few formats: plain transformers, reshaped modules (structure map),
optimum-quanto (its quantization map), or a transformers quantizer's (config.json's
``quantization_config.quant_method``, the key transformers itself picks its quantizer by). Each
format pairs the marker its checkpoints already carry with the loader they need, so
``load_pretrained`` dispatches without naming a format, and models/ never imports methods/ to
reload what a method wrote. The markers are the checkpoints' own files, so artifacts cached
before this registry reload unchanged.

A new format: one ``@register_format`` loader here (or in any module imported before loading).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from compresslab.errors import MethodUnsupported
from compresslab.models.spec import ModelKind
from compresslab.models.structure import is_structured, load_structured

AUTO_CLASSES = {"classifier": AutoModelForSequenceClassification, "causal-lm": AutoModelForCausalLM}


def auto_class(kind: ModelKind):
    return AUTO_CLASSES[kind]


# (checkpoint dir, its saved quantization_config or {}) -> whether the checkpoint is in this format
Detect = Callable[[Path, dict], bool]
# (checkpoint dir, kind, device, from_pretrained kwargs) -> the model; load_pretrained moves it and sets eval
Load = Callable[[Path, ModelKind, str, dict], torch.nn.Module]


@dataclass(frozen=True)
class SavedFormat:
    name: str
    detect: Detect
    load: Load
    # optimum-quanto's packed weights fail under inference_mode ("Cannot set version_counter for
    # inference tensor"); such formats run under no_grad, the same computation without that fast path.
    inference_mode: bool = True


# Tried in order, first match wins: a checkpoint could carry two markers only through a bug, and
# then the order below (reshaped modules first, as before this registry) decides.
FORMAT_LOADERS: list[SavedFormat] = []


def register_format(name: str, detect: Detect, inference_mode: bool = True) -> Callable[[Load], Load]:
    """Decorator: the decorated function reloads checkpoints that ``detect`` recognizes."""
    def register(load: Load) -> Load:
        FORMAT_LOADERS.append(SavedFormat(name, detect, load, inference_mode))
        return load
    return register


def saved_format(path: Path) -> SavedFormat:
    """The format a checkpoint directory was saved in; plain transformers when no marker matches."""
    path = Path(path)
    saved = saved_quantization_config(path)
    return next((fmt for fmt in FORMAT_LOADERS if fmt.detect(path, saved)), PLAIN)


def saved_quantization_config(path: Path) -> dict:
    """The checkpoint's quantization_config from config.json; {} for an unquantized or unreadable one."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config.get("quantization_config") or {}


def load_plain(path: Path, kind: ModelKind, device: str, kwargs: dict) -> torch.nn.Module:
    """transformers' own loader, which also reloads what its quantizers saved."""
    return auto_class(kind).from_pretrained(path, **kwargs)


PLAIN = SavedFormat("transformers", lambda path, saved: True, load_plain)


@register_format("structured", lambda path, saved: is_structured(path))
def load_reshaped(path: Path, kind: ModelKind, device: str, kwargs: dict) -> torch.nn.Module:
    """Reshaped modules (structured pruning, low-rank factors) cannot go through a from_pretrained
    quantizer, which builds the config's shapes; later stages that load plainly work."""
    if kwargs.get("quantization_config") is not None:
        raise MethodUnsupported("its input has reshaped modules (structured pruning or low-rank factors), which "
                                "transformers' quantizers cannot load; put this method before them in the chain")
    model = load_structured(path, auto_class(kind))
    dtype = kwargs.get("dtype")
    return model.to(dtype) if isinstance(dtype, torch.dtype) else model


QUANTO_QMAP = "quanto_qmap.json"  # optimum-quanto's quantization map, beside its safetensors


@register_format("optimum-quanto", lambda path, saved: (path / QUANTO_QMAP).is_file(), inference_mode=False)
def load_quanto(path: Path, kind: ModelKind, device: str, kwargs: dict) -> torch.nn.Module:
    """transformers cannot load quanto checkpoints; quanto's loader rebuilds the packed modules
    (in the dtype they were saved in, so from_pretrained kwargs do not apply)."""
    return _contiguous_qlinear_inputs(quanto_class(kind).from_pretrained(str(path))._wrapped)


def quanto_class(kind: ModelKind):
    """optimum-quanto's wrapper for this kind (it ships one for causal LMs only)."""
    from optimum.quanto import QuantizedModelForCausalLM, QuantizedTransformersModel

    if kind == "causal-lm":
        return QuantizedModelForCausalLM
    return type("QuantizedModelForSequenceClassification", (QuantizedTransformersModel,),
                {"auto_class": AutoModelForSequenceClassification})


def _contiguous_qlinear_inputs(model: torch.nn.Module) -> torch.nn.Module:
    """quanto's bf16 int4 CPU kernel (torch._weight_int4pack_mm_for_cpu) rejects a non-contiguous
    input ("expect A to be contiguous"), which BERT attention hands its output projection."""
    from optimum.quanto.nn import QLinear

    for module in model.modules():
        if isinstance(module, QLinear):
            module.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))
    return model


# gptqmodel's auto-selected CPU kernels (torch int4pack) need in_features divisible by the group
# size, which SmolLM2 (576) is not for 128; its plain torch kernels take any shape.
CPU_KERNELS = {"gptq": "gptq_torch", "awq": "torch_awq"}


@register_format("gptq/awq", lambda path, saved: saved.get("quant_method") in CPU_KERNELS)
def load_gptq_awq(path: Path, kind: ModelKind, device: str, kwargs: dict) -> torch.nn.Module:
    """transformers' gptqmodel loader, pinned to the plain torch kernels on CPU unless the caller chose."""
    if not device.startswith("cuda") and "quantization_config" not in kwargs:
        kwargs = {**kwargs, "quantization_config": _cpu_kernel_config(saved_quantization_config(path))}
    return load_plain(path, kind, device, kwargs)


def _cpu_kernel_config(saved: dict):
    from transformers import AwqConfig, GPTQConfig

    method = saved["quant_method"]
    config_class = GPTQConfig if method == "gptq" else AwqConfig
    return config_class(bits=saved.get("bits", 4), group_size=saved.get("group_size", 128), backend=CPU_KERNELS[method])


@register_format("torchao", lambda path, saved: saved.get("quant_method") == "torchao")
def load_torchao(path: Path, kind: ModelKind, device: str, kwargs: dict) -> torch.nn.Module:
    """transformers' torchao loader, taught first to keep the scales of static int8 checkpoints."""
    enable_static_int8_reload()
    return load_plain(path, kind, device, kwargs)


# Int8Tensor fields (static activation quantization) that transformers 5.17's torchao loader does not gather.
STATIC_FIELDS = ("act_quant_scale", "act_quant_zero_point")


def enable_static_int8_reload() -> None:
    """Teach transformers' torchao loader the static activation scale fields (idempotent; a no-op where unneeded).

    Its quantizer gathers a tensor subclass from a fixed list of field names that lacks
    ``act_quant_scale``; the scale would be dropped as UNEXPECTED and TorchAoDeserialize fail
    ("assert not leftover_state_dict"). methods/torchao_static.py writes such checkpoints.
    """
    try:
        from transformers.core_model_loading import WeightConverter
        from transformers.quantizers import auto
        from transformers.quantizers.quantizer_torchao import TorchAoHfQuantizer
    except ImportError:  # a transformers without this loader: nothing to extend
        return
    if getattr(auto.AUTO_QUANTIZER_MAPPING.get("torchao"), "gathers_static_scales", False):
        return

    class StaticScalesTorchAoHfQuantizer(TorchAoHfQuantizer):
        gathers_static_scales = True

        def get_weight_conversions(self):
            return [_with_static_fields(converter, WeightConverter) for converter in super().get_weight_conversions()]

    auto.AUTO_QUANTIZER_MAPPING["torchao"] = StaticScalesTorchAoHfQuantizer


def _with_static_fields(converter, weight_converter_class):
    """The converter, also gathering the static fields of its parameter (e.g. ``_weight_act_quant_scale``)."""
    (target,) = converter.target_patterns  # the parameter name, e.g. "weight"
    missing = [f"_{target}_{field}" for field in STATIC_FIELDS if f"_{target}_{field}" not in converter.source_patterns]
    if not missing:
        return converter
    return weight_converter_class(source_patterns=[*converter.source_patterns, *missing],
                                  target_patterns=target, operations=converter.operations)
