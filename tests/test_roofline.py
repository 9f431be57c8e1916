"""The roofline column: the probe of this machine's peaks, the counted work of a forward, the
fractions, and how records and reports carry them (trackers/roofline.py)."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from compresslab import report, report_html, results
from compresslab.results import CaseRecord, CaseResult
from compresslab.trackers import roofline

SMALL = roofline.ProbeSizes(gemm_n={"fp32": 64, "bf16": 64, "int8": 64}, stream_bytes=1 << 20, warmup=1, reps=2)


# --- the probe ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peaks():
    return roofline.probe("cpu", SMALL)


def test_probe_gives_positive_finite_figures_for_every_dtype_or_a_reason(peaks):
    assert set(peaks.gflops) | set(peaks.skipped) == {"fp32", "bf16", "int8"}
    assert not set(peaks.gflops) & set(peaks.skipped)
    for dtype, gflops in peaks.gflops.items():
        assert math.isfinite(gflops) and gflops > 0, dtype
    assert all(isinstance(reason, str) and reason for reason in peaks.skipped.values())
    assert math.isfinite(peaks.bandwidth_gbs) and peaks.bandwidth_gbs > 0
    assert peaks.details["stream"] == "read" and peaks.details["stream_bytes"] == 1 << 20
    assert peaks.details["threads"] == torch.get_num_threads()


def test_probe_record_has_a_fixed_shape_and_round_trips_through_json(peaks):
    document = json.loads(json.dumps(peaks.as_json()))
    assert {"peak_gflops", "bandwidth_gbs", "skipped", "device", "threads", "gemm_n", "stream", "stream_bytes",
            "last_level_cache_bytes", "timing"} == set(document)
    assert roofline.Peaks.from_json(document) == peaks


def test_int8_gemm_is_checked_exactly_and_skipped_with_a_reason_when_broken(monkeypatch):
    problem = roofline.int8_gemm_problem("cpu")
    assert problem is None or "torch._int_mm" in problem
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: torch.zeros(a.shape[0], b.shape[1], dtype=torch.int32))
    assert "differs from the int32 product" in roofline.int8_gemm_problem("cpu")
    peaks = roofline.probe("cpu", SMALL)
    assert "int8" not in peaks.gflops and "differs" in peaks.skipped["int8"]


def test_best_seconds_synchronizes_around_every_timed_call_and_keeps_the_fastest():
    """The CUDA path's logic on CPU: a fake clock and a fake synchronize record the order of events."""
    events, ticks = [], iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])

    def clock():
        events.append("clock")
        return next(ticks)

    best = roofline.best_seconds(lambda: events.append("call"), lambda: events.append("sync"), warmup=1, reps=3,
                                 clock=clock)
    assert best == 1.0
    assert events == ["call", "sync"] + ["clock", "call", "sync", "clock"] * 3
    with pytest.raises(ValueError, match="reps must be >= 1"):
        roofline.best_seconds(lambda: None, lambda: None, warmup=0, reps=0)


def test_cuda_synchronizer_calls_torch_cuda_synchronize(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    roofline.synchronizer("cuda:1")()
    roofline.synchronizer("cpu")()
    assert calls == ["cuda:1"]


# --- counting -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])  # mm and addmm
def test_flops_of_a_linear_are_2mnk(bias):
    m, k, n = 5, 48, 24
    layer = torch.nn.Linear(k, n, bias=bias)
    work = roofline.count_forward(lambda: layer(torch.randn(m, k)), layer)
    assert work.flops == 2 * m * n * k
    assert work.flops_by_dtype == {"fp32": 2 * m * n * k} and work.compute_dtype == "fp32" and work.complete


def test_flops_are_tallied_by_the_dtype_the_matmul_computes_in():
    layer = torch.nn.Linear(32, 16).to(torch.bfloat16)
    work = roofline.count_forward(lambda: layer(torch.randn(4, 32, dtype=torch.bfloat16)), layer)
    assert work.flops_by_dtype == {"bf16": 2 * 4 * 16 * 32}


def test_int8_dynamic_quantization_counts_as_int8():
    pytest.importorskip("torchao")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    with torch.inference_mode():
        work = roofline.count_forward(lambda: model(torch.randn(8, 64)), model)
    assert work.flops_by_dtype == {"int8": 2 * 8 * 32 * 64} and work.complete


class HiddenKernel(torch.nn.Module):
    """A Linear-like module whose matmul runs outside torch (numpy): no counter can see it."""

    in_features, out_features = 16, 8

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(8, 16), requires_grad=False)

    def forward(self, x):
        return torch.from_numpy(x.detach().numpy() @ self.weight.numpy().T)


def test_a_linear_whose_kernel_the_counter_cannot_see_makes_the_count_incomplete():
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), HiddenKernel())
    work = roofline.count_forward(lambda: model(torch.randn(2, 16)).sum(), model)
    assert work.uncounted == ("1",) and not work.complete
    assert work.flops == 2 * 2 * 16 * 16  # only what it saw


# --- the fractions -------------------------------------------------------------------------------------


def test_fractions_on_fixed_inputs():
    assert roofline.compute_fraction(2e9, 0.01, 400.0) == pytest.approx(0.5)
    assert roofline.memory_fraction(1e8, 50.0, 10.0) == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, math.nan, math.inf, None, True, "1"])
def test_a_missing_zero_or_non_finite_input_gives_no_fraction(bad):
    assert roofline.compute_fraction(2e9, bad, 400.0) is None
    assert roofline.compute_fraction(bad, 0.01, 400.0) is None
    assert roofline.compute_fraction(2e9, 0.01, bad) is None
    assert roofline.memory_fraction(1e8, bad, 10.0) is None
    assert roofline.memory_fraction(1e8, 50.0, bad) is None


FIXED_PEAKS = roofline.Peaks({"fp32": 100.0, "int8": 400.0}, 10.0, {"bf16": "not here"}, {})


def test_add_fractions_holds_each_workload_against_its_peak():
    clf = CaseResult(forward_flops=10**9, roofline_dtype="int8", latency_p50_ms=5.0)
    roofline.add_fractions(clf, FIXED_PEAKS)
    assert clf.roofline_compute == pytest.approx(0.5) and clf.roofline_peak_gflops == 400.0
    assert clf.roofline_memory is None  # no decode
    lm = CaseResult(forward_flops=10**9, roofline_dtype="fp32", latency_p50_ms=20.0, size_bytes=2 * 10**8,
                    decode_tokens_per_s=25.0)
    roofline.add_fractions(lm, FIXED_PEAKS)
    assert lm.roofline_compute == pytest.approx(0.5) and lm.roofline_memory == pytest.approx(0.5)


def test_add_fractions_gives_none_for_nan_latency_unmeasured_dtype_or_skipped_case():
    nan = CaseResult(forward_flops=10**9, roofline_dtype="fp32", latency_p50_ms=math.nan)
    roofline.add_fractions(nan, FIXED_PEAKS)
    assert nan.roofline_compute is None
    zero = CaseResult(forward_flops=10**9, roofline_dtype="fp32", latency_p50_ms=0.0)
    roofline.add_fractions(zero, FIXED_PEAKS)
    assert zero.roofline_compute is None
    bf16 = CaseResult(forward_flops=10**9, roofline_dtype="bf16", latency_p50_ms=1.0)  # its peak was skipped
    roofline.add_fractions(bf16, FIXED_PEAKS)
    assert bf16.roofline_compute is None and bf16.roofline_peak_gflops is None
    skipped = CaseResult()
    roofline.add_fractions(skipped, FIXED_PEAKS)
    assert skipped.measured() == {}


# --- graphs and cases ----------------------------------------------------------------------------------


def _ov_artifact(tmp_path, quantized: bool):
    layers = '<layer id="3" type="FakeQuantize" name="fq"/>' if quantized else ""
    (tmp_path / "model.xml").write_text(f'<net><layers><layer id="1" type="MatMul"/>{layers}</layers></net>')
    (tmp_path / "compresslab_runtime.json").write_text(json.dumps({"runtime": "openvino", "model": "model.xml"}))
    return tmp_path


def test_openvino_graph_dtype_from_its_fakequantize_or_precision_hint(tmp_path):
    runtime = {"runtime": "openvino", "model": "model.xml"}
    assert roofline.graph_compute_dtype(_ov_artifact(tmp_path, True), runtime, {"precision": "bf16"}) == "int8"
    assert roofline.graph_compute_dtype(_ov_artifact(tmp_path, False), runtime, {"precision": "bf16"}) == "bf16"
    assert roofline.graph_compute_dtype(_ov_artifact(tmp_path, False), runtime, {"precision": "f32"}) == "fp32"


@pytest.mark.parametrize("op, dtype", [("MatMul", "fp32"), ("MatMulInteger", "int8")])
def test_onnx_graph_dtype_from_its_operators(tmp_path, op, dtype):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 2]) for name in "ab"]
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], "g", inputs,
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 2])])
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    assert roofline.graph_compute_dtype(tmp_path, {"runtime": "onnxruntime", "model": "model.onnx"}, {}) == dtype


def test_case_work_counts_a_torch_artifact_and_takes_a_graphs_from_its_source(tmp_path):
    layer = torch.nn.Linear(8, 4)
    runner = SimpleNamespace(model=layer, logits=lambda inputs: layer(inputs["x"]))
    counted = roofline.torch_work(runner, {"x": torch.randn(3, 8)})
    torch_dir = tmp_path / "torch"
    torch_dir.mkdir()
    work = roofline.case_work(torch_dir, runner, lambda: counted)
    assert (work.flops, work.compute_dtype, work.note) == (2 * 3 * 4 * 8, "fp32", None)
    (tmp_path / "graph").mkdir()
    graph = _ov_artifact(tmp_path / "graph", True)
    graph_runner = SimpleNamespace(model=None, settings={"precision": "f32"})
    work = roofline.case_work(graph, graph_runner, lambda: counted)
    assert (work.flops, work.compute_dtype) == (2 * 3 * 4 * 8, "int8")
    orphan = roofline.case_work(graph, graph_runner, lambda: None)
    assert orphan.flops is None and "no torch checkpoint" in orphan.note


# --- records and reports ---------------------------------------------------------------------------------


def _record(**fields):
    return CaseRecord("test[m-x]", "m", "x", "passed", CaseResult(latency_p50_ms=1.0, **fields))


def test_report_shows_the_roofline_columns():
    rows = [_record(roofline_compute=0.123, roofline_dtype="int8", roofline_peak_gflops=400.0,
                    roofline_bandwidth_gbs=9.5, roofline_memory=0.456)]
    table = report.render_table(rows)
    assert "% peak" in table.splitlines()[0] and "decode % BW" in table.splitlines()[0]
    assert "12.3% int8" in table and "45.6%" in table and "int8 400 GFLOP/s, 9.5 GB/s" in table
    assert "| % peak | decode % BW |" in report_html.markdown_table(rows)


def test_records_of_older_runs_without_the_fields_load_and_report(tmp_path):
    old = {"name": "test[m-x]", "model": "m", "chain": "x", "outcome": "passed",
           "extra_info": {"model": "m", "chain": "x", "latency_p50_ms": 2.0, "size_bytes": 1000}}
    record = CaseRecord.from_sidecar(old)
    assert record.result.roofline_compute is None and record.result.forward_flops is None
    row = report.row(record)
    assert row[-2:] == ("-", "-")
    assert "% peak:" not in report.render_table([record])  # the note explains only figures shown


def test_roofline_fields_survive_the_sidecar_and_the_peaks_sit_in_machine_info(tmp_path):
    record = _record(forward_flops=123456789, roofline_dtype="fp32", roofline_compute=0.25)
    document = results.as_json(results.sidecar_document([record], tmp_path, roofline=FIXED_PEAKS.as_json()))
    assert document["machine_info"]["roofline"]["peak_gflops"] == {"fp32": 100.0, "int8": 400.0}
    back = CaseRecord.from_sidecar(document["benchmarks"][0])
    assert (back.result.forward_flops, back.result.roofline_dtype, back.result.roofline_compute) == \
        (123456789, "fp32", 0.25)
    assert "roofline" not in results.sidecar_document([record], tmp_path)["machine_info"]
