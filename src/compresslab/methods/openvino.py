"""OpenVINO: the ONNX graph converted to OpenVINO IR (model.xml + model.bin as shipped), in fp32
or compressed by NNCF: post-training int8 quantization of weights and activations, or int8 / int4
weight compression.

int4 is data-aware: NNCF ranks the layers by the Hessian of their inputs on calibration text and
keeps the least robust ``1 - int4_ratio`` of them (and the embeddings) in int8;
AWQ and scale estimation fit the int4 scales to the calibration activations.

The task head stays in full precision (the one rule, models/precision.py), passed to NNCF as an
ignored scope. A head tied to the embedding (SmolLM2's lm_head) shares the embedding's weight
constant, stored as the embedding is: weight compression still compresses it for the embedding's
Gather; int8 quantizes no Gather, so there the shared tensor stays fp32 (SmolLM2 ov-int8: 251.8 MB,
perplexity 24.28; with its head in int8 it was 138.6 MB, perplexity 24.66).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compresslab.methods.base import Method, MethodUnsupported, StageContext
from compresslab.methods.onnx_export import calibration_feeds, export_to, full_precision_nodes
from compresslab.models.backends import OV_PRECISION, OV_PRECISIONS, ov_has_bf16
from compresslab.models.graph_runner import write_runtime
from compresslab.models.spec import ModelKind

log = logging.getLogger(__name__)

COMPRESSIONS = (None, "int8", "int8-weights", "int4-weights")
# The embedding tables (the constants the Gathers read): NNCF's int8 PTQ already stores an encoder's
# in int8 (MiniLM's ov-int8 IR holds its 30522 x 384 table as an i8 constant); "int4" compresses
# them further, group-wise asymmetric, before any other compression.
EMBEDDING_COMPRESSIONS = (None, "int4")
MODEL_FILE = "model.xml"
ONNX_FILE = "model.onnx"


def full_precision_ops(model, graph: Path, kind: ModelKind) -> list[str]:
    """Names of the OpenVINO MatMul ops converted from the ONNX nodes the full-precision rule keeps.

    The converter names such an op after its ONNX node, after the node's output when that is a
    graph output (a head's MatMul may become "logits"), or "<node>/WithoutBiases" for a Gemm's
    MatMul. A kept node with none of those names is an error: the rule would silently not apply.
    """
    matmuls = {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"}
    names = []
    for node in full_precision_nodes(graph, kind):
        candidates = [node.name, f"{node.name}/WithoutBiases", *node.output]
        found = [name for name in candidates if name in matmuls]
        if not found:
            raise ValueError(f"no OpenVINO MatMul converted from ONNX node {node.name} (looked for "
                             f"{', '.join(candidates)}): its module cannot be kept in full precision")
        names.extend(found)
    return names


def compress(model, compression: str, feeds: list[dict] | None, int4_ratio: float, group_size: int, awq: bool,
             keep: list[str]):
    """NNCF's compression of ``model``; the ops named in ``keep`` stay in full precision."""
    import nncf

    ignored = nncf.IgnoredScope(names=keep)
    if compression == "int8":
        return nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                             preset=nncf.QuantizationPreset.MIXED, subset_size=len(feeds), ignored_scope=ignored)
    if compression == "int8-weights":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, ratio=int4_ratio,
                                 group_size=group_size, dataset=nncf.Dataset(feeds), subset_size=len(feeds),
                                 sensitivity_metric=nncf.SensitivityMetric.HESSIAN_INPUT_ACTIVATION,
                                 awq=awq, scale_estimation=awq, ignored_scope=ignored)


def compress_embeddings(model, group_size: int):
    """The embedding tables alone in int4 (asymmetric, ``group_size`` values per scale along the
    embedding width): NNCF's weight compression with every MatMul ignored leaves just the
    Gather-fed constants; ``all_layers`` stops it keeping embeddings in its int8 backup precision."""
    import nncf

    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, ratio=1.0, group_size=group_size,
                                 all_layers=True, ignored_scope=nncf.IgnoredScope(types=["MatMul"]))


@dataclass(frozen=True)
class OpenVinoExport(Method):
    compression: str | None = None
    calibration_samples: int = 64  # int8 and int4-weights: texts of the task's training split
    int4_ratio: float = 0.6  # share of the weight-compressed layers in int4; the rest int8
    group_size: int = 64
    awq: bool = True  # int4-weights: activation-aware scales (AWQ) and scale estimation on the calibration text
    # the inference precision the artifact ships with (recorded in its runtime file and in each case's
    # runtime settings): f32 arithmetic, or bf16 where the CPU has it (the plugin's own default there)
    precision: str = OV_PRECISION
    embeddings: str | None = None  # EMBEDDING_COMPRESSIONS: the embedding tables' own compression
    embedding_group_size: int = 64
    family: ClassVar[str] = "openvino"
    requires_packages: ClassVar[tuple[str, ...]] = ("openvino", "nncf", "onnxruntime", "onnxscript")
    devices: ClassVar[tuple[str, ...]] = ("cpu",)  # no CUDA plugin; an Intel GPU is not a CUDA device

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"OpenVinoExport.compression must be one of {', '.join(map(str, COMPRESSIONS))}, "
                             f"got {self.compression!r}")
        if not 0 < self.int4_ratio <= 1:
            raise ValueError(f"OpenVinoExport.int4_ratio must be in (0, 1], got {self.int4_ratio}")
        if self.embeddings not in EMBEDDING_COMPRESSIONS:
            raise ValueError(f"OpenVinoExport.embeddings must be one of {', '.join(map(str, EMBEDDING_COMPRESSIONS))}, "
                             f"got {self.embeddings!r}")
        if self.embeddings and self.compression not in (None, "int8"):
            raise ValueError(f"OpenVinoExport.embeddings={self.embeddings!r} combines with compression None or 'int8' "
                             f"(weight compression sets the embeddings' precision itself), got {self.compression!r}")
        if self.precision not in OV_PRECISIONS:
            raise ValueError(f"OpenVinoExport.precision must be one of {', '.join(OV_PRECISIONS)}, "
                             f"got {self.precision!r}")

    def check_supported(self, kind, device: str) -> None:
        super().check_supported(kind, device)
        if self.embeddings and kind == "causal-lm":
            raise MethodUnsupported("a decoder's embedding is its output layer's weight if tied, and the head stays "
                                    "in full precision: embedding compression applies to classifiers")
        if self.precision == "bf16" and not ov_has_bf16():
            raise MethodUnsupported("this CPU has no bf16 arithmetic (OpenVINO would run the bf16 row in f32)")

    @property
    def uses_task_data(self) -> bool:  # type: ignore[override]  # calibration data enters the cache key
        return self.compression in ("int8", "int4-weights")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        import openvino as ov

        with tempfile.TemporaryDirectory(prefix="compresslab-ov-") as tmp:
            graph = Path(tmp) / ONNX_FILE
            export_to(src, ctx, graph)
            model = ov.convert_model(str(graph))
            if self.embeddings is not None:
                model = compress_embeddings(model, self.embedding_group_size)
            if self.compression is not None:
                feeds = calibration_feeds(graph, ctx, self.calibration_samples, src) if self.uses_task_data else None
                model = compress(model, self.compression, feeds, self.int4_ratio, self.group_size, self.awq,
                                 keep=full_precision_ops(model, graph, ctx.kind))
            # fp32 stays fp32 on disk (save_model would halve it to fp16 by default)
            ov.save_model(model, str(out / MODEL_FILE), compress_to_fp16=False)
        write_runtime(out, "openvino", MODEL_FILE, converted_from="torch.onnx dynamo", precision_hint=self.precision,
                      compression=self.compression, embeddings=self.embeddings)
