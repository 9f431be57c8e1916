"""GGUF export and the llama.cpp runner on a tiny Llama: the f32 file's logits match eager PyTorch,
quantized files stay close, a conversion without llama.cpp's RoPE row permutation fails the same
check, the decode loop reproduces eager greedy generation, and unsupported inputs are refused."""

import json
import subprocess
import sys

import pytest
import torch

from compresslab import registry
from compresslab.methods import gguf_export
from compresslab.methods.base import MethodUnsupported
from compresslab.methods.gguf_export import MODEL_FILE, GgufExport
from compresslab.models import llama_cpp_runner
from compresslab.models.decoding import greedy
from compresslab.models.graph_runner import RUNTIME_FILE
from compresslab.models.loading import save_tokenizer
from compresslab.models.runner import TorchRunner, load_runner
from compresslab.tasks.lm import score_windows
from compresslab.trackers.fidelity import compare_logits
from tiny import stage_context, synthetic_examples, tiny_bert_classifier, tiny_llama, tokenizer

TYPES = ("f32", "q8_0", "q4_0", "q4_1", "q4_k_m")
F32_TOLERANCE = 1e-3  # max |logit error| of the f32 file: float summation order only


def export(base, out, gguf_type):
    GgufExport(gguf_type=gguf_type).apply(base, out, stage_context(base, "causal-lm"))
    return out


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    model = tiny_llama(train_steps=40)
    base = tmp_path_factory.mktemp("llama-fp32")
    model.save_pretrained(base)
    save_tokenizer(tokenizer(), base)
    outs = {t: export(base, tmp_path_factory.mktemp(f"gguf-{t}"), t) for t in TYPES}
    return base, model, outs


def padded_batch(texts):
    """Left-padded rows with the mask and positions the few-shot task feeds."""
    inputs = dict(tokenizer()(texts, padding=True, return_tensors="pt", padding_side="left"))
    inputs.pop("token_type_ids", None)
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return inputs


def eager_logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def max_error(model, runner, inputs) -> float:
    """The worst |logit error| over the real (unpadded) positions."""
    real = inputs["attention_mask"].bool()
    return (runner.logits(inputs) - eager_logits(model, inputs))[real].abs().max().item()


TEXTS = [e.text for e in synthetic_examples(6, seed=11)] + ["the food " * 20]


def test_f32_file_logits_match_eager_on_padded_batches(decoder):
    base, model, outs = decoder
    runner = load_runner(outs["f32"], base, "causal-lm", "cpu")
    assert runner.settings["runtime"] == "llama.cpp" and runner.settings["gguf_type"] == "f32"
    assert runner.settings["threads"] == torch.get_num_threads() and runner.model is None
    assert runner.settings["kv_cache"] == "f32"
    assert max_error(model, runner, padded_batch(TEXTS)) < F32_TOLERANCE
    inputs = padded_batch(TEXTS)
    kept = runner.logits(inputs, keep_last=2)
    assert kept.shape[1] == 2
    assert torch.allclose(kept, eager_logits(model, inputs)[:, -2:], atol=F32_TOLERANCE)


def test_f32_file_perplexity_matches_eager(decoder):
    base, model, outs = decoder
    text = " ".join(e.text for e in synthetic_examples(60, seed=21))
    windows = tokenizer()(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0, :192].view(3, 64)
    eager = score_windows(TorchRunner(model, tokenizer(), "cpu", "causal-lm"), windows, 2).metrics["perplexity"]
    llama = score_windows(load_runner(outs["f32"], base, "causal-lm", "cpu"), windows, 2).metrics["perplexity"]
    assert abs(llama / eager - 1) < 1e-4, (llama, eager)


def test_conversion_without_the_rope_permutation_fails_the_check(decoder, tmp_path, monkeypatch):
    """The check above can fail: HF's q/k rows written as they are give llama.cpp a wrong RoPE."""
    base, model, _ = decoder
    monkeypatch.setattr(gguf_export, "rope_permute", lambda weight, n_heads: weight)
    broken = export(base, tmp_path, "f32")
    runner = load_runner(broken, base, "causal-lm", "cpu")
    assert max_error(model, runner, padded_batch(TEXTS)) > 100 * F32_TOLERANCE


@pytest.mark.parametrize("gguf_type, min_agreement", [("q8_0", 0.97), ("q4_1", 0.8), ("q4_0", 0.8), ("q4_k_m", 0.8)])
def test_quantized_files_agree_with_eager_and_are_smaller(decoder, gguf_type, min_agreement):
    base, model, outs = decoder
    inputs = padded_batch([e.text for e in synthetic_examples(32, seed=5)])
    real = inputs["attention_mask"].bool()
    runner = load_runner(outs[gguf_type], base, "causal-lm", "cpu")
    fidelity = compare_logits(eager_logits(model, inputs)[real], runner.logits(inputs)[real])
    assert fidelity.top1_agreement >= min_agreement, fidelity
    size = (outs[gguf_type] / MODEL_FILE).stat().st_size
    # the tied 30522 x 64 embedding, most of the tiny model, stays in Q8_0 (its rows are too short for Q6_K)
    assert size < (0.4 if gguf_type == "q8_0" else 0.35) * (outs["f32"] / MODEL_FILE).stat().st_size


@pytest.mark.parametrize("gguf_type", ["f32", "q8_0"])
def test_decode_loop_reproduces_eager_greedy_generation(decoder, gguf_type):
    base, model, outs = decoder
    runner = load_runner(outs[gguf_type], base, "causal-lm", "cpu")
    for prompt in ("the movie was", "happy food and the day was really"):
        ids = tokenizer()([prompt], return_tensors="pt")["input_ids"]
        reference = model.generate(ids, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids))
        assert greedy(runner, ids, 8).tolist() == reference[:, ids.shape[1]:].tolist()


def test_decode_state_must_be_the_cached_sequence(decoder):
    base, _, outs = decoder
    runner = load_runner(outs["f32"], base, "causal-lm", "cpu")
    ids = tokenizer()(["the movie was"], return_tensors="pt")["input_ids"]
    logits, state = runner.start(ids)
    assert state == ids.shape[1] and logits.shape == (1, runner.context.n_vocab)
    with pytest.raises(ValueError, match="not the sequence"):
        runner.step(logits.argmax(-1, keepdim=True), state - 1)
    with pytest.raises(ValueError, match="one sequence"):
        runner.start(ids.repeat(2, 1))


def test_runtime_file_names_llama_cpp_and_the_type(decoder):
    _, _, outs = decoder
    runtime = json.loads((outs["q4_1"] / RUNTIME_FILE).read_text())
    assert (runtime["runtime"], runtime["model"], runtime["gguf_type"]) == ("llama.cpp", MODEL_FILE, "q4_1")
    assert runtime["tensor_types"]["Q4_1"] >= 14 and runtime["tensor_types"]["F32"] >= 5  # matrices, norms
    # 2 blocks of 9 tensors, the embedding (the tied head), the final norm
    assert json.loads((outs["f32"] / RUNTIME_FILE).read_text())["tensor_types"] == {"F32": 20}


def test_unsupported_architecture_is_refused_with_its_name(tmp_path):
    tiny_bert_classifier(train_steps=1).save_pretrained(tmp_path)
    with pytest.raises(MethodUnsupported, match="BertForSequenceClassification"):
        GgufExport().apply(tmp_path, tmp_path / "out", stage_context(tmp_path, "causal-lm"))


def test_rope_scaling_is_refused(tmp_path):
    config = {"architectures": ["LlamaForCausalLM"], "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(MethodUnsupported, match="llama3"):
        gguf_export.read_config(tmp_path)


def test_classifiers_skip_and_bad_types_name_the_valid_ones():
    with pytest.raises(MethodUnsupported):
        registry.METHODS["gguf-q4_k_m"].check_supported("classifier", "cpu")
    with pytest.raises(ValueError, match="q4_k_m"):
        GgufExport(gguf_type="q3")


def test_missing_llama_cpp_skips_with_one_line(monkeypatch):
    monkeypatch.setattr(gguf_export, "is_installed", lambda module: module != "llama_cpp")
    with pytest.raises(MethodUnsupported, match=r"llama-cpp-python \(pip install compresslab\[llama\]"):
        GgufExport().check_supported("causal-lm", "cpu")


def test_repacked_layout_holds_the_repackable_block_matrices_only(decoder):
    """Q4_0 (and Q4_K) block matrices go to llama.cpp's CPU_REPACK layout; the Q4_1 file, whose type it
    has no layout for (a null layout crashes llama.cpp), keeps the plain one."""
    pytest.importorskip("llama_cpp")
    base, _, outs = decoder
    names = llama_cpp_runner.repacked_tensor_names(outs["q4_0"] / MODEL_FILE)
    assert names and all(name.startswith("blk.") for name in names)
    assert llama_cpp_runner.repacked_tensor_names(outs["q4_1"] / MODEL_FILE) == []
    runner = load_runner(outs["q4_0"], base, "causal-lm", "cpu")
    if llama_cpp_runner.cpu_buffer_type(runner.context.lib, llama_cpp_runner.REPACK_BUFFER) is None:
        pytest.skip("this llama.cpp build has no CPU_REPACK buffer type (no AVX2)")
    assert (runner.settings["weight_layout"], runner.settings["repacked_tensors"]) == ("CPU_REPACK", len(names))
    plain = load_runner(outs["q4_1"], base, "causal-lm", "cpu")
    assert (plain.settings["weight_layout"], plain.settings["repacked_tensors"]) == ("plain", 0)


def test_repacked_layout_computes_what_the_plain_layout_computes(decoder, monkeypatch):
    """The same Q4_0 file with and without the repacked layout: the same greedy tokens and close logits
    (both quantize activations to 8 bits, in different block orders); a file loaded with the plain layout
    reports it, so the comparison really compares two layouts."""
    base, model, outs = decoder
    inputs = padded_batch(TEXTS)
    real = inputs["attention_mask"].bool()
    repacked = load_runner(outs["q4_0"], base, "causal-lm", "cpu")
    monkeypatch.setattr(llama_cpp_runner, "cpu_buffer_type", lambda lib, wanted: None)
    plain = load_runner(outs["q4_0"], base, "causal-lm", "cpu")
    assert plain.settings["weight_layout"] == "plain"
    fidelity = compare_logits(plain.logits(inputs)[real], repacked.logits(inputs)[real])
    assert fidelity.top1_agreement >= 0.95, fidelity
    ids = tokenizer()(["the movie was"], return_tensors="pt")["input_ids"]
    assert greedy(repacked, ids, 8).tolist() == greedy(plain, ids, 8).tolist()


QUANTIZE_IN_CHILD = """
import sys
from pathlib import Path
from compresslab.methods import gguf_export
source, target, silenced = sys.argv[1:]
if silenced == "no":  # the control: llama.cpp keeps its own logger
    gguf_export.quiet_llama_cpp = lambda: None
gguf_export.quantize_gguf(Path(source), Path(target), "q8_0", 1)
"""


def test_the_quantizer_prints_nothing(tmp_path):
    """llama.cpp logs its loader's metadata and a line per quantized tensor; a build shows none of it.
    Each quantization runs in a child: llama.cpp's logger is per process, and a runner loaded earlier
    in this one has silenced it already. The control, left to llama.cpp's own logger, shows the lines."""
    pytest.importorskip("llama_cpp")
    base = tmp_path / "fp32"
    tiny_llama(train_steps=0).save_pretrained(base)
    save_tokenizer(tokenizer(), base)
    (tmp_path / "f32").mkdir()
    f32 = export(base, tmp_path / "f32", "f32") / MODEL_FILE

    def output_of_quantizing(silenced: str) -> str:
        target = tmp_path / f"q8_0-silenced-{silenced}.gguf"
        child = subprocess.run([sys.executable, "-c", QUANTIZE_IN_CHILD, str(f32), str(target), silenced],
                               capture_output=True, text=True, timeout=300)
        assert child.returncode == 0 and target.is_file(), child.stderr
        return child.stdout + child.stderr

    assert "converting to q8_0" in output_of_quantizing("no")
    silenced = output_of_quantizing("yes")
    assert "converting to" not in silenced and "llama_model_loader" not in silenced, silenced
