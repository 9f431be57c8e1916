"""Inference runners: what tasks and the timer call. Eager PyTorch here; other runtimes add theirs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compresslab.models.formats import saved_format
from compresslab.models.loading import checkpoint_tokenizer, load_pretrained
from compresslab.models.graph_runner import GraphRunner, load_graph_runner, runtime_of
from compresslab.models.spec import ModelKind


@dataclass
class TorchRunner:
    model: torch.nn.Module
    tokenizer: Any
    device: str
    kind: ModelKind
    # False for formats whose weights fail under inference_mode (see models/formats.py): no_grad
    # is the same computation without that fast path.
    inference_mode: bool = True

    def logits(self, inputs: dict[str, torch.Tensor], keep_last: int | None = None) -> torch.Tensor:
        moved = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        extra = {}
        if self.is_causal_lm:
            # One full forward pass: no KV cache to allocate; optionally skip the output
            # projection (vocabulary-wide, the costliest matmul) for positions nobody reads.
            extra["use_cache"] = False
            if keep_last is not None:
                extra["logits_to_keep"] = keep_last
        with torch.inference_mode() if self.inference_mode else torch.no_grad():
            return self.model(**moved, **extra).logits

    @property
    def is_causal_lm(self) -> bool:
        return self.kind == "causal-lm"

    @property
    def settings(self) -> dict[str, Any]:
        return {"runtime": "torch", "intra_op_threads": torch.get_num_threads(),
                "inter_op_threads": torch.get_num_interop_threads()}

    # The decode loop, as GraphRunner's: state = the KV cache after the last call.
    def start(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return self._forward(input_ids, None)

    def step(self, token_ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self._forward(token_ids, state)

    def _forward(self, ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        with torch.inference_mode() if self.inference_mode else torch.no_grad():
            out = self.model(input_ids=ids.to(self.device), past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], out.past_key_values

    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_runner(artifact: Path, base: Path, kind: ModelKind, device: str) -> TorchRunner | GraphRunner:
    """The artifact's model with the tokenizer of its token ids: its own if it ships one (a trimmed
    vocabulary), else the baseline's (models/loading.py checkpoint_tokenizer)."""
    runtime = runtime_of(artifact)
    if runtime is not None and runtime["runtime"] == "llama.cpp":  # a GGUF file (methods/gguf_export.py)
        from compresslab.models.llama_cpp_runner import load_llama_cpp_runner

        return load_llama_cpp_runner(artifact, checkpoint_tokenizer(artifact, base), kind, device, runtime)
    if runtime is not None:  # an exported graph runs on its own runtime
        return load_graph_runner(artifact, checkpoint_tokenizer(artifact, base), kind, device, runtime)
    model = load_pretrained(artifact, kind, device=device, dtype="auto")
    if device.startswith("cuda"):
        model = semi_structured_on_gpu(model, Path(artifact))
    return TorchRunner(model, checkpoint_tokenizer(artifact, base), device, kind,
                       inference_mode=saved_format(artifact).inference_mode)


SPARSITY_FILE = "compresslab_sparsity.json"  # written by the 2:4 pruning methods


def semi_structured_on_gpu(model: torch.nn.Module, artifact: Path) -> torch.nn.Module:
    """2:4 checkpoints run on the GPU's sparse tensor cores: torchao converts the listed Linear
    weights to semi-structured sparse tensors (fp16, the dtype those kernels take). On the CPU
    they stay dense, where 2:4 zeros buy no speed."""
    marker = artifact / SPARSITY_FILE
    if not marker.is_file():
        return model
    from torchao.sparsity import SemiSparseWeightConfig, sparsify_

    names = set(json.loads(marker.read_text())["modules"])
    model = model.to(torch.float16)
    sparsify_(model, SemiSparseWeightConfig(), filter_fn=lambda _, fqn: fqn in names)
    return model


def count_params(path: Path) -> int:
    """Parameters of an unquantized safetensors checkpoint, read from the file headers only
    (tied weights are stored once, so they count once, as in ``model.parameters()``)."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {path}")
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                total += math.prod(handle.get_slice(name).get_shape())
    return total
