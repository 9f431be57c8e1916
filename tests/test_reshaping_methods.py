"""Methods that change the model's shape: distillation into fewer layers, low-rank factorization
(structured pruning: test_tp_prune.py). Each saves, reloads through the user's path and is checked
on a tiny model."""

import json

import pytest
import torch

from compresslab.methods import distill
from compresslab.methods.distill import LayerDropDistill, kept_blocks, make_student
from compresslab.methods.lowrank import LowRankSVD, choose_rank, factorize
from compresslab.models.finetune import FinetuneConfig, TrainBudget
from compresslab.models.loading import load_pretrained
from compresslab.models.runner import TorchRunner
from compresslab.models.structure import STRUCTURE_FILE, LowRankLinear, block_list
from compresslab.trackers import fidelity
from compresslab.trackers.sparsity import parameter_count
from tiny import (SyntheticSentiment, stage_context, synthetic_examples, tiny_bert_classifier, tiny_llama,
                  tokenizer)

CLASSIFIER = FinetuneConfig(max_steps=25, batch_size=16, learning_rate=1e-3)
LM = FinetuneConfig(max_steps=4, batch_size=2, max_length=32, learning_rate=1e-3)
FAST = TrainBudget(classifier=CLASSIFIER, causal_lm=LM)


ctx = stage_context


def svd_of(linear):
    return torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)


def save(model, path):
    path.mkdir()
    model.save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def wide_classifier(tmp_path_factory):
    """4 layers of 4 heads, so that keeping half the layers leaves more than one."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = tiny_bert_classifier(train_steps=40, hidden_size=64)
    config = BertConfig(**{**model.config.to_dict(), "num_hidden_layers": 4, "num_attention_heads": 4})
    deeper = BertForSequenceClassification(config)
    deeper.load_state_dict(model.state_dict(), strict=False)  # layers 2-3 start fresh; training fixes that
    optimizer = torch.optim.AdamW(deeper.parameters(), lr=2e-3)
    for step, start in enumerate(range(0, 32 * 40, 32)):
        batch = synthetic_examples(32 * 40, 1)[start : start + 32]
        inputs = tokenizer()([e.text for e in batch], padding=True, return_tensors="pt")
        deeper(**inputs, labels=torch.tensor([e.label for e in batch])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return save(deeper.eval(), tmp_path_factory.mktemp("wide") / "fp32")


def accuracy(path) -> float:
    runner = TorchRunner(load_pretrained(path, "classifier"), tokenizer(), "cpu", "classifier")
    return SyntheticSentiment().evaluate(runner).metrics["accuracy"]


def trained_models(monkeypatch, module) -> list:
    """The models ``module`` trains, kept as they are in memory when its ``apply`` saves them."""
    trained = []
    real = module.train

    def spy(model, *args, **kwargs):
        trained.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(module, "train", spy)
    return trained


def held_out_logits(model) -> torch.Tensor:
    texts = [e.text for e in synthetic_examples(64, seed=999)]
    with torch.no_grad():
        return model(**tokenizer()(texts, padding=True, return_tensors="pt")).logits


def assert_reload_equals(in_memory, path, kind):
    reloaded = load_pretrained(path, kind)
    assert torch.equal(held_out_logits(reloaded), held_out_logits(in_memory.eval())), \
        f"{path} reloads to other logits than the model that was saved"


def assert_changed(before, after, share=0.9):
    """At least ``share`` of the parameter tensors moved (training ran and reached the saved model)."""
    start = dict(before.named_parameters())
    unchanged = [n for n, p in after.named_parameters() if torch.equal(p.detach(), start[n].detach())]
    assert len(unchanged) <= (1 - share) * len(start), \
        f"{len(unchanged)} of {len(start)} tensors unchanged: {unchanged[:4]}"


def assert_closer_to_teacher(teacher_logits, start_logits, student_logits):
    """Distillation moved the student's output distributions toward the teacher's."""
    before = fidelity.compare_logits(teacher_logits, start_logits).kl_div
    after = fidelity.compare_logits(teacher_logits, student_logits).kl_div
    assert after < 0.8 * before, f"KL(teacher || student) {after:.4f}, starting student {before:.4f}"


def assert_close_to_teacher(teacher_logits, student_logits, min_agreement=0.95, max_kl=0.05):
    close = fidelity.compare_logits(teacher_logits, student_logits)
    assert close.top1_agreement >= min_agreement and close.kl_div <= max_kl, \
        f"top-1 agreement with the teacher {close.top1_agreement:.2f}, KL(teacher || student) {close.kl_div:.4f}"


# ---- distillation


def test_student_keeps_every_other_block_and_renumbers_them():
    assert kept_blocks(6, 2) == [0, 2, 4] and kept_blocks(30, 2) == list(range(0, 30, 2))
    teacher = tiny_llama(train_steps=0)
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**teacher.config.to_dict(), "num_hidden_layers": 4})
    teacher = LlamaForCausalLM(config)
    student, kept = make_student(teacher, 2)
    assert kept == [0, 2] and student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    blocks = block_list(student)[1]
    assert torch.equal(blocks[1].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)
    assert [b.self_attn.layer_idx for b in blocks] == [0, 1]
    ids = torch.tensor([[5, 6, 7, 8]])
    generated = student.generate(ids, max_new_tokens=3, do_sample=False)  # the KV cache works with new indices
    assert generated.shape == (1, 7)


def test_distilled_classifier_is_trained_toward_its_teacher_and_reloads_exactly(wide_classifier, tmp_path,
                                                                                 monkeypatch):
    trained = trained_models(monkeypatch, distill)
    LayerDropDistill(budget=FAST).apply(wide_classifier, tmp_path, ctx(wide_classifier))
    assert not (tmp_path / STRUCTURE_FILE).exists()  # a plain checkpoint: from_pretrained, no structure map
    assert_reload_equals(trained[0], tmp_path, "classifier")
    teacher = load_pretrained(wide_classifier, "classifier")
    start, _ = make_student(teacher, 2)
    student = load_pretrained(tmp_path, "classifier")
    assert student.config.num_hidden_layers == 2
    assert_changed(start, student)
    # the kept blocks already answer as the teacher does on this easy task (both saturate): what
    # distillation must show here is that it trained them and kept the answers
    assert_close_to_teacher(held_out_logits(teacher), held_out_logits(student))
    record = json.loads((tmp_path / "records" / "distill.json").read_text())
    assert record["kept_blocks"] == [0, 2] and record["steps"] == 25 and record["train_s"] > 0
    assert accuracy(tmp_path) >= 0.9 * accuracy(wide_classifier)


def test_an_untrained_student_fails_the_distillation_checks(wide_classifier, tmp_path, monkeypatch):
    monkeypatch.setattr(distill, "train", lambda *args: {"steps": 25, "train_s": 1.0})  # training skipped
    LayerDropDistill(budget=FAST).apply(wide_classifier, tmp_path, ctx(wide_classifier))
    teacher = load_pretrained(wide_classifier, "classifier")
    start, _ = make_student(teacher, 2)
    untrained = load_pretrained(tmp_path, "classifier")
    with pytest.raises(AssertionError, match="tensors unchanged"):
        assert_changed(start, untrained)
    with pytest.raises(AssertionError, match="KL"):  # untrained: its outputs did not move toward the teacher's
        assert_closer_to_teacher(*(held_out_logits(m) for m in (teacher, start, untrained)))
    teacher_logits = held_out_logits(teacher)
    for wrong in (-teacher_logits, torch.zeros_like(teacher_logits)):  # opposite answers; a constant
        with pytest.raises(AssertionError, match="top-1 agreement"):
            assert_close_to_teacher(teacher_logits, wrong)
    with torch.no_grad():
        untrained.classifier.bias.add_(1.0)  # the saved model and the one in memory part ways
    with pytest.raises(AssertionError, match="reloads to other logits"):
        assert_reload_equals(untrained, tmp_path, "classifier")


def test_distilled_lm_trains_on_teacher_token_distributions(tmp_path, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(**{**tiny_llama(train_steps=0).config.to_dict(), "num_hidden_layers": 4}))
    src = save(teacher, tmp_path / "teacher")
    out = tmp_path / "student"
    out.mkdir()
    trained = trained_models(monkeypatch, distill)
    LayerDropDistill(budget=FAST, alpha=1.0).apply(src, out, ctx(src, "causal-lm"))
    assert_reload_equals(trained[0], out, "causal-lm")
    student = load_pretrained(out, "causal-lm")
    assert student.config.num_hidden_layers == 2
    start, _ = make_student(teacher.eval(), 2)
    assert_changed(start, student)
    assert_closer_to_teacher(held_out_logits(teacher), held_out_logits(start), held_out_logits(student))


@pytest.mark.parametrize("kwargs, needle", [({"keep_every": 1}, "keep_every"), ({"temperature": 0}, "temperature"),
                                            ({"alpha": 1.5}, "alpha")])
def test_distill_rejects_bad_config(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        LayerDropDistill(**kwargs)


# ---- low-rank factorization


def test_choose_rank_keeps_the_energy_asked_for():
    values = torch.tensor([10.0, 5.0, 1.0, 1.0] + [0.1] * 60)
    assert choose_rank(values, 0.8, multiple=1) == 2  # 100 of 127.6 is 78%: one more
    assert choose_rank(values, 0.75, multiple=1) == 1
    assert choose_rank(values, 0.97, multiple=1) == 2
    assert choose_rank(values, 0.97, multiple=8) == 8
    assert choose_rank(values, 0.999999, multiple=8) == 64


def test_factorize_is_exact_at_full_rank_and_close_for_a_low_rank_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 48)
    x = torch.randn(5, 32)
    assert torch.allclose(factorize(linear, 32, svd_of(linear))(x), linear(x), atol=1e-5)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(48, 4) @ torch.randn(4, 32))
    low = factorize(linear, 8, svd_of(linear))
    assert isinstance(low, LowRankLinear) and low.down.weight.shape == (8, 32)
    assert torch.allclose(low(x), linear(x), atol=1e-4)


def test_lowrank_saves_reloads_and_reports_ranks(wide_classifier, tmp_path):
    LowRankSVD(energy=0.5, budget=FAST).apply(wide_classifier, tmp_path, ctx(wide_classifier))
    record = json.loads((tmp_path / "records" / "lowrank.json").read_text())
    assert record["recovery"]["steps"] == 25 and len(record["ranks"]) == 4 * 6
    model = load_pretrained(tmp_path, "classifier")
    factored = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    assert record["factorized"] == f"{len(factored)} of 24 block Linear layers" and factored
    assert parameter_count(model) < parameter_count(load_pretrained(wide_classifier, "classifier"))
    assert accuracy(tmp_path) >= 0.85 * accuracy(wide_classifier)
