"""SparseGPT / Wanda through llm-compressor on a tiny trained Llama, and chains of pruning stages."""

import json

import pytest
import torch

from compresslab import registry
from compresslab.cache import ArtifactCache
from compresslab.methods.base import MethodUnsupported, StageContext
from compresslab.methods.oneshot_sparsity import OneShotSparsity
from compresslab.models.loading import load_pretrained
from compresslab.models.runner import SPARSITY_FILE
from compresslab.models.spec import ModelSpec
from compresslab.models.structure import block_linears
from compresslab.pipeline import Pipeline
from compresslab.trackers.sparsity import block_sparsity
from tiny import TinySource, synthetic_examples, tiny_llama, tokenizer

SMALL = {"n_samples": 16, "seq_len": 64}


def calibration(n):
    return [" ".join(e.text for e in synthetic_examples(12, seed=50 + i)) for i in range(n)]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    src = tmp_path_factory.mktemp("fp32")
    tiny_llama(train_steps=40).save_pretrained(src)
    tokenizer().save_pretrained(src)
    return src


def build(method, src, out):
    method.apply(src, out, StageContext("tiny", "causal-lm", "cpu", src, calibration=calibration))
    return load_pretrained(out, "causal-lm")


def output_error(model, reference) -> float:
    ids = tokenizer()([e.text for e in synthetic_examples(32, seed=999)], padding=True, return_tensors="pt")
    with torch.no_grad():
        return float((model(**ids).logits - reference(**ids).logits).pow(2).mean())


def test_gating_and_bad_configs():
    with pytest.raises(MethodUnsupported, match="causal-lm"):
        registry.METHODS["sparsegpt-50"].check_supported("classifier", "cpu")
    for kwargs, needle in [({"algorithm": "obs"}, "algorithm"), ({"mask_structure": "1:4"}, "mask_structure"),
                           ({"sparsity": 0}, "sparsity"), ({"n_samples": 0}, "n_samples")]:
        with pytest.raises(ValueError, match=needle):
            OneShotSparsity(**kwargs)


def test_sparsegpt_beats_magnitude_at_the_same_sparsity(llama_dir, tmp_path):
    reference = load_pretrained(llama_dir, "causal-lm")
    (tmp_path / "sgpt").mkdir()
    (tmp_path / "l1").mkdir()
    sparsegpt = build(OneShotSparsity(algorithm="sparsegpt", **SMALL), llama_dir, tmp_path / "sgpt")
    magnitude = build(registry.METHODS["prune-l1-50"], llama_dir, tmp_path / "l1")
    assert block_sparsity(sparsegpt) == pytest.approx(0.5, abs=0.01)
    assert float((sparsegpt.lm_head.weight == 0).float().mean()) < 0.01
    assert output_error(sparsegpt, reference) < output_error(magnitude, reference)
    # llm-compressor's recipe is a build record, not part of the shipped model
    assert not (tmp_path / "sgpt" / "recipe.yaml").exists()
    assert json.loads((tmp_path / "sgpt" / "records" / "oneshot_sparsity.json").read_text())["calibration_texts"] == 16


@pytest.mark.parametrize("algorithm", ["sparsegpt", "wanda"])
def test_semi_structured_and_wanda(llama_dir, tmp_path, algorithm):
    model = build(OneShotSparsity(algorithm=algorithm, mask_structure="2:4", **SMALL), llama_dir, tmp_path)
    for module in block_linears(model).values():
        assert int((module.weight != 0).reshape(module.out_features, -1, 4).sum(-1).max()) <= 2
    assert json.loads((tmp_path / SPARSITY_FILE).read_text())["pattern"] == "2:4"


def test_chain_reuses_the_cached_pruning_stage(tmp_path):
    spec = ModelSpec("tiny", "classifier", TinySource(), ("synthetic-sentiment",), "tiny")
    pipeline = Pipeline(ArtifactCache(tmp_path), registry.METHODS)
    pruned = pipeline.build(spec, "prune-global-50", "cpu")
    chained = Pipeline(ArtifactCache(tmp_path), registry.METHODS).build(spec, "prune-global-50+int8-dynamic", "cpu")
    assert [s.name for s in chained.stages] == ["base", "prune-global-50", "int8-dynamic"]
    assert [s.built_now for s in chained.stages] == [False, False, True]
    assert chained.stages[1].key == pruned.stages[1].key
    assert chained.stages[1].records["prune"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    # the int8 stage keeps the zeros: symmetric int8 maps 0 to 0
    model = load_pretrained(chained.path, "classifier")
    assert block_sparsity(model) == pytest.approx(0.5, abs=0.02)
