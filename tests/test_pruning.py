"""Magnitude pruning (per layer, global, 2:4, iterative) and the sparsity / parameter trackers."""

import json

import pytest
import torch
from safetensors import safe_open

from compresslab import registry
from compresslab.methods.pruning import MagnitudePrune, cubic_schedule, semi_structured_mask
from compresslab.models.finetune import FinetuneConfig, TrainBudget
from compresslab.models.loading import load_pretrained
from compresslab.models.runner import SPARSITY_FILE, TorchRunner
from compresslab.models.structure import block_linears
from compresslab.trackers.size import zstd_size
from compresslab.trackers.sparsity import block_sparsity, parameter_count
from tiny import (SyntheticSentiment, stage_context, tiny_bert_classifier, tiny_llama,
                  tokenizer)

FAST = TrainBudget(classifier=FinetuneConfig(max_steps=15, batch_size=16, learning_rate=1e-3),
                   causal_lm=FinetuneConfig(max_steps=4, batch_size=2, max_length=32))


ctx = stage_context


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    src = tmp_path_factory.mktemp("fp32")
    tiny_bert_classifier(train_steps=40).save_pretrained(src)
    tokenizer().save_pretrained(src)
    return src


def accuracy(path) -> float:
    runner = TorchRunner(load_pretrained(path, "classifier"), tokenizer(), "cpu", "classifier")
    return SyntheticSentiment().evaluate(runner).metrics["accuracy"]


def test_uses_task_data_exactly_when_a_recovery_fine_tune_runs():
    assert not MagnitudePrune().uses_task_data
    assert MagnitudePrune(rounds=3, recovery=FAST).uses_task_data
    assert MagnitudePrune(recovery=FAST).uses_task_data  # one round, then a recovery fine-tune


@pytest.mark.parametrize("kwargs, needle", [
    ({"sparsity": 1.0}, "sparsity must be in"), ({"scope": "row"}, "scope must be one of layer, global"),
    ({"pattern": "4:8"}, "pattern must be one of"), ({"pattern": "2:4", "sparsity": 0.6}, "0.5 by definition"),
    ({"rounds": 3}, "needs a recovery"),
])
def test_rejects_bad_config(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        MagnitudePrune(**kwargs)


def test_cubic_schedule_reaches_the_target_monotonically():
    steps = [cubic_schedule(0.5, r, 3) for r in (1, 2, 3)]
    assert steps == sorted(steps) and steps[-1] == pytest.approx(0.5) and steps[0] > 0.5 / 3


def test_semi_structured_mask_keeps_two_largest_of_four():
    weight = torch.tensor([[1.0, -4.0, 3.0, 0.5, 9.0, 8.0, -7.0, 6.0]])
    assert semi_structured_mask(weight).tolist() == [[False, True, True, False, True, True, False, False]]
    with pytest.raises(ValueError, match="divisible by 4"):
        semi_structured_mask(torch.ones(2, 6))


@pytest.mark.parametrize("method_id", ["prune-l1-50", "prune-global-50", "sparse-2of4"])
def test_one_shot_pruning_reaches_its_sparsity_with_permanent_masks(classifier_dir, tmp_path, method_id):
    registry.METHODS[method_id].apply(classifier_dir, tmp_path, ctx(classifier_dir))
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as saved:
        assert not [name for name in saved.keys() if name.endswith(("_orig", "_mask"))]
    model = load_pretrained(tmp_path, "classifier")
    assert not any("mask" in name for name, _ in model.named_buffers())
    layers = block_linears(model)
    assert block_sparsity(model) == pytest.approx(0.5, abs=0.01)
    if method_id == "prune-l1-50":  # every layer alone at 50%
        assert all(abs(float((m.weight == 0).float().mean()) - 0.5) < 0.01 for m in layers.values())
    if method_id == "sparse-2of4":
        for module in layers.values():
            groups = (module.weight != 0).reshape(module.out_features, -1, 4).sum(-1)
            assert int(groups.max()) <= 2
        assert sorted(json.loads((tmp_path / SPARSITY_FILE).read_text())["modules"]) == sorted(layers)
    # the zeros are stored dense: same bytes on disk, fewer after zstd
    original, pruned = classifier_dir / "model.safetensors", tmp_path / "model.safetensors"
    assert pruned.stat().st_size == pytest.approx(original.stat().st_size, rel=0.001)
    assert zstd_size(pruned) < zstd_size(original)  # the tiny model is mostly embedding: a small gain


def test_global_pruning_thresholds_across_layers(classifier_dir, tmp_path):
    registry.METHODS["prune-global-50"].apply(classifier_dir, tmp_path, ctx(classifier_dir))
    per_layer = [float((m.weight == 0).float().mean())
                 for m in block_linears(load_pretrained(tmp_path, "classifier")).values()]
    assert max(per_layer) - min(per_layer) > 0.02  # one threshold: layers end at different sparsities


def test_iterative_pruning_recovers_with_masks_held(classifier_dir, tmp_path):
    method = MagnitudePrune(sparsity=0.7, scope="global", rounds=2, recovery=FAST)
    method.apply(classifier_dir, tmp_path, ctx(classifier_dir))
    record = json.loads((tmp_path / "records" / "prune.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [1, 2]
    assert all(r["recovery"]["steps"] == 15 for r in record["rounds"])
    model = load_pretrained(tmp_path, "classifier")
    assert block_sparsity(model) == pytest.approx(0.7, abs=0.01)  # training did not refill pruned weights
    assert accuracy(tmp_path) >= 0.9 * accuracy(classifier_dir)


def test_decoder_pruning_and_lm_recovery(tmp_path):
    src = tmp_path / "fp32"
    tiny_llama().save_pretrained(src)
    tokenizer().save_pretrained(src)
    out = tmp_path / "pruned"
    out.mkdir()
    MagnitudePrune(sparsity=0.5, scope="global", rounds=2, recovery=FAST).apply(src, out, ctx(src, "causal-lm"))
    model = load_pretrained(out, "causal-lm")
    assert block_sparsity(model) == pytest.approx(0.5, abs=0.01)
    assert float((model.lm_head.weight == 0).float().mean()) < 0.01  # the tied output head is not a block layer


def test_parameter_count_counts_logical_weights_and_ties_once():
    model = tiny_llama(train_steps=0)
    assert parameter_count(model) == sum(p.numel() for p in model.parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight

    class Packed(torch.nn.Module):  # a 4-bit layer stores half a byte per weight
        def __init__(self):
            super().__init__()
            self.in_features, self.out_features = 8, 4
            self.weight = torch.nn.Parameter(torch.zeros(16, 1), requires_grad=False)

    assert parameter_count(Packed()) == 32
    dense = tiny_bert_classifier(train_steps=0)
    assert block_sparsity(dense) == 0.0 and parameter_count(dense) > 0
