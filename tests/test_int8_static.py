"""Calibrated static int8 (torchao): saved as int8, reloaded by from_pretrained to what was quantized."""

import json

import pytest
import torch

from compresslab import registry
from compresslab.methods.base import MethodUnsupported, StageContext
from compresslab.methods.torchao_static import TorchaoStaticInt8
from compresslab.models.precision import quantizable_linears
from compresslab.models.runner import TorchRunner, load_runner
from compresslab.trackers.fidelity import compare_logits
from tiny import synthetic_examples, tiny_bert_classifier, tiny_llama, tokenizer

# Fewer calibration texts than the registry default (128) keep the test fast; the method is the same.
METHOD = TorchaoStaticInt8(calibration_samples=32)


def calibration(n: int) -> list[str]:
    return [e.text for e in synthetic_examples(n, seed=7)]  # not the test examples (seed 999)


def stored(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {name: tensor for file in path.glob("*.safetensors") for name, tensor in load_file(file).items()}


def quantize_save(src, out, kind):
    """The in-memory quantized model, saved before any forward pass (see methods/base.py)."""
    model = METHOD.quantized_model(src, StageContext("tiny", kind, "cpu", src, calibration=calibration))
    model.save_pretrained(out)
    return model


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    src = tmp_path_factory.mktemp("fp32")
    tiny_bert_classifier().save_pretrained(src)
    tokenizer().save_pretrained(src)
    out = tmp_path_factory.mktemp("int8-static")
    return src, out, quantize_save(src, out, "classifier")


def test_registered():
    method = registry.METHODS["int8-static"]
    assert isinstance(method, TorchaoStaticInt8) and method.uses_task_data and method.family == "int8"
    assert (method.calibration_samples, method.calibration_tokens) == (128, 128)
    with pytest.raises(MethodUnsupported, match="wreck decoder LMs"):
        method.check_supported("causal-lm", "cpu")
    method.check_supported("classifier", "cpu")


@pytest.mark.parametrize("field, value", [("calibration_samples", 0), ("calibration_tokens", 4),
                                          ("weight_granularity", "per-group")])
def test_rejects_bad_config(field, value):
    with pytest.raises(ValueError, match=field):
        TorchaoStaticInt8(**{field: value})


def test_reload_equals_in_memory_and_keeps_accuracy(tiny_classifier):
    src, out, model = tiny_classifier
    test = synthetic_examples(128, seed=999)
    inputs = dict(tokenizer()([e.text for e in test], padding=True, return_tensors="pt"))
    in_memory = TorchRunner(model, tokenizer(), "cpu", "classifier").logits(inputs)
    reloaded_model = load_runner(out, src, "classifier", "cpu")
    torch.testing.assert_close(reloaded_model.logits(inputs), in_memory)

    # Static: each reloaded weight carries the calibrated activation scale it was quantized with.
    reloaded = dict(reloaded_model.model.named_modules())
    for name, module in quantizable_linears(model, "classifier"):
        assert module.weight.act_quant_scale.numel() == 1
        torch.testing.assert_close(reloaded[name].weight.act_quant_scale, module.weight.act_quant_scale)

    reference = load_runner(src, src, "classifier", "cpu").logits(inputs)
    labels = torch.tensor([e.label for e in test])
    fp32_accuracy = (reference.argmax(-1) == labels).float().mean().item()
    int8_accuracy = (in_memory.argmax(-1) == labels).float().mean().item()
    assert fp32_accuracy > 0.9  # the tiny model learned the task, so the comparison means something
    assert int8_accuracy >= fp32_accuracy - 0.02
    assert compare_logits(reference, in_memory).top1_agreement >= 0.97


def test_linear_weights_are_int8_on_disk(tiny_classifier):
    src, out, model = tiny_classifier
    tensors, fp32 = stored(out), stored(src)
    linears = [name for name, _ in quantizable_linears(model, "classifier")]
    assert len(linears) == 2 * 6 + 1  # q, k, v, attention out, intermediate, output per layer; the pooler
    for name in linears:
        assert tensors[f"{name}._weight_qdata"].dtype == torch.int8
        assert tensors[f"{name}._weight_act_quant_scale"].dtype == torch.float32
        assert f"{name}.weight" not in tensors
    assert tensors["classifier.weight"].dtype == torch.float32  # the head stays in full precision

    def linear_bytes(state):
        return sum(t.numel() * t.element_size() for key, t in state.items() if key.rsplit(".", 1)[0] in linears)

    assert linear_bytes(tensors) < 0.3 * linear_bytes(fp32)
    recorded = json.loads((out / "config.json").read_text())["quantization_config"]["quant_type"]["default"]
    configs = recorded["_data"]["fqn_to_config"]
    assert sorted(configs) == sorted(f"{name}.weight" for name in linears)
    assert {c["_type"] for c in configs.values()} == {"Int8StaticActivationInt8WeightConfig"}


def test_causal_lm_reload_equals_in_memory(tmp_path):
    src, out = tmp_path / "fp32", tmp_path / "int8-static"
    tiny_llama(train_steps=5).save_pretrained(src)
    tokenizer().save_pretrained(src)
    model = quantize_save(src, out, "causal-lm")
    assert "lm_head" not in dict(quantizable_linears(model, "causal-lm"))
    inputs = dict(tokenizer()(["the movie was great and happy", "awful sad day"], padding=True, return_tensors="pt"))
    in_memory = TorchRunner(model, tokenizer(), "cpu", "causal-lm").logits(inputs)
    torch.testing.assert_close(load_runner(out, src, "causal-lm", "cpu").logits(inputs), in_memory)
