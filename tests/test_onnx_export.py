"""ONNX export + ONNX Runtime runner on a tiny BERT classifier: outputs match eager PyTorch."""

import json

import pytest
import torch

from compresslab import registry
from compresslab.methods.base import MethodUnsupported, StageContext
from compresslab.methods.onnx_export import OrtExport
from compresslab.models.ort_runner import RUNTIME_FILE, OrtRunner
from compresslab.models.runner import load_runner
from compresslab.models.loading import save_tokenizer
from compresslab.trackers.fidelity import compare_logits
from tiny import SyntheticSentiment, synthetic_examples, tiny_bert_classifier, tokenizer


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("fp32")
    model = tiny_bert_classifier(train_steps=40)
    model.save_pretrained(base)
    save_tokenizer(tokenizer(), base)
    ctx = StageContext("tiny", "classifier", "cpu", base)
    outs = {}
    for method_id in ("ort", "ort-int8"):
        out = tmp_path_factory.mktemp(method_id)
        registry.METHODS[method_id].apply(base, out, ctx)
        outs[method_id] = out
    return base, model, outs


def eager_and_ort(exported, method_id, texts):
    base, model, outs = exported
    runner = load_runner(outs[method_id], base, "classifier", "cpu")
    inputs = dict(tokenizer()(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        return model(**inputs).logits, runner.logits(inputs), runner


def test_fp32_graph_matches_eager_at_any_batch_and_length(exported):
    for texts in (["good"], [e.text for e in synthetic_examples(7, seed=2)], ["the food " * 40]):
        eager, ort, runner = eager_and_ort(exported, "ort", texts)
        assert isinstance(runner, OrtRunner)
        assert ort.shape == eager.shape
        assert torch.allclose(ort, eager, atol=1e-4), (ort - eager).abs().max()


def test_int8_graph_agrees_with_eager_and_is_smaller(exported):
    base, _, outs = exported
    texts = [e.text for e in synthetic_examples(128, seed=999)]
    eager, ort, runner = eager_and_ort(exported, "ort-int8", texts)
    assert compare_logits(eager, ort).top1_agreement >= 0.95
    assert (outs["ort-int8"] / "model.onnx").stat().st_size < 0.5 * (outs["ort"] / "model.onnx").stat().st_size
    assert SyntheticSentiment().evaluate(runner).metrics["accuracy"] >= 0.9


def test_runtime_marker_and_threads(exported):
    _, _, outs = exported
    marker = json.loads((outs["ort-int8"] / RUNTIME_FILE).read_text())
    assert marker["runtime"] == "onnxruntime" and marker["quantization"] == "dynamic-int8"
    runner = load_runner(outs["ort"], exported[0], "classifier", "cpu")
    assert runner.threads == torch.get_num_threads()
    assert runner.session.get_session_options().intra_op_num_threads == runner.threads


def test_missing_token_type_ids_are_filled(exported):
    base, model, outs = exported
    runner = load_runner(outs["ort"], base, "classifier", "cpu")
    inputs = dict(tokenizer()(["great"], return_tensors="pt"))
    inputs.pop("token_type_ids")
    assert torch.allclose(runner.logits(inputs), model(**inputs).logits.detach(), atol=1e-4)


def test_config_and_kind_checks():
    with pytest.raises(ValueError, match="quantization must be one of"):
        OrtExport(quantization="static-int4")
    with pytest.raises(MethodUnsupported, match="classifier"):
        registry.METHODS["ort"].check_supported("causal-lm", "cpu")
