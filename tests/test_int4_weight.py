"""4-bit weight-only (optimum-quanto on CPU): a packed checkpoint that reloads to exactly what was quantized."""

import math

import pytest
import torch

from compresslab import registry
from compresslab.methods.base import MethodUnsupported, StageContext
from compresslab.methods.int4_weight import Int4WeightOnly
from compresslab.models.formats import QUANTO_QMAP
from compresslab.models.loading import load_pretrained
from compresslab.models.precision import shell_patterns
from compresslab.models.runner import load_runner
from tiny import synthetic_examples, tiny_bert_classifier, tiny_llama, tokenizer

pytest.importorskip("optimum.quanto")


def build(tmp_path_factory, model, kind):
    src, out = tmp_path_factory.mktemp(f"{kind}-fp32"), tmp_path_factory.mktemp(f"{kind}-int4")
    model.save_pretrained(src)
    tokenizer().save_pretrained(src)
    Int4WeightOnly().apply(src, out, StageContext("tiny", kind, "cpu", src))
    return src, out


def stored_dtypes(path) -> dict[str, tuple[str, list[int]]]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {name: (f.get_slice(name).get_dtype(), f.get_slice(name).get_shape()) for name in f.keys()}


def test_classifier_reloads_packed_and_keeps_accuracy(tmp_path_factory):
    fp32 = tiny_bert_classifier(train_steps=40, hidden_size=128)
    src, out = build(tmp_path_factory, fp32, "classifier")
    assert (out / QUANTO_QMAP).is_file()
    stored = stored_dtypes(out)
    # an encoder Linear (128 x 128) is stored packed: two 4-bit values per uint8, plus group scales
    packed = {name: spec for name, spec in stored.items() if name.startswith("bert.encoder.layer.0.attention.self.query.weight")}
    assert packed and all(dtype in ("U8", "I32", "BF16") for dtype, _ in packed.values()), packed
    assert sum(math.prod(shape) * (1 if dtype == "U8" else 4 if dtype == "I32" else 2)
               for dtype, shape in packed.values()) < 128 * 128 * 2 * 0.35  # < 0.35x of bf16 incl. scales
    assert "bert.encoder.layer.0.attention.self.query.weight" not in stored
    assert stored["classifier.weight"] == ("BF16", [2, 128])  # the head stays unquantized
    examples = synthetic_examples(64, seed=999)
    inputs = dict(tokenizer()([e.text for e in examples], padding=True, return_tensors="pt"))
    labels = torch.tensor([e.label for e in examples])
    reloaded = load_runner(out, src, "classifier", "cpu").logits(inputs).float()
    reference = load_runner(src, src, "classifier", "cpu").logits(inputs).float()
    assert (reloaded.argmax(-1) == labels).float().mean() >= (reference.argmax(-1) == labels).float().mean() - 0.05
    assert (reloaded.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9
    assert not torch.equal(reloaded, reference)  # really quantized


def test_causal_lm_reload_equals_in_memory_quantized(tmp_path_factory):
    from optimum.quanto import QuantizedModelForCausalLM, qint4

    src, out = build(tmp_path_factory, tiny_llama(train_steps=20, hidden_size=128), "causal-lm")
    inputs = dict(tokenizer()(["the movie was great and happy", "awful sad day"], padding=True, return_tensors="pt"))
    in_memory = QuantizedModelForCausalLM.quantize(load_pretrained(src, "causal-lm", dtype=torch.bfloat16),
                                                   weights=qint4, exclude=shell_patterns("causal-lm"))
    with torch.no_grad():  # quanto's packed weights refuse inference_mode (see models/runner.py)
        expected = in_memory(**inputs).logits
        reloaded = load_pretrained(out, "causal-lm")(**inputs).logits
    assert torch.equal(expected, reloaded)
    fp32_size = (src / "model.safetensors").stat().st_size
    assert (out / "model.safetensors").stat().st_size < 0.5 * fp32_size  # 4-bit Linears, bf16 embedding


def test_registered_and_validated():
    for kind in ("classifier", "causal-lm"):  # the registered entry runs on CPU (quanto's group size)
        registry.METHODS["int4-weight"].check_supported(kind, "cpu")
    with pytest.raises(ValueError, match="group_size must be one of 32, 64, 128, got 100"):
        Int4WeightOnly(group_size=100)
    with pytest.raises(MethodUnsupported, match="optimum-quanto, whose group size is 128, not 64"):
        Int4WeightOnly(group_size=64).check_supported("causal-lm", "cpu")


def test_reloaded_int4_linears_accept_non_contiguous_inputs(tmp_path_factory):
    # quanto's bf16 int4pack CPU kernel rejects a non-contiguous input ("expect A to be contiguous");
    # real MiniLM attention produces one. load_pretrained makes QLinear inputs contiguous.
    from optimum.quanto.nn import QLinear

    # wider than 128: quanto groups by 128 only then, and bf16 groups of 128 select the int4pack kernel
    _, out = build(tmp_path_factory, tiny_bert_classifier(train_steps=1, hidden_size=256), "classifier")
    linear = next(m for m in load_pretrained(out, "classifier").modules() if isinstance(m, QLinear))
    assert type(linear.weight).__name__ == "TinyGemmWeightQBitsTensor"
    columns = torch.randn(linear.in_features, 8, dtype=torch.bfloat16).t()  # (8, in) with strides (1, 8)
    assert not columns.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(linear(columns), linear(columns.contiguous()))
