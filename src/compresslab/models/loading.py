"""Loading a saved PyTorch checkpoint directory for inference, quietly and on a chosen device."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from compresslab.models.spec import RECORDS_DIR, TOKENIZER_DIR, ModelKind
from compresslab.models.structure import is_structured, load_structured

log = logging.getLogger(__name__)

AUTO_CLASSES = {"classifier": AutoModelForSequenceClassification, "causal-lm": AutoModelForCausalLM}

# Weight-loading bars from transformers would bury pytest's output; compresslab shows its own.
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()


def auto_class(kind: ModelKind):
    return AUTO_CLASSES[kind]


QUANTO_QMAP = "quanto_qmap.json"  # optimum-quanto's quantization map, beside its safetensors


def load_pretrained(path: Path, kind: ModelKind, device: str = "cpu", **kwargs) -> torch.nn.Module:
    """A checkpoint directory as a model in eval mode, whichever format a method saved it in."""
    path = Path(path)
    if is_structured(path):
        model = _load_structured(path, kind, kwargs)
    elif (path / QUANTO_QMAP).is_file():
        # transformers cannot load quanto checkpoints; quanto's loader rebuilds the packed modules
        model = _contiguous_qlinear_inputs(quanto_class(kind).from_pretrained(str(path))._wrapped)
    else:
        saved = _saved_quantization_config(path)
        method = saved.get("quant_method")
        if method == "torchao":
            from compresslab.methods.torchao_static import enable_static_int8_reload

            enable_static_int8_reload()  # static int8 checkpoints carry scales transformers' loader skips
        if method in CPU_KERNELS and not device.startswith("cuda") and "quantization_config" not in kwargs:
            kwargs["quantization_config"] = _cpu_kernel_config(saved, method)
        model = auto_class(kind).from_pretrained(path, **kwargs)
    if device != "cpu" and not kwargs.get("device_map"):
        model = model.to(device)
    return model.eval()


# gptqmodel's auto-selected CPU kernels (torch int4pack) need in_features divisible by the group
# size, which SmolLM2 (576) is not for 128; its plain torch kernels take any shape.
CPU_KERNELS = {"gptq": "gptq_torch", "awq": "torch_awq"}


def _load_structured(path: Path, kind: ModelKind, kwargs: dict) -> torch.nn.Module:
    """Reshaped modules (structured pruning, low-rank factors) cannot go through a from_pretrained
    quantizer, which builds the config's shapes; later stages that load plainly work."""
    if kwargs.get("quantization_config") is not None:
        from compresslab.methods.base import MethodUnsupported

        raise MethodUnsupported("its input has reshaped modules (structured pruning or low-rank factors), which "
                                "transformers' quantizers cannot load; put this method before them in the chain")
    model = load_structured(path, auto_class(kind))
    dtype = kwargs.get("dtype")
    return model.to(dtype) if isinstance(dtype, torch.dtype) else model


def _cpu_kernel_config(saved: dict, method: str):
    from transformers import AwqConfig, GPTQConfig

    config_class = GPTQConfig if method == "gptq" else AwqConfig
    return config_class(bits=saved.get("bits", 4), group_size=saved.get("group_size", 128), backend=CPU_KERNELS[method])


def _contiguous_qlinear_inputs(model: torch.nn.Module) -> torch.nn.Module:
    """quanto's bf16 int4 CPU kernel (torch._weight_int4pack_mm_for_cpu) rejects a non-contiguous
    input ("expect A to be contiguous"), which BERT attention hands its output projection."""
    from optimum.quanto.nn import QLinear

    for module in model.modules():
        if isinstance(module, QLinear):
            module.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))
    return model


def quanto_class(kind: ModelKind):
    """optimum-quanto's wrapper for this kind (it ships one for causal LMs only)."""
    from optimum.quanto import QuantizedModelForCausalLM, QuantizedTransformersModel

    if kind == "causal-lm":
        return QuantizedModelForCausalLM
    return type("QuantizedModelForSequenceClassification", (QuantizedTransformersModel,),
                {"auto_class": AutoModelForSequenceClassification})


def _saved_quantization_config(path: Path) -> dict:
    """The checkpoint's quantization_config from config.json; {} for an unquantized or unreadable one."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config.get("quantization_config") or {}


def save_tokenizer(tokenizer, artifact: Path) -> None:
    tokenizer.save_pretrained(Path(artifact) / TOKENIZER_DIR)


def load_tokenizer(path: Path):
    """The tokenizer of a baseline artifact (its tokenizer/ dir) or of any checkpoint directory."""
    path = Path(path)
    if (path / TOKENIZER_DIR).is_dir():
        path = path / TOKENIZER_DIR
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
