"""How each graph runtime keeps a decoder's KV cache between decode steps: OpenVINO in its
stateful form (the cache inside the request, a beam_idx input, reset per sequence), ONNX Runtime
through IO binding on CUDA (the presents stay ORT values) and numpy arrays on the CPU. Each must
give exactly the logits of the explicit-cache graph, and the recorded settings say which form ran."""

import numpy as np
import pytest
import torch

from compresslab import registry
from compresslab.models.backends import OpenVinoBackend
from compresslab.models.decoding import greedy
from compresslab.models.graph_runner import CacheState, GraphRunner
from compresslab.models.ov_stateful import BEAM_INPUT, make_stateful
from compresslab.models.runner import TorchRunner, load_runner
from tiny import build_methods, tiny_llama, tokenizer

PROMPTS = ("the movie was", "happy food and the day was really")


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    methods = {method_id: registry.METHODS[method_id] for method_id in ("ort", "openvino")}
    return build_methods(tmp_path_factory, tiny_llama(train_steps=20), "causal-lm", methods)


def ov_runner(decoder, stateful: bool) -> GraphRunner:
    base, _, outs = decoder
    backend = OpenVinoBackend(outs["openvino"] / "model.xml", "cpu", torch.get_num_threads(), stateful=stateful)
    return GraphRunner(backend, tokenizer(), "cpu", "causal-lm")


def ids_of(prompt: str) -> torch.Tensor:
    return tokenizer()([prompt], return_tensors="pt")["input_ids"]


def test_openvino_decoders_load_stateful_and_say_so(decoder):
    base, _, outs = decoder
    runner = load_runner(outs["openvino"], base, "causal-lm", "cpu")
    assert runner.backend.stateful and runner.settings["kv_cache"] == "stateful"
    assert runner.past_names == () and BEAM_INPUT in runner.backend.input_names
    assert ov_runner(decoder, stateful=False).settings["kv_cache"] == "explicit"



def test_stateful_steps_match_explicit_cache_steps(decoder):
    stateful, explicit = ov_runner(decoder, True), ov_runner(decoder, False)
    for prompt in PROMPTS:
        ids = ids_of(prompt)
        logits_s, state_s = stateful.start(ids)
        logits_e, state_e = explicit.start(ids)
        assert state_s.tensors == () and len(state_e.tensors) == len(explicit.past_names) > 0
        for _ in range(4):
            assert torch.allclose(logits_s, logits_e, atol=1e-5)
            token = logits_e.argmax(-1, keepdim=True)
            logits_s, state_s = stateful.step(token, state_s)
            logits_e, state_e = explicit.step(token, state_e)
        assert state_s.length == state_e.length == ids.shape[1] + 4


def test_each_sequence_starts_from_an_empty_state(decoder):
    """A new prompt, or a whole-sequence call, resets the state: the second of two sequences gives
    the logits it gives alone. Without the reset the old cache leaks in (the check can fail)."""
    runner = ov_runner(decoder, True)
    ids = ids_of(PROMPTS[1])
    alone = runner.logits({"input_ids": ids})
    greedy(runner, ids_of(PROMPTS[0]), 3)
    assert torch.allclose(runner.logits({"input_ids": ids}), alone, atol=1e-6)
    # the same call without the reset continues the previous sequence's cache: different logits
    leaked = runner.backend.infer(runner.feeds({"input_ids": ids}))[0]
    assert not np.allclose(leaked, alone.numpy(), atol=1e-3)


def test_stateful_batch_rows_keep_their_own_cache(decoder):
    """Two equal-length rows decode as each alone: beam_idx = 0..batch-1 keeps rows apart."""
    runner = ov_runner(decoder, True)
    ids = tokenizer()(["the movie was good", "sad food and it"], return_tensors="pt")["input_ids"]
    both = greedy(runner, ids, 4)
    for row in range(2):
        assert both[row].tolist() == greedy(runner, ids[row:row + 1], 4)[0].tolist()


def test_ort_io_binding_keeps_presents_as_ort_values(decoder):
    """IO binding (what CUDA runs) keeps the presents as ORT values and decodes as eager does; on the
    CPU the suite runs plain numpy steps (measured faster there), recorded as such."""
    import onnxruntime as ort

    base, model, outs = decoder
    runner = load_runner(outs["ort"], base, "causal-lm", "cpu")
    assert runner.settings["kv_cache"] == "numpy" and not runner.backend.io_binding
    eager = TorchRunner(model, tokenizer(), "cpu", "causal-lm")
    ids = ids_of(PROMPTS[0])
    reference = greedy(eager, ids, 6).tolist()
    assert greedy(runner, ids, 6).tolist() == reference
    runner.backend.io_binding = True  # the CUDA path, on the CPU device
    logits, state = runner.start(ids)
    assert all(isinstance(value, ort.OrtValue) for value in state.tensors)
    assert state.length == ids.shape[1] and state.tensors[0].shape()[2] == ids.shape[1]
    assert greedy(runner, ids, 6).tolist() == reference


def test_encoders_and_a_broken_cache_are_told_apart(decoder, tmp_path):
    """An encoder has no cache to make stateful; mismatched past/present lists are an error."""
    import openvino as ov
    from openvino import opset13

    param = opset13.parameter([1, 4], ov.Type.f32, name="input_ids")
    encoder = ov.Model([opset13.relu(param)], [param])
    assert make_stateful(encoder) is False
    _, _, outs = decoder
    model = ov.Core().read_model(str(outs["openvino"] / "model.xml"))
    model.remove_result(model.get_results()[-1])  # one present fewer than pasts
    with pytest.raises(ValueError, match="past inputs but"):
        make_stateful(model)


def test_cache_state_length_of_numpy_and_ort_values():
    import onnxruntime as ort

    from compresslab.models.graph_runner import cache_length

    array = np.zeros((1, 2, 7, 4), dtype=np.float32)
    assert cache_length((array,)) == 7 == cache_length((ort.OrtValue.ortvalue_from_numpy(array),))
    assert cache_length(()) == 0 and CacheState(3).tensors == ()
