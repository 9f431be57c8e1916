"""The timed workload on a static-shape compile (OpenVINO reshape, ONNX Runtime dim overrides):
same outputs for those shapes, every other shape still on the dynamic graph, and the choice
recorded in the runtime settings; decoders and eager PyTorch are never specialized."""

import numpy as np
import pytest
import torch

from compresslab import registry
from compresslab.fixture import static_shapes_pay
from compresslab.models.backends import STATIC_SHAPE_RUNTIMES, StaticShapes, symbolic_dims
from compresslab.models.runner import TorchRunner, load_runner
from tiny import build_methods, tiny_bert_classifier, tokenizer


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    methods = {method_id: registry.METHODS[method_id] for method_id in ("ort", "openvino")}
    return build_methods(tmp_path_factory, tiny_bert_classifier(train_steps=20), "classifier", methods)


def batch(texts, length):
    return dict(tokenizer()(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"))


@pytest.mark.parametrize("method_id", ["ort", "openvino"])
def test_specialized_shapes_give_the_same_logits_and_others_stay_dynamic(classifier, method_id):
    base, model, outs = classifier
    runner = load_runner(outs[method_id], base, "classifier", "cpu")
    timed = batch(["the movie was good"], 16)
    dynamic = runner.logits(timed)
    recorded = runner.settings  # what a case's result took as its runtime before timing (cases.py)
    runner.specialize(timed)
    assert recorded["static_shapes"]["input_ids"] == [1, 16]
    assert runner.backend.static.fits(runner.feeds(timed))
    assert torch.allclose(runner.logits(timed), dynamic, atol=1e-5)
    # another shape (the evaluation's batches) runs on the dynamic graph and still matches eager
    other = batch(["sad food", "the day was really nice and happy"], 12)
    assert not runner.backend.static.fits(runner.feeds(other))
    with torch.no_grad():
        assert torch.allclose(runner.logits(other), model(**other).logits, atol=1e-4)


def test_the_static_compile_is_what_runs(classifier):
    """A static compile that computed something else would be caught: swap in another model's
    compile for the timed shape and the logits change (the dispatch is real, not a no-op)."""
    base, _, outs = classifier
    runner = load_runner(outs["ort"], base, "classifier", "cpu")
    timed = batch(["the movie was good"], 16)
    runner.specialize(timed)
    runner.backend.static.compiled = _ZeroSession()
    assert np.all(runner.logits(timed).numpy() == 0)


class _ZeroSession:
    def run(self, _, feeds):
        return [np.zeros((feeds["input_ids"].shape[0], 2), dtype=np.float32)]


def test_only_graph_classifiers_on_paying_runtimes_are_specialized(classifier, tmp_path):
    base, model, outs = classifier
    assert STATIC_SHAPE_RUNTIMES  # the measured choice: at least OpenVINO
    ov_runner = load_runner(outs["openvino"], base, "classifier", "cpu")
    ort_runner = load_runner(outs["ort"], base, "classifier", "cpu")
    assert static_shapes_pay(ov_runner) == ("openvino" in STATIC_SHAPE_RUNTIMES)
    assert static_shapes_pay(ort_runner) == ("onnxruntime" in STATIC_SHAPE_RUNTIMES)
    assert not static_shapes_pay(TorchRunner(model, tokenizer(), "cpu", "classifier"))


def test_only_the_same_names_with_the_same_shapes_fit():
    static = StaticShapes({"input_ids": (1, 8), "attention_mask": (1, 8)}, compiled=None)
    feeds = {"input_ids": np.zeros((1, 8)), "attention_mask": np.zeros((1, 8))}
    assert static.fits(feeds)
    assert not static.fits({**feeds, "attention_mask": np.zeros((1, 9))})
    assert not static.fits({"input_ids": feeds["input_ids"]})  # a name missing
    assert not static.fits({**feeds, "token_type_ids": np.zeros((1, 8))})  # a name extra
    assert not static.fits({"input_ids": feeds["input_ids"], "token_type_ids": np.zeros((1, 8))})  # a name swapped


def test_a_dim_given_two_sizes_is_an_error():
    class Input:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    inputs = [Input("input_ids", ["batch", "seq"]), Input("attention_mask", ["batch", "seq"])]
    feeds = {"input_ids": np.zeros((1, 8)), "attention_mask": np.zeros((1, 8))}
    assert symbolic_dims(inputs, feeds) == {"batch": 1, "seq": 8}
    feeds["attention_mask"] = np.zeros((1, 9))
    with pytest.raises(ValueError, match="'seq' is 8 in one feed and 9"):
        symbolic_dims(inputs, feeds)


def test_a_decoder_is_never_specialized():
    from compresslab.models.graph_runner import GraphRunner

    class Backend:
        input_names = ("input_ids", "attention_mask")
        settings = {"runtime": "openvino"}

        def specialize(self, feeds):
            raise AssertionError("must not be called")

    runner = GraphRunner(Backend(), tokenizer(), "cpu", "causal-lm")
    assert not runner.can_specialize and not static_shapes_pay(runner)
    with pytest.raises(ValueError, match="causal-lm graph on openvino is not compiled for static shapes"):
        runner.specialize({"input_ids": torch.ones(1, 4, dtype=torch.long)})
