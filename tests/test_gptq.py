"""GPTQ and AWQ through gptqmodel on a tiny trained Llama: real 4-bit checkpoint, reloadable, within an error floor."""

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
    assert (tmp_path / "quantize_config.json").is_file()
    assert not (tmp_path / "tokenizer.json").exists()  # moved apart: not part of the model's bytes
    reference = load_runner(tiny_lm, tiny_lm, "causal-lm", "cpu").logits(probe()).float()
    quantized = load_runner(tmp_path, tiny_lm, "causal-lm", "cpu").logits(probe()).float()
    sqnr = 10 * torch.log10(reference.pow(2).mean() / (reference - quantized).pow(2).mean())
    assert sqnr > (25 if method.bits == 8 else 8)


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


def test_a_crashing_quantizer_child_is_a_readable_error(tmp_path):
    import sys

    from compresslab.methods.gptq import _run_child

    crash = "import sys, os; print('ValueError: bad shape', file=sys.stderr); sys.stderr.flush(); os._exit(1)"
    with pytest.raises(RuntimeError, match=r"gptq quantization of tiny failed \(exit code 1\).*\n  ValueError: bad shape"):
        _run_child([sys.executable, "-c", crash], "gptq quantization of tiny", cwd=str(tmp_path))
