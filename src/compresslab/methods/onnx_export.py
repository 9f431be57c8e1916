"""Export to ONNX and run on ONNX Runtime: fp32, dynamic int8, or static int8 (QDQ) calibrated on
the task's training data. The artifact is the .onnx file as shipped; its size is what is recorded.
"""

from __future__ import annotations

import ast
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from compresslab.methods.base import Method, StageContext
from compresslab.models.backends import OrtBackend
from compresslab.models.export import OPSET, export_graph
from compresslab.models.graph_runner import GraphRunner, write_runtime
from compresslab.models.loading import checkpoint_tokenizer, load_pretrained
from compresslab.models.precision import refuse_decoder_embedding_compression, stays_full_precision
from compresslab.models.spec import ModelKind

log = logging.getLogger(__name__)

QUANTIZATIONS = (None, "dynamic-int8", "static-int8")
# The embedding tables (the Gathers' weights): dynamic int8 already stores them in uint8 (per
# tensor); "int4" stores them block-wise in 4 bits (ORT's GatherBlockQuantized) before it runs.
EMBEDDING_COMPRESSIONS = (None, "int4")
MODEL_FILE = "model.onnx"
WEIGHT_OPS = ("MatMul", "Gemm")  # the ops a Linear exports to, whose weights a quantizer converts
# ORT's calibrator keeps every calibrated activation of every sample in memory until the end:
# for SmolLM2 about 190 MB per 128-token sample
CALIBRATION_MAX_TOKENS = {"classifier": 128, "causal-lm": 128}


def export_to(src: Path, ctx: StageContext, path: Path) -> None:
    """The stage's input checkpoint as an fp32 ONNX graph at ``path`` (traced on ids of the
    checkpoint's own tokenizer: a trimmed vocabulary has fewer rows)."""
    model = load_pretrained(src, ctx.kind, dtype=torch.float32)
    export_graph(model, ctx.kind, checkpoint_tokenizer(src, ctx.base_dir), path)


def calibration_feeds(graph: Path, ctx: StageContext, n: int, src: Path) -> list[dict]:
    """``n`` graph feeds (one text each) from the task's training split, built by the same runner
    code that feeds the graph at inference: the decoder's position_ids and empty past included.
    ``src``: the checkpoint the graph was exported from, whose tokenizer numbers the ids."""
    tokenizer = checkpoint_tokenizer(src, ctx.base_dir)
    runner = GraphRunner(OrtBackend(graph, "cpu", torch.get_num_threads()), tokenizer, "cpu", ctx.kind)
    if ctx.kind == "classifier":
        texts = [example.text for example in ctx.training_examples(n)]
    else:
        texts = ctx.calibration_texts(n)
    feeds = []
    for text in texts:
        inputs = tokenizer(text, truncation=True, max_length=CALIBRATION_MAX_TOKENS[ctx.kind], return_tensors="pt")
        feeds.append(runner.feeds(dict(inputs)))
    return feeds


def without_shape_hints(source: Path, target: Path) -> None:
    """The dynamo exporter leaves shape hints (value_info) that ORT's quantizer re-infers and
    finds inconsistent ("Inferred shape and existing shape differ"); they are only hints."""
    import onnx

    graph = onnx.load(str(source))
    del graph.graph.value_info[:]
    onnx.save(graph, str(target))


def module_path(node) -> str:
    """Qualified name of the innermost module the dynamo exporter traced ``node`` in ('' outside
    any): its metadata lists the module paths from the root, then the op's own name."""
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    names = ast.literal_eval(scopes) if scopes else []
    return names[-2] if len(names) >= 2 else ""


def full_precision_nodes(graph: Path, kind: ModelKind, also: tuple[str, ...] = ()) -> list:
    """The graph's weight nodes (MatMul, Gemm) traced inside a module that the one full-precision
    rule keeps (models/precision.py). Every model has a head, so finding none means the graph
    lost the module paths the rule needs: an error, never a silently quantized head.

    A head tied to the embedding (SmolLM2's lm_head) reads the embedding's tensor through a
    Transpose: its MatMul stays in full precision, its weight is stored as the embedding's is."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    kept = [node for node in model.graph.node
            if node.op_type in WEIGHT_OPS and stays_full_precision(module_path(node), kind, also)]
    if not kept:
        raise ValueError(f"{graph.name}: no MatMul/Gemm node traced inside the task head; the exporter "
                         "recorded no module paths, so the full-precision rule cannot be applied")
    return kept


def ort_node_names(nodes) -> list[str]:
    """Names for ORT's ``nodes_to_exclude``: dynamic quantization first rewrites each Gemm as
    "<name>_MatMul" plus "<name>_Add" and matches the exclusions against the new names."""
    return [name for node in nodes
            for name in ((node.name, f"{node.name}_MatMul") if node.op_type == "Gemm" else (node.name,))]


def with_int4_embeddings(source: Path, target: Path, block_size: int) -> None:
    """The graph with its embedding tables (every Gather's constant weight) in asymmetric 4 bits,
    ``block_size`` values per scale along the embedding width: ORT's GatherBlockQuantized."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    graph = onnx.load(str(source))
    del graph.graph.value_info[:]  # see without_shape_hints
    quantizer = MatMulNBitsQuantizer(graph, bits=4, block_size=block_size, is_symmetric=False,
                                     op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
    quantizer.process()
    onnx.save(quantizer.model.model, str(target))


def quantize_dynamic_int8(source: Path, target: Path, weight_matmuls_only: bool, exclude: list[str],
                          contrib_ops: bool = False) -> None:
    """Int8 weights (per channel) for MatMul/Gather, activations quantized on the fly (one scale
    per tensor). ``exclude``: MatMul nodes kept in fp32. ``contrib_ops``: the graph holds ORT's own
    operators (int4 embeddings), whose outputs ONNX shape inference cannot type: they are float."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="compresslab-ort-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        without_shape_hints(source, prepared)
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=exclude, extra_options={
                             "MatMulConstBOnly": weight_matmuls_only,
                             **({"DefaultTensorType": onnx.TensorProto.FLOAT} if contrib_ops else {})})


class FeedReader:
    """onnxruntime.quantization's CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def quantize_static_int8(source: Path, target: Path, feeds: list[dict], kind: str, exclude: list[str]) -> None:
    """QDQ int8, activation ranges calibrated (min-max) on the feeds. A decoder gets its weight
    MatMuls quantized and nothing else: int8 attention products, norms or the residual stream
    wreck its perplexity."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    decoder = kind == "causal-lm"
    with tempfile.TemporaryDirectory(prefix="compresslab-ort-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        without_shape_hints(source, prepared)
        quantize_static(str(prepared), str(target), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=["MatMul"] if decoder else None, nodes_to_exclude=exclude,
                        # not CalibMaxIntermediateOutputs: ORT 1.31 drops the flushed samples' ranges
                        # ("No data is collected"); memory is bounded by the sample count instead
                        extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": False})


@dataclass(frozen=True)
class OrtExport(Method):
    quantization: str | None = None
    calibration_samples: int = 32  # static-int8 only: texts of the task's training split
    weight_matmuls_only: bool = True  # dynamic-int8: quantize MatMuls with a weight operand only
    # Decoders keep these layers in fp32 besides the task head (the full-precision rule's ``also``).
    # Their inputs (the SwiGLU products) carry outliers that one int8 scale per tensor cannot hold:
    # on SmolLM2 dynamic int8 of every MatMul gave perplexity 38.05 (fp32 21.53); with the 30 MLP
    # down-projections in fp32, 23.06.
    decoder_fp32_modules: tuple[str, ...] = ("down_proj",)
    embeddings: str | None = None  # EMBEDDING_COMPRESSIONS, with dynamic-int8
    embedding_block_size: int = 64
    family: ClassVar[str] = "ort"
    requires_packages: ClassVar[tuple[str, ...]] = ("onnxruntime", "onnxscript")

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"OrtExport.quantization must be one of {', '.join(map(str, QUANTIZATIONS))}, "
                             f"got {self.quantization!r}")
        if self.embeddings not in EMBEDDING_COMPRESSIONS:
            raise ValueError(f"OrtExport.embeddings must be one of {', '.join(map(str, EMBEDDING_COMPRESSIONS))}, "
                             f"got {self.embeddings!r}")
        if self.embeddings and self.quantization != "dynamic-int8":
            raise ValueError(f"OrtExport.embeddings={self.embeddings!r} combines with quantization 'dynamic-int8' "
                             f"only, got {self.quantization!r}")

    def check_supported(self, kind, device: str) -> None:
        super().check_supported(kind, device)
        refuse_decoder_embedding_compression(self.embeddings, kind)

    @property
    def uses_task_data(self) -> bool:  # type: ignore[override]  # calibration data enters the cache key
        return self.quantization == "static-int8"

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        target = out / MODEL_FILE
        if self.quantization is None:
            export_to(src, ctx, target)
        else:
            with tempfile.TemporaryDirectory(prefix="compresslab-onnx-") as tmp:
                fp32 = Path(tmp) / MODEL_FILE
                export_to(src, ctx, fp32)
                also = self.decoder_fp32_modules if ctx.kind == "causal-lm" else ()
                exclude = ort_node_names(full_precision_nodes(fp32, ctx.kind, also))
                if self.quantization == "dynamic-int8":
                    graph = fp32
                    if self.embeddings == "int4":
                        graph = Path(tmp) / "embeddings-int4.onnx"
                        with_int4_embeddings(fp32, graph, self.embedding_block_size)
                    quantize_dynamic_int8(graph, target, self.weight_matmuls_only, exclude,
                                          contrib_ops=self.embeddings is not None)
                else:
                    feeds = calibration_feeds(fp32, ctx, self.calibration_samples, src)
                    quantize_static_int8(fp32, target, feeds, ctx.kind, exclude)
        write_runtime(out, "onnxruntime", MODEL_FILE, exporter="torch.onnx dynamo", opset=OPSET,
                      quantization=self.quantization, embeddings=self.embeddings)
