"""Checkpoints whose module shapes differ from what their config describes.

Structured pruning (fewer heads and FFN neurons per block) and low-rank factorization (a
Linear replaced by two thin ones) save a plain safetensors state dict whose tensors do not fit
the modules ``from_pretrained`` would build from config.json. They also write a structure map
(``compresslab_structure.json``: module name -> its real shape), and ``load_structured``
rebuilds the model from config, reshapes those modules, then loads the weights strictly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

STRUCTURE_FILE = "compresslab_structure.json"
STRUCTURE_SCHEMA = 1

# Transformer blocks: BERT's encoder.layer.N, Llama's model.layers.N, GPT-2's h.N
_BLOCK = re.compile(r"(^|\.)(layer|layers|h)\.\d+\.")


class LowRankLinear(nn.Module):
    """``up(down(x))``: an out x in Linear as rank-r factors, r * (in + out) weights instead of in * out.

    Its sizes are not called in_features/out_features on purpose: code that finds Linear-like
    modules by those names (parameter counting, quantizers) must not take it for a dense layer.
    """

    def __init__(self, in_dim: int, out_dim: int, rank: int, bias: bool = True):
        super().__init__()
        self.down = nn.Linear(in_dim, rank, bias=False)
        self.up = nn.Linear(rank, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers inside the transformer blocks: what pruning and factorization act on.
    Embeddings, the pooler and the output head (classifier, lm_head) stay as they are."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and _BLOCK.search(name)}


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList holding the model's transformer blocks (the longest one, by name order)."""
    lists = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and re.search(r"(^|\.)(layer|layers|h)$", name)]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no transformer block list (encoder.layer / model.layers) found")
    return max(lists, key=lambda item: len(item[1]))


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def linear_entry(module: nn.Linear) -> dict[str, Any]:
    return {"type": "linear", "in": module.in_features, "out": module.out_features, "bias": module.bias is not None}


def lowrank_entry(module: LowRankLinear) -> dict[str, Any]:
    return {"type": "lowrank", "in": module.down.in_features, "out": module.up.out_features,
            "rank": module.down.out_features, "bias": module.up.bias is not None}


def attributes_entry(module: nn.Module, names: tuple[str, ...]) -> dict[str, Any]:
    """Plain attributes a module computed from config.json that no longer hold (an attention module
    with fewer heads of the same size): set again on the rebuilt module."""
    return {"type": "attributes", "values": {name: getattr(module, name) for name in names}}


def _build(entry: dict[str, Any]) -> nn.Module:
    if entry["type"] == "linear":
        return nn.Linear(entry["in"], entry["out"], bias=entry["bias"])
    if entry["type"] == "lowrank":
        return LowRankLinear(entry["in"], entry["out"], entry["rank"], bias=entry["bias"])
    raise ValueError(f"unknown module type {entry['type']!r} in {STRUCTURE_FILE}; valid: linear, lowrank, attributes")


def save_structured(model: nn.Module, out: Path, modules: dict[str, dict[str, Any]]) -> None:
    model.save_pretrained(out)
    (Path(out) / STRUCTURE_FILE).write_text(json.dumps({"schema": STRUCTURE_SCHEMA, "modules": modules}, indent=1))


def is_structured(path: Path) -> bool:
    return (Path(path) / STRUCTURE_FILE).is_file()


def load_structured(path: Path, auto_class) -> nn.Module:
    """Config -> model, reshape the mapped modules, load every tensor (tied ones may be absent)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    path = Path(path)
    structure = json.loads((path / STRUCTURE_FILE).read_text())
    if structure.get("schema") != STRUCTURE_SCHEMA:
        raise ValueError(f"{path / STRUCTURE_FILE}: schema {structure.get('schema')!r}, expected {STRUCTURE_SCHEMA}")
    config = AutoConfig.from_pretrained(path)
    model = auto_class.from_config(config, dtype=torch.float32)
    for name, entry in structure["modules"].items():
        if entry["type"] == "attributes":
            for attribute, value in entry["values"].items():
                setattr(model.get_submodule(name), attribute, value)
        else:
            replace_module(model, name, _build(entry))
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    untied = [key for key in missing if not _shares_storage(params, key, state)]
    if unexpected or untied:
        raise ValueError(f"{path}: weights do not match the structure map (missing {untied[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return model.eval()


def _shares_storage(params: dict[str, nn.Parameter], key: str, loaded: dict[str, torch.Tensor]) -> bool:
    """A key absent from the file is fine when tying made it the same tensor as a loaded one."""
    tensor = params.get(key)
    return tensor is not None and any(params.get(other) is tensor for other in loaded)
