"""HQQ on tiny trained models: packed 4- and 3-bit checkpoints that reload to exactly what was
quantized, close to fp32, with the task head in full precision."""

import math

import pytest
import torch
from torch import nn

from compresslab import registry
from compresslab.methods import base
from compresslab.methods.base import MethodUnsupported
from compresslab.methods.hqq import HQQ, MARKER, WEIGHTS, cast_parameters, quantize_linears
from compresslab.models.formats import auto_class
from compresslab.models.loading import load_pretrained
from compresslab.models.precision import quantizable_linears
from tiny import stage_context, synthetic_examples, tiny_bert_classifier, tiny_llama, tokenizer

pytest.importorskip("hqq")

KINDS = ("classifier", "causal-lm")
HEAD = {"classifier": "classifier", "causal-lm": "lm_head"}
BYTES = {"F32": 4, "BF16": 2, "I64": 8, "I32": 4, "U8": 1}
# Relative weight error of a group-wise HQQ grid on trained weights: a bf16 or fp32 copy stays far
# below the lower bound, a broken scale or zero point far above the upper one.
WEIGHT_ERROR = {4: (0.02, 0.12), 3: (0.06, 0.25)}


@pytest.fixture(scope="module")
def fp32_dirs(tmp_path_factory):
    """kind -> a saved tiny fp32 model (hidden size 128: every Linear holds whole groups of 64)."""
    models = {"classifier": tiny_bert_classifier(train_steps=20, hidden_size=128),
              "causal-lm": tiny_llama(train_steps=10, hidden_size=128)}
    dirs = {}
    for kind, model in models.items():
        dirs[kind] = tmp_path_factory.mktemp(f"{kind}-fp32")
        model.save_pretrained(dirs[kind])
        tokenizer().save_pretrained(dirs[kind])
    return dirs


@pytest.fixture(scope="module")
def built(fp32_dirs, tmp_path_factory):
    """(kind, bits) -> the HQQ checkpoint of that tiny model."""
    out = {}
    for kind, src in fp32_dirs.items():
        for bits in (4, 3):
            out[kind, bits] = tmp_path_factory.mktemp(f"{kind}-hqq{bits}")
            HQQ(bits=bits).apply(src, out[kind, bits], stage_context(src, kind))
    return out


def inputs() -> dict[str, torch.Tensor]:
    texts = [e.text for e in synthetic_examples(64, seed=999)]
    return dict(tokenizer()(texts, padding=True, return_tensors="pt"))


def logits(model: nn.Module, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """Float logits of the real (unpadded) positions."""
    with torch.inference_mode():
        out = model(**batch).logits.float()
    return out[batch["attention_mask"].bool()] if kind == "causal-lm" else out


def stored(path) -> dict[str, tuple[str, list[int]]]:
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS), "pt") as f:
        return {name: (f.get_slice(name).get_dtype(), f.get_slice(name).get_shape()) for name in f.keys()}


def nbytes(spec) -> int:
    return BYTES[spec[0]] * math.prod(spec[1])


@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_reload_equals_the_quantized_model_in_memory(fp32_dirs, built, kind, bits):
    in_memory = load_pretrained(fp32_dirs[kind], kind, dtype=torch.float32)
    quantize_linears(in_memory, kind, bits, 64, torch.bfloat16)
    cast_parameters(in_memory, torch.bfloat16)
    batch = inputs()
    expected = logits(in_memory, batch, kind)
    assert torch.equal(logits(load_pretrained(built[kind, bits], kind), batch, kind), expected)
    assert not torch.equal(expected, logits(load_pretrained(fp32_dirs[kind], kind, dtype=torch.bfloat16), batch, kind))


@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_reloaded_linears_are_hqq_quantized_and_the_head_is_not(fp32_dirs, built, kind, bits):
    from hqq.core.quantize import HQQLinear

    fp32 = load_pretrained(fp32_dirs[kind], kind, dtype=torch.float32)
    reloaded = load_pretrained(built[kind, bits], kind)
    expected = {name for name, _ in quantizable_linears(fp32, kind)}
    assert {name for name, m in reloaded.named_modules() if isinstance(m, HQQLinear)} == expected
    low, high = WEIGHT_ERROR[bits]
    for name in expected:
        weight = fp32.get_submodule(name).weight
        with torch.no_grad():
            error = float((reloaded.get_submodule(name).dequantize().float() - weight).norm() / weight.norm())
        assert low < error < high, f"{name}: relative weight error {error:.4f} outside ({low}, {high})"
    head = reloaded.get_submodule(HEAD[kind])
    assert type(head) is nn.Linear  # full precision: the compute dtype, unquantized
    assert torch.equal(head.weight, fp32.get_submodule(HEAD[kind]).weight.to(torch.bfloat16))


@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_holds_packed_weights(fp32_dirs, built, kind, bits):
    """Each quantized Linear is stored as packed integers at about bits/32 of its fp32 bytes (plus bf16
    group scales and zeros), with no float weight beside them; nothing is left in float32."""
    out = built[kind, bits]
    fp32 = load_pretrained(fp32_dirs[kind], kind, dtype=torch.float32)
    tensors = stored(out)
    for name, linear in quantizable_linears(fp32, kind):
        assert f"{name}.weight" not in tensors, f"{name} is stored unquantized"
        assert tensors[f"{name}.W_q"][0] == ("U8" if bits == 4 else "I32")
        packed = sum(nbytes(spec) for key, spec in tensors.items() if key.startswith(f"{name}."))
        fp32_bytes = 4 * linear.weight.numel() + 4 * linear.out_features  # weight and bias
        # 3-bit packs 10 values per int32 word (3.2 bits); scale and zero: 2 x bf16 per 64 weights
        bound = (bits + 0.25) / 32 + 4 / (4 * 64) + 2 / 4 / linear.in_features + 0.01
        assert packed < bound * fp32_bytes, f"{name}: {packed} bytes stored, fp32 {fp32_bytes}"
    assert not [name for name, (dtype, _) in tensors.items() if dtype == "F32"]


@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_artifact_is_smaller_than_a_bf16_copy_by_the_packed_linears(fp32_dirs, built, kind, bits):
    """bf16 halves the fp32 file; packing the Linears at bits/32 (plus scales) saves at least another
    0.3 of their fp32 bytes. The tiny models are mostly embedding, so the Linears' share is what counts."""
    fp32 = load_pretrained(fp32_dirs[kind], kind, dtype=torch.float32)
    linear_bytes = sum(4 * linear.weight.numel() for _, linear in quantizable_linears(fp32, kind))
    fp32_size = (fp32_dirs[kind] / "model.safetensors").stat().st_size
    assert (built[kind, bits] / WEIGHTS).stat().st_size < fp32_size / 2 - 0.3 * linear_bytes


def test_three_bits_store_fewer_bytes_than_four(built):
    for kind in KINDS:
        assert (built[kind, 3] / WEIGHTS).stat().st_size < (built[kind, 4] / WEIGHTS).stat().st_size


@pytest.mark.parametrize("bits, max_error", [(4, 0.06), (3, 0.09)])
def test_causal_lm_logits_stay_close_to_fp32(fp32_dirs, built, bits, max_error):
    batch = inputs()
    reference = logits(load_pretrained(fp32_dirs["causal-lm"], "causal-lm", dtype=torch.float32), batch, "causal-lm")
    quantized = logits(load_pretrained(built["causal-lm", bits], "causal-lm"), batch, "causal-lm")
    # error relative to the logits' spread over the vocabulary (their mean per position carries nothing)
    error = float((quantized - reference).norm() / (reference - reference.mean(-1, keepdim=True)).norm())
    assert error < max_error


@pytest.mark.parametrize("bits", [4, 3])
def test_classifier_keeps_its_answers(fp32_dirs, built, bits):
    batch = inputs()
    labels = torch.tensor([e.label for e in synthetic_examples(64, seed=999)])
    reference = logits(load_pretrained(fp32_dirs["classifier"], "classifier", dtype=torch.float32), batch, "classifier")
    quantized = logits(load_pretrained(built["classifier", bits], "classifier"), batch, "classifier")
    assert (quantized.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.95
    assert (quantized.argmax(-1) == labels).float().mean() >= (reference.argmax(-1) == labels).float().mean() - 0.03


def test_transformers_plain_loader_refuses_the_checkpoint(built):
    # not model.safetensors on purpose: a loader that does not know the format must fail, not build random Linears
    assert (built["causal-lm", 4] / MARKER).is_file()
    with pytest.raises(OSError, match="model.safetensors"):
        auto_class("causal-lm").from_pretrained(built["causal-lm", 4])


def test_a_checkpoint_missing_a_tensor_fails_to_load(built, tmp_path):
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    damaged = tmp_path / "damaged"
    shutil.copytree(built["causal-lm", 4], damaged)
    with safe_open(str(damaged / WEIGHTS), "pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys() if name != "model.layers.1.mlp.up_proj.W_q"}
        metadata = f.metadata()
    save_file(tensors, str(damaged / WEIGHTS), metadata=metadata)
    with pytest.raises(RuntimeError, match=r"missing \['model.layers.1.mlp.up_proj.W_q'\]"):
        load_pretrained(damaged, "causal-lm")


def test_reloads_in_a_fresh_process_that_imports_its_method_module(fp32_dirs, built):
    from compresslab.child_process import ChildProcessFailed
    from compresslab.trackers.memory_probe import probe_in_child

    batch = dict(tokenizer()(["the movie was great"], return_tensors="pt"))
    memory = probe_in_child(built["causal-lm", 4], fp32_dirs["causal-lm"], "causal-lm", "cpu", batch, 1,
                            providers=("compresslab.methods.hqq",))
    assert memory["peak_rss_bytes"] > 0
    # without the module that registers the format, the plain loader refuses it (no random Linears)
    with pytest.raises(ChildProcessFailed, match="model.safetensors"):
        probe_in_child(built["causal-lm", 4], fp32_dirs["causal-lm"], "causal-lm", "cpu", batch, 1)


def test_an_hqq_input_is_not_quantized_again(built, tmp_path):
    src = built["classifier", 4]
    with pytest.raises(MethodUnsupported, match="its input is HQQ-quantized already"):
        HQQ(bits=3).apply(src, tmp_path / "again", stage_context(src, "classifier"))


def test_groups_must_fit_each_linear():
    model = nn.Sequential(nn.Linear(96, 64))
    with pytest.raises(MethodUnsupported, match="0 has 96 input features, no multiple of the group size 64"):
        quantize_linears(model, "classifier", 4, 64, torch.bfloat16)


@pytest.mark.parametrize("config, message", [
    (dict(bits=5), "HQQ.bits must be one of 4, 3, got 5"),
    (dict(group_size=100), "HQQ.group_size must be one of 32, 64, 128, got 100"),
    (dict(compute_dtype="float16"), "HQQ.compute_dtype must be one of bfloat16, float32, got 'float16'"),
])
def test_bad_config_values_are_rejected(config, message):
    with pytest.raises(ValueError, match=message):
        HQQ(**config)


@pytest.mark.parametrize("method_id", ["hqq-w4g64", "hqq-w3g64"])
def test_registered_rows_run_on_cpu_for_both_kinds(method_id):
    for kind in KINDS:
        registry.METHODS[method_id].check_supported(kind, "cpu")
    with pytest.raises(MethodUnsupported, match="runs on cpu, not on cuda"):
        registry.METHODS[method_id].check_supported("causal-lm", "cuda")


def test_a_missing_hqq_package_is_unsupported(monkeypatch):
    monkeypatch.setattr(base, "is_installed", lambda module: module != "hqq")
    with pytest.raises(MethodUnsupported, match=r"needs package\(s\) hqq"):
        registry.METHODS["hqq-w4g64"].check_supported("classifier", "cpu")
