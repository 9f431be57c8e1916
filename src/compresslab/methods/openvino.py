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

int8 runs NNCF's SmoothQuant first (as NNCF does for every transformer-type PTQ): per input channel
j of each weighted MatMul, s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) divides the activation (a
Multiply inserted after the op producing it) and multiplies the weight's row j, so x @ W is unchanged
before quantization while the activation's outlier channels move into the weights. ``smooth_quant_alpha``
is that alpha for every MatMul (None: off); the build records what it did (records/smooth_quant.json).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compresslab.methods.base import Method, MethodUnsupported, StageContext
from compresslab.methods.onnx_export import calibration_feeds, export_to, full_precision_nodes
from compresslab.methods.training import write_record
from compresslab.models.backends import OV_PRECISION, OV_PRECISIONS, ov_has_bf16
from compresslab.models.graph_runner import write_runtime
from compresslab.models.precision import refuse_decoder_embedding_compression
from compresslab.models.spec import ModelKind

log = logging.getLogger(__name__)

COMPRESSIONS = (None, "int8", "int8-weights", "int4-weights")
# The embedding tables (the constants the Gathers read): NNCF's int8 PTQ already stores an encoder's
# in int8 (MiniLM's ov-int8 IR holds its 30522 x 384 table as an i8 constant); "int4" compresses
# them further, group-wise asymmetric, before any other compression.
EMBEDDING_COMPRESSIONS = (None, "int4")
MODEL_FILE = "model.xml"
ONNX_FILE = "model.onnx"
# NNCF's own SmoothQuant alpha for MatMuls in a transformer-type PTQ (nncf 3.4), which ov-int8 has
# always run with: nearly all of each channel's activation range moves into the weights
SMOOTH_QUANT_ALPHA = 0.95
SMOOTHING_SUFFIX = "/nncf_smooth_quant"  # NNCF's name for the Multiply holding a smoothing's activation scales
# what the activation scale reaches a MatMul through once quantized: the activation's FakeQuantize
PASS_THROUGH = ("FakeQuantize",)


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


def int8_parameters(smooth_quant_alpha: float | None):
    """NNCF's advanced parameters of the int8 PTQ: SmoothQuant on every MatMul at this alpha, or
    none (None; convolutions never, as NNCF's default)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    matmul = -1 if smooth_quant_alpha is None else smooth_quant_alpha  # NNCF: a negative alpha is off
    return AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=matmul))


def smoothed_matmuls(model) -> list[str]:
    """Names of the MatMuls whose input a SmoothQuant scale divides (directly, or through the
    activation's FakeQuantize once quantized)."""
    names = set()
    for op in model.get_ops():
        if op.get_type_name() != "Multiply" or not op.get_friendly_name().endswith(SMOOTHING_SUFFIX):
            continue
        consumers = [target.get_node() for target in op.output(0).get_target_inputs()]
        consumers += [target.get_node() for node in consumers if node.get_type_name() in PASS_THROUGH
                      for target in node.output(0).get_target_inputs()]
        names.update(node.get_friendly_name() for node in consumers if node.get_type_name() == "MatMul")
    return sorted(names)


def constant_only(node, depth: int = 6) -> bool:
    """Whether ``node`` computes from constants alone (a weight: a Constant, or an int8 one's
    Convert / Subtract / Multiply by its scale)."""
    if node.get_input_size() == 0:
        return node.get_type_name() == "Constant"
    return depth > 0 and all(constant_only(value.get_node(), depth - 1) for value in node.input_values())


def smoothing_record(model, smooth_quant_alpha: float | None) -> dict:
    """What SmoothQuant did, read from the IR: its alpha, the scale Multiplys it inserted, how many
    MatMuls they feed, out of the MatMuls with a weight."""
    scales = [op for op in model.get_ops()
              if op.get_type_name() == "Multiply" and op.get_friendly_name().endswith(SMOOTHING_SUFFIX)]
    weighted = [op for op in model.get_ops() if op.get_type_name() == "MatMul"
                and any(constant_only(value.get_node()) for value in op.input_values())]
    return {"alpha": smooth_quant_alpha, "ran": bool(scales), "scales": len(scales),
            "smoothed_matmuls": len(smoothed_matmuls(model)), "weight_matmuls": len(weighted)}


def compress(model, compression: str, feeds: list[dict] | None, int4_ratio: float, group_size: int, awq: bool,
             keep: list[str], smooth_quant_alpha: float | None = SMOOTH_QUANT_ALPHA):
    """NNCF's compression of ``model``; the ops named in ``keep`` stay in full precision."""
    import nncf

    ignored = nncf.IgnoredScope(names=keep)
    if compression == "int8":
        return nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                             preset=nncf.QuantizationPreset.MIXED, subset_size=len(feeds), ignored_scope=ignored,
                             advanced_parameters=int8_parameters(smooth_quant_alpha))
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
    # int8: SmoothQuant's migration strength on every MatMul, 0 (none) to 1 (all of each channel's activation
    # range into the weights); None: no SmoothQuant. The default is NNCF's own, which ov-int8 always ran with
    smooth_quant_alpha: float | None = SMOOTH_QUANT_ALPHA
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
        alpha = self.smooth_quant_alpha
        if alpha is not None and not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
                                      and 0 <= alpha <= 1):
            raise ValueError(f"OpenVinoExport.smooth_quant_alpha must be None (off) or a number in [0, 1], "
                             f"got {alpha!r}")
        if alpha != SMOOTH_QUANT_ALPHA and self.compression != "int8":
            raise ValueError(f"OpenVinoExport.smooth_quant_alpha={alpha!r} applies to compression 'int8' only "
                             f"(leave it at {SMOOTH_QUANT_ALPHA}), got compression {self.compression!r}")

    def check_supported(self, kind, device: str) -> None:
        super().check_supported(kind, device)
        refuse_decoder_embedding_compression(self.embeddings, kind)
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
                                 keep=full_precision_ops(model, graph, ctx.kind),
                                 smooth_quant_alpha=self.smooth_quant_alpha)
                if self.compression == "int8":
                    write_record(out, "smooth_quant", smoothing_record(model, self.smooth_quant_alpha))
            # fp32 stays fp32 on disk (save_model would halve it to fp16 by default)
            ov.save_model(model, str(out / MODEL_FILE), compress_to_fp16=False)
        write_runtime(out, "openvino", MODEL_FILE, converted_from="torch.onnx dynamo", precision_hint=self.precision,
                      compression=self.compression, embeddings=self.embeddings)
