"""OpenVINO: the ONNX graph converted to OpenVINO IR (model.xml + model.bin as shipped), in fp32
or compressed by NNCF: post-training int8 quantization of weights and activations, or int8 / int4
weight compression.

int4 is data-aware: NNCF ranks the layers by the Hessian of their inputs on calibration text and
keeps the least robust ``1 - int4_ratio`` of them (and the embeddings and output layer) in int8;
AWQ and scale estimation fit the int4 scales to the calibration activations.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from compresslab.methods.base import Method, StageContext
from compresslab.methods.onnx_export import calibration_feeds, export_to
from compresslab.models.backends import OV_PRECISION
from compresslab.models.graph_runner import write_runtime

log = logging.getLogger(__name__)

COMPRESSIONS = (None, "int8", "int8-weights", "int4-weights")
MODEL_FILE = "model.xml"
ONNX_FILE = "model.onnx"


def compress(model, compression: str, feeds: list[dict] | None, int4_ratio: float, group_size: int, awq: bool):
    import nncf

    if compression == "int8":
        return nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                             preset=nncf.QuantizationPreset.MIXED, subset_size=len(feeds))
    if compression == "int8-weights":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, ratio=int4_ratio,
                                 group_size=group_size, dataset=nncf.Dataset(feeds), subset_size=len(feeds),
                                 sensitivity_metric=nncf.SensitivityMetric.HESSIAN_INPUT_ACTIVATION,
                                 awq=awq, scale_estimation=awq)


@dataclass(frozen=True)
class OpenVinoExport(Method):
    compression: str | None = None
    calibration_samples: int = 64  # int8 and int4-weights: texts of the task's training split
    int4_ratio: float = 0.6  # share of the weight-compressed layers in int4; the rest int8
    group_size: int = 64
    awq: bool = True  # int4-weights: activation-aware scales (AWQ) and scale estimation on the calibration text
    family: ClassVar[str] = "openvino"
    requires_packages: ClassVar[tuple[str, ...]] = ("openvino", "nncf", "onnxruntime", "onnxscript")
    devices: ClassVar[tuple[str, ...]] = ("cpu",)  # no CUDA plugin; an Intel GPU is not a CUDA device

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"OpenVinoExport.compression must be one of {', '.join(map(str, COMPRESSIONS))}, "
                             f"got {self.compression!r}")
        if not 0 < self.int4_ratio <= 1:
            raise ValueError(f"OpenVinoExport.int4_ratio must be in (0, 1], got {self.int4_ratio}")

    @property
    def uses_task_data(self) -> bool:  # type: ignore[override]  # calibration data enters the cache key
        return self.compression in ("int8", "int4-weights")

    def apply(self, src: Path, out: Path, ctx: StageContext) -> None:
        import openvino as ov

        with tempfile.TemporaryDirectory(prefix="compresslab-ov-") as tmp:
            graph = Path(tmp) / ONNX_FILE
            export_to(src, ctx, graph)
            model = ov.convert_model(str(graph))
            if self.compression is not None:
                feeds = calibration_feeds(graph, ctx, self.calibration_samples) if self.uses_task_data else None
                model = compress(model, self.compression, feeds, self.int4_ratio, self.group_size, self.awq)
            # fp32 stays fp32 on disk (save_model would halve it to fp16 by default)
            ov.save_model(model, str(out / MODEL_FILE), compress_to_fp16=False)
        write_runtime(out, "openvino", MODEL_FILE, converted_from="torch.onnx dynamo", precision_hint=OV_PRECISION,
                      compression=self.compression)
