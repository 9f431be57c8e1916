"""BlockDropDistill: the cut lands where blocks do nothing, the healed student trains only above it,
reloads as a plain checkpoint, and records its learning curve."""

import json

import pytest
import torch

from compresslab.methods import block_distill
from compresslab.methods.base import MethodUnsupported
from compresslab.methods.block_distill import BlockDropDistill, block_distances, choose_cut, freeze_below
from compresslab.methods.distill import keep_blocks
from compresslab.models.finetune import FinetuneConfig
from compresslab.models.loading import load_pretrained
from compresslab.models.structure import block_list
from test_reshaping_methods import assert_reload_equals, held_out_logits, save, trained_models
from tiny import calibration_texts, stage_context, tiny_llama, tokenizer

FAST = FinetuneConfig(max_steps=6, batch_size=2, max_length=32, learning_rate=1e-3)
IDLE = (3, 4)  # blocks made to pass their input through unchanged


def idle_blocks_llama():
    """A 6-block decoder whose blocks 3 and 4 add nothing to the residual stream."""
    model = tiny_llama(train_steps=10, num_hidden_layers=6)
    with torch.no_grad():
        for index in IDLE:
            block = model.model.layers[index]
            block.self_attn.o_proj.weight.zero_()
            block.mlp.down_proj.weight.zero_()
    return model.eval()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return save(idle_blocks_llama(), tmp_path_factory.mktemp("block-distill") / "teacher")


def windows(n=4, length=24):
    """Token windows of the synthetic sentences the tiny decoder was trained on."""
    ids = tokenizer()(" ".join(calibration_texts(2)), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    return ids[: n * length].view(n, length)


def test_the_cut_is_the_run_of_blocks_that_changes_nothing():
    model = idle_blocks_llama()
    distances = block_distances(model, windows(), 2)
    assert len(distances) == 4  # starts 0..3: a run ending in the final block is never offered
    assert distances[3] == pytest.approx(0, abs=1e-3) and min(distances[:3]) > 0.01
    start, _, perplexities = choose_cut(model, windows(), 2)
    assert start == 3 and perplexities[3] == min(perplexities.values())


def test_measured_perplexity_overrules_the_angle(monkeypatch):
    """The closest run in angle is not kept when dropping it costs more (SmolLM2: 233 vs 62)."""
    monkeypatch.setattr(block_distill, "block_distances", lambda *args: [0.0, 0.5, 0.6, 0.1])
    start, _, perplexities = choose_cut(idle_blocks_llama(), windows(), 2)
    assert start == 3 and perplexities[0] > perplexities[3]


def test_freezing_keeps_the_embeddings_and_the_blocks_below_fixed():
    student = keep_blocks(tiny_llama(train_steps=0, num_hidden_layers=4), [0, 1, 3])
    freeze_below(student, 1)
    trainable = {name for name, p in student.named_parameters() if p.requires_grad}
    assert not any(name.startswith(("model.embed_tokens", "model.layers.0.")) for name in trainable)
    assert any(name.startswith("model.layers.1.") for name in trainable)
    assert any(name.startswith("model.layers.2.") for name in trainable) and "model.norm.weight" in trainable


def test_healed_student_drops_the_idle_blocks_trains_above_the_cut_and_reloads(teacher_dir, tmp_path, monkeypatch):
    trained = trained_models(monkeypatch, block_distill)
    method = BlockDropDistill(n_drop=2, trainable_below_cut=1, curve_points=2, training=FAST)
    method.apply(teacher_dir, tmp_path, stage_context(teacher_dir, "causal-lm"))
    assert_reload_equals(trained[0], tmp_path, "causal-lm")
    teacher = load_pretrained(teacher_dir, "causal-lm")
    student = load_pretrained(tmp_path, "causal-lm")
    record = json.loads((tmp_path / "records" / "block_distill.json").read_text())
    assert record["dropped_blocks"] == [3, 5] and record["kept_blocks"] == [0, 1, 2, 5]
    assert student.config.num_hidden_layers == 4 and record["steps"] == 6
    kept = block_list(student)[1]
    # frozen below the cut (block 2 trains: trainable_below_cut=1), trained above it
    for index in (0, 1):
        assert torch.equal(kept[index].mlp.up_proj.weight, teacher.model.layers[index].mlp.up_proj.weight)
    assert not torch.equal(kept[2].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)
    assert not torch.equal(kept[3].mlp.up_proj.weight, teacher.model.layers[5].mlp.up_proj.weight)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    # dropping blocks that did nothing loses nothing before training: step 0 is the teacher's perplexity
    curve = record["learning_curve"]
    assert [point["step"] for point in curve] == [0, 3, 6]
    assert curve[0]["validation_perplexity"] == pytest.approx(record["teacher_validation_perplexity"], rel=1e-3)
    assert curve[0]["train_loss_ema"] is None and all(p["train_loss_ema"] > 0 for p in curve[1:])
    assert held_out_logits(student).shape[-1] == held_out_logits(teacher).shape[-1]


def test_a_student_that_never_trained_has_no_curve_and_equals_its_start(teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(block_distill, "train", lambda *args, **kwargs: {"steps": 6, "train_s": 1.0})  # skipped
    BlockDropDistill(n_drop=2, curve_points=2, training=FAST).apply(teacher_dir, tmp_path,
                                                                     stage_context(teacher_dir, "causal-lm"))
    record = json.loads((tmp_path / "records" / "block_distill.json").read_text())
    assert [point["step"] for point in record["learning_curve"]] == [0]  # no checkpoint was reached
    student = load_pretrained(tmp_path, "causal-lm")
    start = keep_blocks(load_pretrained(teacher_dir, "causal-lm"), record["kept_blocks"])
    assert all(torch.equal(p, q) for p, q in zip(student.parameters(), start.parameters()))


@pytest.mark.parametrize("kwargs, needle", [({"n_drop": 0}, "n_drop"), ({"curve_points": 0}, "curve_points"),
                                            ({"alpha": 2.0}, "alpha"), ({"temperature": 0}, "temperature")])
def test_bad_config_is_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        BlockDropDistill(**kwargs)


def test_too_many_blocks_dropped_and_classifiers_are_refused(teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="n_drop=5 must leave at least two"):
        BlockDropDistill(n_drop=5, training=FAST).apply(teacher_dir, tmp_path, stage_context(teacher_dir, "causal-lm"))
    with pytest.raises(MethodUnsupported, match="causal-lm"):
        BlockDropDistill().check_supported("classifier", "cpu")
