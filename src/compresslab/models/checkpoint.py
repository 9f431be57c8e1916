"""Baselines from checkpoints a user already has: a local directory in save_pretrained layout, or a
GGUF file dequantized once to fp32. The hub source (hub.py) and the embedded SmolLM2 build on the
same two steps, so a checkpoint becomes a baseline the same way wherever it came from."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compresslab.errors import ModelUnavailable
from compresslab.models.spec import ModelKind

MULTI_LABEL = "multi_label_classification"  # transformers' problem_type: sigmoid outputs, BCE loss


def copy_as_baseline(path: Path, kind: ModelKind, out: Path, problem_type: str | None = None) -> None:
    """The checkpoint at ``path`` as the fp32 baseline in ``out`` (model files + tokenizer/).
    ``problem_type`` tags a multi-label classifier whose config does not say so, so that recovery
    fine-tunes train it with its own (binary cross-entropy) loss."""
    from compresslab.models.loading import load_pretrained, load_tokenizer, save_tokenizer

    model = load_pretrained(path, kind, dtype="float32")
    if problem_type:
        model.config.problem_type = problem_type
    model.save_pretrained(out)
    save_tokenizer(load_tokenizer(path), out)


def dequantize_gguf(gguf: Path, out: Path) -> None:
    """A llama.cpp GGUF file as an fp32 Llama checkpoint in ``out`` (model files + tokenizer/)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from compresslab.models.loading import save_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = dequantized.config
    # The GGUF loader tags the config as quantized; a plain fp32 Llama must not carry that tag.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(dequantized.state_dict(), strict=True)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)


def directory_fingerprint(path: Path) -> dict[str, Any]:
    """A local checkpoint by its files' names, sizes and modification times: rewriting a checkpoint
    rebuilds its artifacts, without hashing gigabytes on every run."""
    files = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in path.iterdir() if p.is_file())
    return {"source": "local", "path": str(path), "files": files}


@functools.cache
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    from compresslab.assets import sha256_file

    return sha256_file(path)


@dataclass(frozen=True)
class LocalCheckpoint:
    """A checkpoint directory (config.json and weights, tokenizer files beside them)."""

    model_id: str
    path: Path
    kind: ModelKind
    problem_type: str | None = None

    def check_available(self) -> None:
        if not (self.path / "config.json").is_file():
            raise ModelUnavailable(f"{self.model_id}: {self.path} has no config.json (not a checkpoint directory)")

    def fingerprint(self) -> dict[str, Any]:
        return {**directory_fingerprint(self.path), "problem_type": self.problem_type}

    def build(self, out: Path) -> None:
        copy_as_baseline(self.path, self.kind, out, self.problem_type)


@dataclass(frozen=True)
class GGUFCheckpoint:
    """A llama.cpp GGUF file of a Llama-architecture causal LM, dequantized once to fp32."""

    model_id: str
    path: Path

    def check_available(self) -> None:
        if not self.path.is_file():
            raise ModelUnavailable(f"{self.model_id}: GGUF file {self.path} does not exist")

    def fingerprint(self) -> dict[str, Any]:
        stat = self.path.stat()
        return {"source": "gguf", "path": str(self.path), "sha256": _file_sha256(self.path, stat.st_size,
                                                                                 stat.st_mtime_ns)}

    def build(self, out: Path) -> None:
        dequantize_gguf(self.path, out)
