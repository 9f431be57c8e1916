"""Methods on tiny trained models: apply -> save -> reload, and an error floor on the outputs."""

import pytest
import torch

from compresslab import registry
from compresslab.methods.base import StageContext
from compresslab.models.runner import TorchRunner, count_params, load_runner
from compresslab.trackers.fidelity import compare_logits
from tiny import tiny_bert_classifier, tiny_llama, tokenizer


def sqnr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    noise = (reference - other).float().pow(2).mean()
    return (10 * torch.log10(reference.float().pow(2).mean() / noise)).item()


def stored_bytes(path, skip: str) -> int:
    from safetensors import safe_open

    total = 0
    for file in path.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if skip not in name:
                    tensor = handle.get_tensor(name)
                    total += tensor.numel() * tensor.element_size()
    return total


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for kind, model in (("classifier", tiny_bert_classifier()), ("causal-lm", tiny_llama())):
        path = root / kind
        model.save_pretrained(path)
        tokenizer().save_pretrained(path)
        out[kind] = path
    return out


def probe_inputs():
    return dict(tokenizer()(["the movie was great and happy", "awful sad day", "it was the food"],
                            padding=True, return_tensors="pt"))


# Error floors per method: SQNR (dB) of the outputs and top-1 agreement with fp32.
FLOORS = {"bf16": (30.0, 1.0), "int8-weight": (30.0, 1.0), "int8-dynamic": (20.0, 0.9), "bnb-int8": (20.0, 0.9),
          "bnb-nf4": (10.0, 0.8), "bnb-nf4-dq": (10.0, 0.8)}


@pytest.mark.parametrize("kind", ["classifier", "causal-lm"])
@pytest.mark.parametrize("method_id", sorted(FLOORS))
def test_apply_save_reload_within_error_floor(saved_models, tmp_path, kind, method_id):
    src = saved_models[kind]
    method = registry.METHODS[method_id]
    out = tmp_path / method_id
    out.mkdir()
    method.apply(src, out, StageContext("tiny", kind, "cpu", src))
    reference = load_runner(src, src, kind, "cpu").logits(probe_inputs())
    compressed = load_runner(out, src, kind, "cpu")
    logits = compressed.logits(probe_inputs())
    min_sqnr, min_agreement = FLOORS[method_id]
    assert sqnr_db(reference, logits) >= min_sqnr
    assert compare_logits(reference, logits).top1_agreement >= min_agreement
    # Really smaller on disk, not only in memory. The tiny models are mostly embedding (which
    # torchao leaves alone), so compare the stored bytes of everything else.
    assert stored_bytes(out, skip="embed") < 0.75 * stored_bytes(src, skip="embed")


def test_int8_reload_equals_in_memory_model(saved_models, tmp_path):
    """What is measured is what ships: the reloaded checkpoint computes what the quantized model did."""
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    src = saved_models["causal-lm"]
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
    model.save_pretrained(tmp_path / "q")
    in_memory = TorchRunner(model.eval(), tokenizer(), "cpu", "causal-lm").logits(probe_inputs())
    reloaded = load_runner(tmp_path / "q", src, "causal-lm", "cpu").logits(probe_inputs())
    torch.testing.assert_close(in_memory, reloaded)


def test_keep_last_matches_full_logits(saved_models):
    runner = load_runner(saved_models["causal-lm"], saved_models["causal-lm"], "causal-lm", "cpu")
    full = runner.logits(probe_inputs())
    torch.testing.assert_close(runner.logits(probe_inputs(), keep_last=2), full[:, -2:])


def test_param_count_from_headers_matches_module(saved_models):
    for kind, path in saved_models.items():
        assert count_params(path) == load_runner(path, path, kind, "cpu").n_params()
