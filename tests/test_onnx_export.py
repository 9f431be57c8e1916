"""Exported graphs on ONNX Runtime and OpenVINO, for a tiny BERT classifier and a tiny Llama:
outputs match eager PyTorch, quantized graphs agree with it, the decode loop reproduces eager
greedy generation, and calibration feeds are what the graph takes."""

import json

import numpy as np
import pytest
import torch

from compresslab import registry
from compresslab.methods.base import MethodUnsupported
from compresslab.methods.onnx_export import (MODEL_FILE, FeedReader, OrtExport, calibration_feeds,
                                             full_precision_nodes, module_path)
from compresslab.methods.openvino import OpenVinoExport, full_precision_ops
from compresslab.models.decoding import greedy
from compresslab.models.export import export_graph, past_names
from compresslab.models.graph_runner import RUNTIME_FILE, GraphRunner, write_runtime
from compresslab.models.loading import save_tokenizer
from compresslab.models.precision import stays_full_precision
from compresslab.models.runner import TorchRunner, load_runner
from compresslab.trackers import decode
from compresslab.trackers.fidelity import compare_logits
from tiny import SyntheticSentiment, stage_context, synthetic_examples, tiny_bert_classifier, tiny_llama, tokenizer

CLASSIFIER_METHODS = ("ort", "ort-int8", "ort-int8-static", "openvino", "ov-bf16", "ov-int8")
DECODER_METHODS = ("ort", "ort-int8", "ort-int8-static", "openvino", "ov-int8-weights", "ov-int4-weights")
SMALL = {"ort-int8-static": OrtExport(quantization="static-int8", calibration_samples=16),
         "ov-int8": OpenVinoExport(compression="int8", calibration_samples=16),
         "ov-int4-weights": OpenVinoExport(compression="int4-weights", calibration_samples=8, group_size=32)}


def build(tmp_path_factory, model, kind, method_ids):
    base = tmp_path_factory.mktemp(f"{kind}-fp32")
    model.save_pretrained(base)
    save_tokenizer(tokenizer(), base)
    outs = {}
    for method_id in method_ids:
        out = tmp_path_factory.mktemp(f"{kind}-{method_id}")
        SMALL.get(method_id, registry.METHODS[method_id]).apply(base, out, stage_context(base, kind))
        outs[method_id] = out
    return base, model, outs


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return build(tmp_path_factory, tiny_bert_classifier(train_steps=40), "classifier", CLASSIFIER_METHODS)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return build(tmp_path_factory, tiny_llama(train_steps=40), "causal-lm", DECODER_METHODS)


def eager_and_graph(built, method_id, texts):
    base, model, outs = built
    runner = load_runner(outs[method_id], base, "classifier", "cpu")
    inputs = dict(tokenizer()(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        return model(**inputs).logits, runner.logits(inputs), runner


@pytest.mark.parametrize("method_id", ["ort", "openvino"])
def test_fp32_classifier_graph_matches_eager_at_any_batch_and_length(classifier, method_id):
    for texts in (["good"], [e.text for e in synthetic_examples(7, seed=2)], ["the food " * 40]):
        eager, graph, runner = eager_and_graph(classifier, method_id, texts)
        assert isinstance(runner, GraphRunner)
        assert graph.shape == eager.shape
        assert torch.allclose(graph, eager, atol=1e-4), (graph - eager).abs().max()


@pytest.mark.parametrize("method_id", ["ort-int8", "ort-int8-static", "ov-int8"])
def test_int8_classifier_graphs_agree_with_eager_and_are_smaller(classifier, method_id):
    _, _, outs = classifier
    texts = [e.text for e in synthetic_examples(128, seed=999)]
    eager, graph, runner = eager_and_graph(classifier, method_id, texts)
    assert compare_logits(eager, graph).top1_agreement >= 0.9
    fp32_size = sum(f.stat().st_size for f in outs["ort"].iterdir())
    assert sum(f.stat().st_size for f in outs[method_id].iterdir()) < 0.6 * fp32_size
    assert SyntheticSentiment().evaluate(runner).metrics["accuracy"] >= 0.85


def test_runtime_markers_and_pinned_threads(classifier):
    base, _, outs = classifier
    marker = json.loads((outs["ort-int8"] / RUNTIME_FILE).read_text())
    assert marker["runtime"] == "onnxruntime" and marker["quantization"] == "dynamic-int8"
    ort_runner = load_runner(outs["ort"], base, "classifier", "cpu")
    assert ort_runner.settings["intra_op_threads"] == torch.get_num_threads()
    assert ort_runner.backend.session.get_session_options().intra_op_num_threads == torch.get_num_threads()
    assert ort_runner.settings["spinning"] is False
    ov_runner = load_runner(outs["openvino"], base, "classifier", "cpu")
    assert ov_runner.settings["threads"] == torch.get_num_threads()
    assert ov_runner.settings["precision"] == "f32"  # not the CPU plugin's bf16 default
    assert json.loads((outs["ov-int8"] / RUNTIME_FILE).read_text())["compression"] == "int8"


def test_missing_token_type_ids_are_filled(classifier):
    base, model, outs = classifier
    runner = load_runner(outs["ort"], base, "classifier", "cpu")
    inputs = dict(tokenizer()(["great"], return_tensors="pt"))
    inputs.pop("token_type_ids")
    assert torch.allclose(runner.logits(inputs), model(**inputs).logits.detach(), atol=1e-4)


@pytest.mark.parametrize("method_id", ["ort", "openvino"])
def test_fp32_decoder_graph_matches_eager_full_sequence_and_left_padded(decoder, method_id):
    base, model, outs = decoder
    runner = load_runner(outs[method_id], base, "causal-lm", "cpu")
    ids = tokenizer()(["the movie was good and the food was great"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(runner.logits({"input_ids": ids}), model(ids).logits, atol=1e-4)
        # the zero-shot task's left-padded batch with explicit positions
        pad = tokenizer().pad_token_id
        padded = torch.tensor([[pad, pad, *ids[0, :5].tolist()], ids[0, :7].tolist()])
        mask = (padded != pad).long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = {"input_ids": padded, "attention_mask": mask, "position_ids": positions}
        eager = model(**inputs).logits[:, -1]
    assert torch.allclose(runner.logits(inputs, keep_last=1)[:, -1], eager, atol=1e-4)


@pytest.mark.parametrize("method_id", DECODER_METHODS)
def test_decode_loop_reproduces_eager_greedy_generation(decoder, method_id):
    base, model, outs = decoder
    runner = load_runner(outs[method_id], base, "causal-lm", "cpu")
    eager = TorchRunner(model, tokenizer(), "cpu", "causal-lm")
    for prompt in ("the movie was", "happy food and the day was really"):
        ids = tokenizer()([prompt], return_tensors="pt")["input_ids"]
        reference = model.generate(ids, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids))
        assert greedy(eager, ids, 8).tolist() == reference[:, ids.shape[1]:].tolist()
        tokens = greedy(runner, ids, 8)
        if method_id in ("ort", "openvino"):
            assert tokens.tolist() == reference[:, ids.shape[1]:].tolist()
        else:  # quantized graphs: the first tokens, where errors have not compounded yet
            assert tokens[:, :2].tolist() == reference[:, ids.shape[1]:ids.shape[1] + 2].tolist()


def test_int4_weights_shrink_the_decoder(decoder):
    _, _, outs = decoder
    sizes = {m: sum(f.stat().st_size for f in outs[m].iterdir()) for m in ("openvino", "ov-int8-weights",
                                                                          "ov-int4-weights")}
    assert sizes["ov-int4-weights"] < sizes["ov-int8-weights"] < 0.4 * sizes["openvino"]


def test_decode_tracker_times_every_step(decoder):
    base, _, outs = decoder
    runner = load_runner(outs["ort"], base, "causal-lm", "cpu")
    ids = tokenizer()(["the movie was"], return_tensors="pt")["input_ids"]
    stats = decode.time_decode(runner, ids, new_tokens=4, rounds=2)
    assert len(stats.step_s) == 8 and len(stats.round_s) == 2
    assert stats.tokens_per_s == pytest.approx(4 / np.median(stats.round_s))
    assert stats.prompt_tokens == ids.shape[1]
    with pytest.raises(ValueError, match="new_tokens"):
        decode.time_decode(runner, ids, new_tokens=0)


def test_calibration_feeds_match_the_graph_inputs(decoder, classifier, tmp_path):
    base, model, _ = decoder
    graph = tmp_path / "model.onnx"
    export_graph(model, "causal-lm", tokenizer(), graph)
    feeds = calibration_feeds(graph, stage_context(base, "causal-lm"), 3, base)
    assert len(feeds) == 3
    names = {"input_ids", "attention_mask", "position_ids", *past_names(model.config.num_hidden_layers)}
    assert set(feeds[0]) == names
    assert feeds[0]["past.0.key"].shape[2] == 0  # a prefill: empty cache
    assert feeds[0]["position_ids"][0].tolist() == list(range(feeds[0]["input_ids"].shape[1]))
    reader = FeedReader(feeds)
    assert [reader.get_next() is not None for _ in range(4)] == [True, True, True, False]
    cbase, cmodel, _ = classifier
    cgraph = tmp_path / "classifier.onnx"
    export_graph(cmodel, "classifier", tokenizer(), cgraph)
    cfeeds = calibration_feeds(cgraph, stage_context(cbase, "classifier"), 2, cbase)
    assert set(cfeeds[0]) == {"input_ids", "attention_mask", "token_type_ids"}


def rule_kept_linears(model, kind, also=()) -> set[str]:
    return {name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and stays_full_precision(name, kind, also)}


def test_full_precision_nodes_are_the_linears_the_rule_keeps(decoder, classifier, tmp_path):
    _, model, outs = decoder
    kept = full_precision_nodes(outs["ort"] / MODEL_FILE, "causal-lm", ("down_proj",))
    # the decoder is exported inside a wrapper whose attribute "model" holds the LM
    expected = {"lm_head", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}
    assert {module_path(node).removeprefix("model.") for node in kept} == expected
    assert rule_kept_linears(model, "causal-lm", ("down_proj",)) == expected
    _, cmodel, couts = classifier
    assert {module_path(node) for node in full_precision_nodes(couts["ort"] / MODEL_FILE, "classifier")} == \
        rule_kept_linears(cmodel, "classifier") == {"classifier"}


def test_a_graph_without_module_paths_cannot_apply_the_rule(classifier, tmp_path):
    import onnx

    graph = onnx.load(str(classifier[2]["ort"] / MODEL_FILE))
    for node in graph.graph.node:
        del node.metadata_props[:]
    onnx.save(graph, str(tmp_path / MODEL_FILE))
    with pytest.raises(ValueError, match="no MatMul/Gemm node traced inside the task head"):
        full_precision_nodes(tmp_path / MODEL_FILE, "classifier")


def ort_weight_source(graph_path, node_names) -> tuple[str, str]:
    """(op type, producer of the weight input: "initializer" or the producing op) of the node
    carrying one of ``node_names`` (ORT renames a Gemm it rewrites as MatMul + Add)."""
    import onnx

    graph = onnx.load(str(graph_path)).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    node = next(node for node in graph.node if node.name in node_names)
    return node.op_type, producers.get(node.input[1], "initializer")


@pytest.mark.parametrize("method_id", ["ort-int8", "ort-int8-static"])
def test_int8_graphs_keep_the_head_in_fp32(classifier, decoder, method_id):
    _, _, couts = classifier
    head = {"node_linear_13", "node_linear_13_MatMul"}  # the classifier's Gemm, as exported and as ORT rewrites it
    assert {node.name for node in full_precision_nodes(couts["ort"] / MODEL_FILE, "classifier")} == {"node_linear_13"}
    assert ort_weight_source(couts[method_id] / MODEL_FILE, head)[1] == "initializer"  # fp32 classifier.weight
    pooler = ort_weight_source(couts[method_id] / MODEL_FILE, {"node_linear_12_MatMul_quant", "node_linear_12"})
    assert pooler in [("MatMulInteger", "initializer"), ("Gemm", "DequantizeLinear")]  # the pooler is int8
    _, _, outs = decoder
    for node in full_precision_nodes(outs["ort"] / MODEL_FILE, "causal-lm", OrtExport().decoder_fp32_modules):
        op, weight = ort_weight_source(outs[method_id] / MODEL_FILE, {node.name})
        assert op == "MatMul", f"{module_path(node)} was quantized"
        # a tied lm_head reads the embedding's tensor, stored as the embedding is (int8 under dynamic int8)
        assert weight in (("initializer",) if "down_proj" in module_path(node) else ("Transpose", "DequantizeLinear"))


def test_openvino_int8_keeps_the_head_in_fp32(classifier):
    import openvino as ov

    _, _, outs = classifier
    graph = outs["ort"] / MODEL_FILE
    head = full_precision_ops(ov.convert_model(str(graph)), graph, "classifier")
    assert len(head) == 1
    quantized = {op.get_friendly_name(): op for op in ov.Core().read_model(outs["ov-int8"] / "model.xml").get_ops()
                 if op.get_type_name() == "MatMul"}

    def fake_quantized(op) -> bool:
        return any(op.input(i).get_source_output().get_node().get_type_name() == "FakeQuantize" for i in range(2))

    assert not fake_quantized(quantized[head[0]])
    assert sum(fake_quantized(op) for op in quantized.values()) >= 12  # every encoder Linear and the pooler


def test_config_checks_and_unsupported_devices(tmp_path):
    with pytest.raises(ValueError, match="quantization must be one of"):
        OrtExport(quantization="static-int4")
    with pytest.raises(ValueError, match="compression must be one of"):
        OpenVinoExport(compression="int2")
    with pytest.raises(ValueError, match="int4_ratio"):
        OpenVinoExport(compression="int4-weights", int4_ratio=0)
    with pytest.raises(MethodUnsupported, match="runs on cpu"):
        registry.METHODS["openvino"].check_supported("causal-lm", "cuda:0")
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        write_runtime(tmp_path, "tensorrt", "model.plan")


def test_ov_bf16_ships_and_runs_in_bf16_where_the_cpu_has_it(classifier, monkeypatch):
    from compresslab.methods import openvino
    from compresslab.models.backends import ov_has_bf16

    base, model, outs = classifier
    assert json.loads((outs["ov-bf16"] / RUNTIME_FILE).read_text())["precision_hint"] == "bf16"
    if not ov_has_bf16():
        pytest.skip("this CPU has no bf16 arithmetic")
    texts = ["the movie was great", "awful food and the day was sad"]
    f32, bf16 = (load_runner(outs[m], base, "classifier", "cpu") for m in ("openvino", "ov-bf16"))
    assert f32.settings["precision"] == "f32" and bf16.settings["precision"] == "bf16"
    inputs = dict(tokenizer()(texts, padding=True, return_tensors="pt"))
    exact, rounded = f32.logits(inputs), bf16.logits(inputs)
    assert not torch.equal(exact, rounded)  # really computed in bf16, not the f32 graph again
    assert torch.allclose(exact, rounded, atol=0.1) and torch.equal(exact.argmax(-1), rounded.argmax(-1))
    # a CPU without bf16 skips the row instead of timing f32 under a bf16 label
    monkeypatch.setattr(openvino, "ov_has_bf16", lambda: False)
    with pytest.raises(openvino.MethodUnsupported, match="no bf16 arithmetic"):
        registry.METHODS["ov-bf16"].check_supported("classifier", "cpu")
    with pytest.raises(ValueError, match="precision must be one of f32, bf16"):
        openvino.OpenVinoExport(precision="fp16")
