"""GPTQ and AWQ through gptqmodel on a tiny trained Llama: real 4-bit checkpoint, reloadable, within an error floor."""

import math
import shutil

import pytest
import torch

from compresslab.methods.base import MethodUnsupported, StageContext
from compresslab.methods.gptq import AWQ, GPTQ
from compresslab.models.runner import load_runner
from compresslab.models.loading import save_tokenizer
from tiny import synthetic_examples, tiny_llama, tokenizer

pytest.importorskip("gptqmodel")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-lm")
    # AWQ's clip search needs every output dim to be a multiple of 64 (k/v: 2 heads x 32)
    tiny_llama(train_steps=30, hidden_size=128).save_pretrained(path)
    save_tokenizer(tokenizer(), path)
    return path


BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}


def stored(path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) of every tensor in a checkpoint directory's safetensors files."""
    from safetensors import safe_open

    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            tensors.update({name: (f.get_slice(name).get_dtype(), f.get_slice(name).get_shape()) for name in f.keys()})
    return tensors


def nbytes(spec) -> int:
    return BYTES[spec[0]] * math.prod(spec[1])


def assert_packed(src, out, bits):
    """Each block Linear of ``src`` is stored in ``out`` as packed integers, bits/32 of its fp32 bytes
    (plus group scales and zeros), and nothing is left in float32."""
    original, quantized = stored(src), stored(out)
    linears = [n.removesuffix(".weight") for n in original if ".layers." in n and n.endswith("_proj.weight")]
    assert linears
    for name in linears:
        assert f"{name}.qweight" in quantized and f"{name}.weight" not in quantized, f"{name} is stored unquantized"
        dtype, _ = quantized[f"{name}.qweight"]
        fp32 = nbytes(original[f"{name}.weight"])
        assert dtype == "I32" and nbytes(quantized[f"{name}.qweight"]) * 32 == fp32 * bits, (name, dtype, bits)
        total = sum(nbytes(spec) for key, spec in quantized.items() if key.startswith(f"{name}."))
        assert total < (bits / 32 + 0.08) * fp32, f"{name}: {total} bytes stored, fp32 {fp32}"
    left = [name for name, (dtype, _) in quantized.items() if dtype == "F32"]
    assert not left, f"float32 tensors left: {left[:4]}"
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert size < 0.6 * sum(f.stat().st_size for f in src.glob("*.safetensors"))  # the embedding stays 16-bit


def calibration(n):
    return [" ".join(e.text for e in synthetic_examples(6, seed=i)) for i in range(n)]


def probe():
    return dict(tokenizer()(["the movie was great and happy", "awful sad day it was"], padding=True,
                            return_tensors="pt"))


@pytest.mark.parametrize("method", [GPTQ(bits=4, group_size=32, calibration_samples=16, calibration_tokens=48),
                                    GPTQ(bits=8, group_size=32, calibration_samples=16, calibration_tokens=48),
                                    AWQ(bits=4, group_size=32, calibration_samples=16, calibration_tokens=48)],
                         ids=["gptq-w4", "gptq-w8", "awq-w4"])
def test_checkpoint_reloads_within_error_floor(tiny_lm, tmp_path, method):
    ctx = StageContext("tiny", "causal-lm", "cpu", tiny_lm, calibration)
    method.apply(tiny_lm, tmp_path, ctx)
    assert_packed(tiny_lm, tmp_path, method.bits)
    with pytest.raises(AssertionError):  # the check tells the bit widths apart
        assert_packed(tiny_lm, tmp_path, 8 if method.bits == 4 else 4)
    assert (tmp_path / "quantize_config.json").is_file()
    assert not (tmp_path / "tokenizer.json").exists()  # moved apart: not part of the model's bytes
    reference = load_runner(tiny_lm, tiny_lm, "causal-lm", "cpu").logits(probe()).float()
    quantized = load_runner(tmp_path, tiny_lm, "causal-lm", "cpu").logits(probe()).float()
    sqnr = 10 * torch.log10(reference.pow(2).mean() / (reference - quantized).pow(2).mean())
    assert sqnr > (25 if method.bits == 8 else 8)


def test_an_unquantized_or_merely_cast_copy_fails_the_packing_check(tiny_lm, tmp_path):
    copy = tmp_path / "copy"  # what a GPTQ that silently did nothing would leave
    copy.mkdir()
    for file in tiny_lm.glob("*.safetensors"):
        shutil.copy(file, copy)
    with pytest.raises(AssertionError, match="stored unquantized"):
        assert_packed(tiny_lm, copy, 4)
    from transformers import AutoModelForCausalLM

    cast = tmp_path / "bf16"  # 16-bit floats, half the bytes, but no integer weights
    AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.bfloat16).save_pretrained(cast)
    with pytest.raises(AssertionError, match="stored unquantized"):
        assert_packed(tiny_lm, cast, 4)


def test_gptq_rejects_classifiers_and_bad_configs(tiny_lm):
    with pytest.raises(MethodUnsupported, match="applies to causal-lm models, not classifier"):
        GPTQ().check_supported("classifier", "cpu")
    with pytest.raises(ValueError, match="bits must be one of 2, 3, 4, 8, got 5"):
        GPTQ(bits=5)
    with pytest.raises(ValueError, match="group_size must be -1 or >= 16"):
        AWQ(group_size=4)


def test_awq_group_that_does_not_divide_the_layers_is_a_skip_reason(tiny_lm):
    # gptqmodel would kill the whole process mid-run (os._exit in its worker); refuse up front
    with pytest.raises(MethodUnsupported, match=r"divisible by group_size 48 \(hidden_size=128, intermediate_size=256\)"):
        AWQ(group_size=48).check_shapes(tiny_lm)
    GPTQ(group_size=48).check_shapes(tiny_lm)  # GPTQ quantizes partial groups; its CPU reload pins torch kernels


def test_a_failing_quantizer_child_is_a_readable_error(tmp_path):
    from compresslab.child_process import ChildProcessFailed, run_module

    # the stage's child entry point, run as apply() runs it, on a job file that is not there
    with pytest.raises(ChildProcessFailed, match=r"gptq quantization of tiny failed \(exit code 1\); its last output:\n"
                                                 r"(  .*\n)*  FileNotFoundError: .*job\.pkl"):
        run_module("compresslab.methods.gptq", [str(tmp_path / "job.pkl")], what="gptq quantization of tiny",
                   cwd=tmp_path, show_output=True)
