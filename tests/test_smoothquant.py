"""SmoothQuant before OpenVINO's int8 PTQ (ov-int8-sq; ov-int8 runs NNCF's default alpha): on a tiny
Llama, the smoothing alone leaves the model's output unchanged (the scales divide the activations
and multiply the weights), the alpha reaches NNCF, the row's IR holds int8 weights read through
int8 activations, and the build records what SmoothQuant did."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from compresslab import registry
from compresslab.methods import openvino
from compresslab.methods.onnx_export import MODEL_FILE as ONNX_FILE, calibration_feeds
from compresslab.models.backends import ov_config
from compresslab.models.spec import RECORDS_DIR
from tiny import build_methods, stage_context, tiny_llama

ov = pytest.importorskip("openvino")
nncf = pytest.importorskip("nncf")

N_CALIBRATION = 8
BLOCK_LINEARS = 2 * 7  # tiny_llama: 2 blocks of q, k, v, o, gate, up, down
SQ_ROW = dataclasses.replace(registry.METHODS["ov-int8-sq"], calibration_samples=N_CALIBRATION)


def smooth_only(model, feeds, alpha):
    """The first step of NNCF's PTQ pipeline under the rows' own parameters, alone: SmoothQuant
    without the quantizers that follow it."""
    from nncf.quantization.algorithms.pipeline import Pipeline
    from nncf.quantization.algorithms.post_training.pipeline import create_ptq_pipeline
    from nncf.quantization.algorithms.smooth_quant.algorithm import SmoothQuant

    pipeline = create_ptq_pipeline(model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
                                   advanced_parameters=openvino.int8_parameters(alpha))
    step = pipeline.pipeline_steps[0]
    assert [type(algorithm) for algorithm in step] == [SmoothQuant]
    return Pipeline([step]).run(model.clone(), nncf.Dataset(feeds))


@dataclasses.dataclass
class Built:
    sq_dir: object  # the ov-int8-sq row's artifact, built by OpenVinoExport.apply
    fp32: object  # the fp32 IR, converted as apply converts it before any compression
    int8: object  # ov-int8's compression of it (NNCF's alpha), in memory
    smoothed: object  # the smoothing alone at ov-int8-sq's alpha
    calibration: list  # the feeds both rows calibrate on (apply takes the same first texts)
    held_out: list


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base, _, outs = build_methods(tmp_path_factory, tiny_llama(train_steps=5), "causal-lm",
                                  {"ort": registry.METHODS["ort"]})
    graph = outs["ort"] / ONNX_FILE
    sq_dir = tmp_path_factory.mktemp("causal-lm-ov-int8-sq")
    with pytest.MonkeyPatch.context() as patch:  # the row's export is the graph just exported (8 s saved)
        patch.setattr(openvino, "export_to", lambda src, ctx, path: shutil.copy(graph, path))
        SQ_ROW.apply(base, sq_dir, stage_context(base, "causal-lm"))
    feeds = calibration_feeds(graph, stage_context(base, "causal-lm"), N_CALIBRATION + 2, base)
    calibration = feeds[:N_CALIBRATION]
    fp32 = ov.convert_model(str(graph))
    int8_row = registry.METHODS["ov-int8"]
    int8 = openvino.compress(fp32.clone(), "int8", calibration, int8_row.int4_ratio, int8_row.group_size,
                             int8_row.awq, keep=openvino.full_precision_ops(fp32, graph, "causal-lm"),
                             smooth_quant_alpha=int8_row.smooth_quant_alpha)
    return Built(sq_dir, fp32, int8, smooth_only(fp32, calibration, SQ_ROW.smooth_quant_alpha),
                 calibration, feeds[N_CALIBRATION:])


def logits(model, feeds) -> np.ndarray:
    compiled = ov.Core().compile_model(model, "CPU", ov_config(torch.get_num_threads(), "f32"))
    return np.concatenate([compiled(feed)["logits"].reshape(-1) for feed in feeds])


def equivalent(a, b) -> bool:
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max()))


def scales(model) -> dict[str, np.ndarray]:
    """The smoothing Multiplys' activation scales, by name."""
    return {op.get_friendly_name(): op.input_value(1).get_node().get_data().copy() for op in model.get_ops()
            if op.get_type_name() == "Multiply" and op.get_friendly_name().endswith(openvino.SMOOTHING_SUFFIX)}


def sq_ir(built):
    return ov.Core().read_model(str(built.sq_dir / openvino.MODEL_FILE))


def test_smoothing_alone_is_equivalent_and_a_half_done_one_is_not(built):
    reference = logits(built.fp32, built.held_out)
    smoothed = built.smoothed
    # it did something: every block Linear reads a scaled activation (the tied head's shared weight is skipped)
    assert len(openvino.smoothed_matmuls(smoothed)) == BLOCK_LINEARS
    assert not all(np.allclose(s, 1) for s in scales(smoothed).values())
    assert equivalent(logits(smoothed, built.held_out), reference)
    # broken: the weights keep their scaling but one activation bypasses its division
    broken = smoothed.clone()
    multiply = next(op for op in broken.get_ops() if op.get_friendly_name() in scales(broken))
    for target in multiply.output(0).get_target_inputs():
        target.replace_source_output(multiply.input_value(0))
    assert not equivalent(logits(broken, built.held_out), reference)


def test_the_row_ir_holds_that_smoothing_and_ov_int8_another(built):
    smoothed, in_row, in_int8 = scales(built.smoothed), scales(sq_ir(built)), scales(built.int8)
    assert smoothed.keys() == in_row.keys() == in_int8.keys()
    # the scales proven equivalent above are the row's (same statistics, same alpha); NNCF's alpha gives others
    assert all(np.allclose(in_row[name], smoothed[name], rtol=1e-5) for name in smoothed)
    assert not any(np.allclose(in_int8[name], smoothed[name]) for name in smoothed)


def test_no_alpha_switches_smoothing_off():
    from nncf.quantization.algorithms.post_training.pipeline import create_ptq_pipeline
    from nncf.quantization.algorithms.smooth_quant.algorithm import SmoothQuant

    def smooths(alpha) -> bool:
        steps = create_ptq_pipeline(model_type=nncf.ModelType.TRANSFORMER,
                                    advanced_parameters=openvino.int8_parameters(alpha)).pipeline_steps
        return any(isinstance(algorithm, SmoothQuant) for step in steps for algorithm in step)

    assert smooths(0.5) and smooths(openvino.SMOOTH_QUANT_ALPHA) and not smooths(None)


def w8a8_matmuls(model) -> set[str]:
    """MatMuls that read an int8 weight constant and a FakeQuantize of an activation."""
    def int8_weight(node, depth=4) -> bool:
        if node.get_type_name() == "Constant":
            return node.get_element_type() == ov.Type.i8
        return depth > 0 and any(int8_weight(value.get_node(), depth - 1) for value in node.input_values())

    def quantized_activation(node) -> bool:
        return node.get_type_name() == "FakeQuantize" and not openvino.constant_only(node)

    return {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"
            and any(openvino.constant_only(value.get_node()) and int8_weight(value.get_node())
                    for value in op.input_values())
            and any(quantized_activation(value.get_node()) for value in op.input_values())}


def test_the_sq_row_is_int8_weights_and_activations_and_the_fp32_ir_is_not(built):
    model = sq_ir(built)
    w8a8 = w8a8_matmuls(model)
    assert len(w8a8) == BLOCK_LINEARS
    assert set(openvino.smoothed_matmuls(model)) == w8a8  # each quantized one behind its smoothing
    assert not w8a8_matmuls(built.fp32)  # broken input: the unquantized graph


def test_each_int8_row_records_whether_smoothquant_ran_and_its_alpha(built):
    # per block 4 scales (q/k/v share one, o, gate/up share one, down); the tied head is not smoothed
    expected = {"ran": True, "scales": 2 * 4, "smoothed_matmuls": BLOCK_LINEARS, "weight_matmuls": BLOCK_LINEARS + 1}
    record = json.loads((built.sq_dir / RECORDS_DIR / "smooth_quant.json").read_text())
    assert record == {"alpha": 0.5, **expected}
    assert openvino.smoothing_record(built.int8, openvino.SMOOTH_QUANT_ALPHA) == {"alpha": 0.95, **expected}
    # the record is read from the IR: the fp32 graph has no smoothing in it
    assert openvino.smoothing_record(built.fp32, None) == {
        "alpha": None, "ran": False, "scales": 0, "smoothed_matmuls": 0, "weight_matmuls": BLOCK_LINEARS + 1}


def test_the_two_rows_differ_in_the_alpha_alone_and_bad_alphas_are_refused():
    int8, sq = registry.METHODS["ov-int8"], registry.METHODS["ov-int8-sq"]
    assert int8.smooth_quant_alpha == openvino.SMOOTH_QUANT_ALPHA == 0.95 and sq.smooth_quant_alpha == 0.5
    assert dataclasses.replace(int8, smooth_quant_alpha=0.5) == sq
    for alpha in (1.5, -1, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match=r"smooth_quant_alpha must be None \(off\) or a number in \[0, 1\]"):
            openvino.OpenVinoExport(compression="int8", smooth_quant_alpha=alpha)
    with pytest.raises(ValueError, match="applies to compression 'int8' only"):
        openvino.OpenVinoExport(compression="int8-weights", smooth_quant_alpha=0.5)
    assert openvino.OpenVinoExport(compression="int8", smooth_quant_alpha=None).smooth_quant_alpha is None
