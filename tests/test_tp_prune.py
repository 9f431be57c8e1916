"""tp-prune-30: Torch-Pruning's dependency-graph pruning of heads and MLP channels, on a tiny BERT
encoder and a tiny grouped-query Llama decoder (9 heads in 3 key/value groups, as SmolLM2)."""

import copy
import json

import pytest
import torch

from compresslab import registry
from compresslab.methods import structured
from compresslab.methods.base import MethodUnsupported
from compresslab.methods.tp_prune import (TorchPruningPrune, block_parameters, block_parts, check_really_shrank,
                                          prune_with_torch_pruning)
from compresslab.models.finetune import FinetuneConfig, TrainBudget
from compresslab.models.loading import load_pretrained
from compresslab.models.structure import STRUCTURE_FILE, block_list
from test_reshaping_methods import assert_reload_equals
from tiny import build_methods, synthetic_examples, tokenizer

pytest.importorskip("torch_pruning")

FAST = TrainBudget(classifier=FinetuneConfig(max_steps=3, batch_size=8, learning_rate=1e-3),
                   causal_lm=FinetuneConfig(max_steps=2, batch_size=2, max_length=32, learning_rate=1e-3))


def tiny_encoder():
    """6 heads of 16 and 320 MLP channels: 30% removes 2 heads (Torch-Pruning rounds up) and 96 channels."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer().vocab_size, hidden_size=96, num_hidden_layers=2, num_attention_heads=6,
        intermediate_size=320, max_position_embeddings=128, num_labels=2)).eval()


def tiny_decoder():
    """SmolLM2's attention layout in miniature: 9 query heads in 3 key/value groups, head_dim 8."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=tokenizer().vocab_size, hidden_size=72, intermediate_size=320, num_hidden_layers=2,
        num_attention_heads=9, num_key_value_heads=3, head_dim=8, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=tokenizer().pad_token_id)).eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Both tiny models pruned by the method (magnitude for the encoder, Taylor for the decoder), with
    the models as they were in memory when saved."""
    trained = []
    real = structured.train

    def spy(model, *args, **kwargs):
        trained.append(model)
        return real(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(structured, "train", spy)
        encoder = build_methods(tmp_path_factory, tiny_encoder(), "classifier",
                                {"tp": TorchPruningPrune(fraction=0.3, recovery=FAST)})
        decoder = build_methods(tmp_path_factory, tiny_decoder(), "causal-lm",
                                {"tp": TorchPruningPrune(fraction=0.3, importance="taylor", recovery=FAST)})
    return {"classifier": (*encoder, trained[0]), "causal-lm": (*decoder, trained[1])}


def assert_params_drop_about(pruned, original, fraction, tolerance=0.1):
    dropped = 1 - block_parameters(pruned) / block_parameters(original)
    assert abs(dropped - fraction) <= tolerance, \
        f"the blocks lost {dropped:.1%} of their parameters, not ~{fraction:.0%}"


@pytest.mark.parametrize("kwargs, needle", [({"fraction": 0}, "fraction"), ({"fraction": 1.0}, "fraction"),
                                            ({"importance": "l1"}, "importance .*magnitude, taylor"),
                                            ({"taylor_batches": 0}, "taylor_batches")])
def test_bad_config_is_a_one_line_error(kwargs, needle):
    with pytest.raises(ValueError, match=needle) as raised:
        TorchPruningPrune(**kwargs)
    assert "\n" not in str(raised.value)


def test_the_registry_row():
    method = registry.METHODS["tp-prune-30"]
    assert isinstance(method, TorchPruningPrune) and method.fraction == 0.3 and method.family == "prune-struct"
    assert "tp-prune-30" in registry.FULL_MATRIX["smollm2-135m"] and "tp-prune-30" in registry.FULL_MATRIX[
        "minilm-sentiment"]


def test_encoder_really_shrinks_and_reloads_to_the_same_logits(built):
    base, original, outs, trained = built["classifier"]
    path = outs["tp"]
    assert (path / STRUCTURE_FILE).is_file()  # BERT's head size comes from the config: the map restores it
    with pytest.raises(MethodUnsupported, match="reshaped modules"):  # no quantizer reads a structure map
        load_pretrained(path, "classifier", quantization_config=object())
    pruned = load_pretrained(path, "classifier")
    assert (pruned.config.num_attention_heads, pruned.config.intermediate_size) == (4, 224)
    for block in block_list(pruned)[1]:
        parts = block_parts(block)
        assert parts.query.out_features == parts.attention.all_head_size == 4 * 16
        assert parts.attention.attention_head_size == 16
        assert block.attention.output.dense.in_features == 64 and block.output.dense.in_features == 224
    check_really_shrank(pruned, original, 0.3)
    assert_params_drop_about(pruned, original, 0.3)
    assert (path / "model.safetensors").stat().st_size < (base / "model.safetensors").stat().st_size
    assert_reload_equals(trained, path, "classifier")
    record = json.loads((path / "records" / "tp_prune.json").read_text())
    assert record["heads"] == [6, 4] and record["ffn"] == [320, 224] and record["recovery"]["steps"] == 3
    assert record["parameters"][1] < record["parameters"][0]


def test_decoder_really_shrinks_in_whole_query_groups_and_reloads(built):
    base, original, outs, trained = built["causal-lm"]
    path = outs["tp"]
    assert not (path / STRUCTURE_FILE).exists()  # a plain checkpoint: from_pretrained rebuilds it from config
    pruned = load_pretrained(path, "causal-lm")
    config = pruned.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (6, 3, 8)
    assert config.intermediate_size == 224
    for block in block_list(pruned)[1]:
        attention = block.self_attn
        assert attention.q_proj.out_features == attention.o_proj.in_features == 6 * 8
        assert attention.k_proj.out_features == attention.v_proj.out_features == 3 * 8
        assert attention.num_key_value_groups == 2
    check_really_shrank(pruned, original, 0.3)
    assert_params_drop_about(pruned, original, 0.3)
    assert_reload_equals(trained, path, "causal-lm")
    generated = pruned.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)  # the KV cache works with the new head counts
    record = json.loads((path / "records" / "tp_prune.json").read_text())
    assert record["importance"] == "taylor" and record["kv_heads"] == [3, 3] and record["heads"] == [9, 6]


def kept_rows(pruned: torch.nn.Linear, original: torch.nn.Linear) -> list[int]:
    """The original output rows a pruned Linear kept (matched by their weights)."""
    rows = []
    for row in pruned.weight.detach():
        matches = (original.weight.detach() == row).all(dim=1).nonzero().flatten().tolist()
        assert len(matches) == 1, "a pruned row is not one of the original rows"
        rows.append(matches[0])
    return rows


def masked_like(original, pruned):
    """``original`` with the heads and MLP channels that ``pruned`` removed zeroed at their output."""
    masked = copy.deepcopy(original)
    size = original.config.head_dim
    for block, small in zip(block_list(masked)[1], block_list(pruned)[1]):
        heads = {row // size for row in kept_rows(small.self_attn.q_proj, block.self_attn.q_proj)}
        channels = set(kept_rows(small.mlp.up_proj, block.mlp.up_proj))
        with torch.no_grad():
            for head in set(range(original.config.num_attention_heads)) - heads:
                block.self_attn.o_proj.weight[:, head * size:(head + 1) * size] = 0
            for channel in set(range(original.config.intermediate_size)) - channels:
                block.mlp.down_proj.weight[:, channel] = 0
    return masked


def assert_query_groups_kept_whole(pruned, original):
    """Every kept query head still reads the key/value head it read before pruning."""
    size = original.config.head_dim
    before = original.config.num_attention_heads // original.config.num_key_value_heads
    after = pruned.config.num_attention_heads // pruned.config.num_key_value_heads
    for block, small in zip(block_list(original)[1], block_list(pruned)[1]):
        heads = [row // size for row in kept_rows(small.self_attn.q_proj, block.self_attn.q_proj)[::size]]
        groups = [head // before for head in heads]
        assert groups == [new // after for new in range(len(heads))], f"kept heads {heads} break the KV groups"


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_pruning_removes_exactly_what_it_names(importance):
    """Before recovery the pruned decoder computes what the original does with the removed heads and
    channels silenced, and each kept query head stays in its key/value group."""
    original = tiny_decoder()
    pruned = copy.deepcopy(original)
    ids = tokenizer()([e.text for e in synthetic_examples(4, seed=1)], padding=True, return_tensors="pt")

    def gradients():
        pruned(**ids, labels=ids["input_ids"]).loss.backward()

    counts = prune_with_torch_pruning(pruned, 0.3, importance, gradients if importance == "taylor" else None)
    assert counts["heads"] == [9, 6] and counts["kv_heads"] == [3, 3] and counts["ffn"] == [320, 224]
    assert_query_groups_kept_whole(pruned, original)
    with torch.no_grad():
        expected, got = masked_like(original, pruned)(**ids).logits, pruned(**ids).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_the_checks_fail_on_broken_inputs(built):
    _, original, _, _ = built["causal-lm"]
    with pytest.raises(ValueError, match="did not really shrink: heads 9 -> 9"):
        check_really_shrank(copy.deepcopy(original), original, 0.3)  # an unpruned copy
    liar = copy.deepcopy(original)
    liar.config.num_attention_heads, liar.config.intermediate_size = 6, 224  # the config alone changed
    with pytest.raises(ValueError, match="the config says"):
        check_really_shrank(liar, original, 0.3)
    with pytest.raises(AssertionError, match="lost 0.0%"):
        assert_params_drop_about(copy.deepcopy(original), original, 0.3)
    pruned = copy.deepcopy(original)
    prune_with_torch_pruning(pruned, 0.3, "magnitude")
    swapped = copy.deepcopy(pruned)
    for block in block_list(swapped)[1]:  # the first and last kept query heads trade places: groups broken
        with torch.no_grad():
            rows = block.self_attn.q_proj.weight
            rows[:8], rows[-8:] = rows[-8:].clone(), rows[:8].clone()
    with pytest.raises(AssertionError, match="break the KV groups"):
        assert_query_groups_kept_whole(swapped, original)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():  # silencing other channels than the ones removed gives other logits
        wrong = masked_like(original, pruned)
        wrong.model.layers[0].mlp.down_proj.weight.mul_(0.5)
        assert not torch.allclose(wrong(ids).logits, pruned(ids).logits, atol=1e-5)
        pruned.lm_head.weight.add_(1.0)
    with pytest.raises(AssertionError, match="reloads to other logits"):
        assert_reload_equals(pruned, built["causal-lm"][2]["tp"], "causal-lm")


def test_an_unsupported_architecture_is_refused_in_one_line():
    with pytest.raises(MethodUnsupported, match="not Linear blocks") as raised:
        block_parts(torch.nn.Linear(2, 2))
    assert "\n" not in str(raised.value)
