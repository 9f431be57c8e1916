"""ONNX Runtime on a graph rewritten by its offline transformer optimizer
(``onnxruntime.transformers.optimizer``): LayerNorm, residual-add, GELU and bias fusions into ORT's
own operators (SkipLayerNormalization, BiasGelu, ...), the graph a performance engineer ships.

A row of its own (``ort-fused``), not the default of the ``ort*`` rows, for what was measured on
MiniLM (batch 1 x 64, 2 threads): on the dynamo exporter's graph the optimizer fuses norms and GELUs
but finds no attention pattern (no Attention node); the legacy TorchScript export that it does fuse
fully bakes the traced length into BERT's mask arithmetic (wrong logits at other lengths, see
models/export.py), so it is never used. The fused fp32 graph is exact (max |logit error| 2e-6 on
MiniLM). On the int8 graph the fusions bought nothing, so ``ort-int8`` keeps the plain export.
Encoders only: for decoders the optimizer's GPT-2/Llama patterns expect the exporters of
optimum, not this graph.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compresslab.methods.base import Method, MethodUnsupported, StageContext
from compresslab.methods.onnx_export import MODEL_FILE, export_to
from compresslab.models.export import OPSET
from compresslab.models.graph_runner import write_runtime

MODEL_TYPES = {"bert": "bert"}  # config.model_type -> the optimizer's model_type


def fuse(source: Path, target: Path, model_type: str, num_heads: int, hidden_size: int) -> dict[str, int]:
    """The optimizer's graph of ``source`` at ``target``; returns the fused operators it made (only
    those with a count), an empty dict meaning nothing was fused."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(source), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size)
    optimized.save_model_to_file(str(target))
    return {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}


@dataclass(frozen=True)
class OrtFused(Method):
    family: ClassVar[str] = "ort"
    kinds: ClassVar[tuple[str, ...]] = ("classifier",)
    requires_packages: ClassVar[tuple[str, ...]] = ("onnxruntime", "onnxscript")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(src)
        model_type = MODEL_TYPES.get(config.model_type)
        if model_type is None:
            raise MethodUnsupported(f"ORT's transformer optimizer is wired here for {', '.join(MODEL_TYPES)} "
                                    f"encoders, not {config.model_type!r}")
        with tempfile.TemporaryDirectory(prefix="compresslab-ort-fused-") as tmp:
            exported = Path(tmp) / MODEL_FILE
            export_to(src, ctx, exported)
            fused = fuse(exported, out / MODEL_FILE, model_type, config.num_attention_heads, config.hidden_size)
        if not fused:
            raise RuntimeError(f"ORT's transformer optimizer fused nothing in the {config.model_type} graph: "
                               "the row would time the plain export under another name")
        write_runtime(out, "onnxruntime", MODEL_FILE, exporter="torch.onnx dynamo", opset=OPSET,
                      optimizer="onnxruntime.transformers.optimizer", fused_operators=fused)
