"""SparseGPT and Wanda one-shot pruning of decoder LMs through llm-compressor, with calibration text.

Both prune each block Linear from the activations of calibration text: SparseGPT solves a
layer-wise reconstruction with the inverse Hessian, Wanda scores weights by |W| x ||x||. They
keep far more quality than magnitude pruning at the same sparsity (Frantar & Alistarh 2023;
Sun et al. 2023), which the suite measures against ``prune-l1-50``. The output is a plain dense
checkpoint with zeros (llm-compressor saves no sparse format for an unquantized model).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from compresslab.methods.base import Method, StageContext
from compresslab.methods.pruning import mark_semi_structured
from compresslab.methods.training import write_record
from compresslab.models.loading import load_pretrained, load_tokenizer
from compresslab.models.precision import ignore_regexes
from compresslab.models.spec import ModelKind
from compresslab.models.structure import block_linears

ALGORITHMS = ("sparsegpt", "wanda")
MASK_STRUCTURES = ("0:0", "2:4")  # llm-compressor's spelling: 0:0 is unstructured


def _modifier(algorithm: str, sparsity: float, mask_structure: str, kind: ModelKind):
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    modifier = SparseGPTModifier if algorithm == "sparsegpt" else WandaPruningModifier
    # the one full-precision rule (models/precision.py): the head (a small LM ties its lm_head to
    # the embedding) stays dense
    return modifier(sparsity=sparsity, mask_structure=mask_structure, targets=["Linear"],
                    ignore=ignore_regexes(kind))


@dataclass(frozen=True)
class OneShotSparsity(Method):
    algorithm: str = "sparsegpt"
    sparsity: float = 0.5
    mask_structure: str = "0:0"
    n_samples: int = 64
    seq_len: int = 512
    family: ClassVar[str] = "sparsegpt"
    uses_task_data: ClassVar[bool] = True
    requires_packages: ClassVar[tuple[str, ...]] = ("llmcompressor",)
    kinds: ClassVar[tuple[str, ...]] = ("causal-lm",)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"OneShotSparsity.algorithm must be one of {', '.join(ALGORITHMS)}, "
                             f"got {self.algorithm!r}")
        if self.mask_structure not in MASK_STRUCTURES:
            raise ValueError(f"OneShotSparsity.mask_structure must be one of {', '.join(MASK_STRUCTURES)}, "
                             f"got {self.mask_structure!r}")
        if not 0 < self.sparsity < 1:
            raise ValueError(f"OneShotSparsity.sparsity must be in (0, 1), got {self.sparsity}")
        if self.n_samples < 1 or self.seq_len < 16:
            raise ValueError(f"OneShotSparsity needs n_samples >= 1 and seq_len >= 16, got {self.n_samples}, "
                             f"{self.seq_len}")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        from datasets import Dataset
        from llmcompressor import oneshot

        tokenizer = load_tokenizer(ctx.base_dir)
        texts = ctx.calibration_texts(self.n_samples)
        dataset = Dataset.from_dict(dict(tokenizer(texts, truncation=True, max_length=self.seq_len)))
        on_gpu = ctx.device.startswith("cuda")
        # from a directory, so llm-compressor can read the config back from model.name_or_path
        model = load_pretrained(src, ctx.kind, dtype=torch.float32, device_map=ctx.device if on_gpu else None)
        oneshot(model=model, dataset=dataset, processor=tokenizer,
                recipe=[_modifier(self.algorithm, self.sparsity, self.mask_structure, ctx.kind)],
                num_calibration_samples=len(texts), max_seq_length=self.seq_len, shuffle_calibration_samples=False)
        model.save_pretrained(out)
        # llm-compressor writes its recipe beside the weights: a build record, not part of the model
        recipe = out / "recipe.yaml"
        write_record(out, "oneshot_sparsity", {"algorithm": self.algorithm, "calibration_texts": len(texts)})
        if recipe.exists():
            shutil.move(recipe, out / "records" / "recipe.yaml")
        if self.mask_structure == "2:4":
            mark_semi_structured(out, block_linears(model))
