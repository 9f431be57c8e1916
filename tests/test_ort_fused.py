"""ort-fused: the exported encoder rewritten by ORT's transformer optimizer gives eager's logits at
any batch and length, really holds fused operators (recorded in the runtime settings), and refuses
what it cannot fuse."""

import json

import pytest
import torch

from compresslab.methods import ort_fused
from compresslab.methods.base import MethodUnsupported
from compresslab.methods.ort_fused import OrtFused
from compresslab.models.graph_runner import RUNTIME_FILE
from compresslab.models.runner import load_runner
from tiny import build_methods, stage_context, tiny_bert_classifier, tokenizer


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    base, model, outs = build_methods(tmp_path_factory, tiny_bert_classifier(train_steps=20), "classifier",
                                      {"ort-fused": OrtFused()})
    return base, model, outs["ort-fused"]


def test_fused_graph_matches_eager_at_any_batch_and_length(fused):
    base, model, out = fused
    runner = load_runner(out, base, "classifier", "cpu")
    for texts in (["great"], ["the movie was really bad", "happy", "sad food and the day was awful"]):
        inputs = dict(tokenizer()(texts, padding=True, return_tensors="pt"))
        with torch.no_grad():
            assert torch.allclose(runner.logits(inputs), model(**inputs).logits, atol=1e-4)


def test_the_graph_holds_ort_fused_operators_and_says_which(fused):
    import onnx

    base, _, out = fused
    runtime = json.loads((out / RUNTIME_FILE).read_text())
    assert runtime["fused_operators"].get("SkipLayerNormalization", 0) > 0
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"SkipLayerNormalization", "BiasGelu"} <= ops  # the residual adds and GELUs are gone into them
    assert load_runner(out, base, "classifier", "cpu").settings["fused_operators"] == runtime["fused_operators"]


def test_nothing_fused_fails_the_build_and_other_encoders_skip(fused, tmp_path, monkeypatch):
    base, _, _ = fused
    monkeypatch.setattr(ort_fused, "fuse", lambda *args: {})
    with pytest.raises(RuntimeError, match="fused nothing"):
        OrtFused().apply(base, tmp_path, stage_context(base))
    config = json.loads((base / "config.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(MethodUnsupported, match="not 'roberta'"):
        OrtFused().apply(other, tmp_path, stage_context(other))
    with pytest.raises(MethodUnsupported):
        OrtFused().check_supported("causal-lm", "cpu")
