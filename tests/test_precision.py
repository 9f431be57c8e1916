"""The one full-precision rule (models/precision.py): it keeps the task head of each kind and
nothing else, every library form of it agrees with it on tiny models of each architecture, each
method hands its library that form, and no method module keeps a list of its own."""

import ast
import fnmatch
import json
import re
from pathlib import Path

import pytest
import torch

from compresslab.methods.base import StageContext
from compresslab.models import precision
from compresslab.models.loading import save_tokenizer
from compresslab.models.precision import (full_precision_names, ignore_regexes, linear_filter, quantizable_linears,
                                          shell_patterns, stays_full_precision)
from tiny import calibration_texts, tokenizer

METHODS_DIR = Path(precision.__file__).parents[1] / "methods"


def tiny_models():
    """(architecture, kind, model, the Linears its head holds) for each head layout the rule names."""
    from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                              DistilBertForSequenceClassification, LlamaConfig, LlamaForCausalLM,
                              LlamaForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

    torch.manual_seed(0)
    encoder = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=64, num_labels=3)
    llama = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0)
    return [
        ("bert", "classifier", BertForSequenceClassification(BertConfig(**encoder)), {"classifier"}),
        ("distilbert", "classifier", DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, num_labels=3)),
         {"pre_classifier", "classifier"}),
        ("roberta", "classifier", RobertaForSequenceClassification(RobertaConfig(**encoder, pad_token_id=1)),
         {"classifier.dense", "classifier.out_proj"}),
        ("llama-score", "classifier", LlamaForSequenceClassification(LlamaConfig(**llama, num_labels=3)), {"score"}),
        ("llama", "causal-lm", LlamaForCausalLM(LlamaConfig(**llama)), {"lm_head"}),
    ]


MODELS = tiny_models()
IDS = [arch for arch, *_ in MODELS]


def linear_names(model) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def kept_by_rule(model, kind, also=()) -> set[str]:
    return {name for name in linear_names(model) if stays_full_precision(name, kind, also)}


@pytest.mark.parametrize("arch, kind, model, head", MODELS, ids=IDS)
def test_the_rule_keeps_the_head_and_nothing_else(arch, kind, model, head):
    assert kept_by_rule(model, kind) == head
    assert {name for name, _ in quantizable_linears(model, kind)} == set(linear_names(model)) - head


def test_also_keeps_more_by_whole_name_components():
    _, kind, model, head = MODELS[-1]
    down = {name for name in linear_names(model) if name.endswith(".mlp.down_proj")}
    assert len(down) == 2
    assert kept_by_rule(model, kind, also=("down_proj",)) == head | down
    assert kept_by_rule(model, kind, also=("mlp.down_proj",)) == head | down
    assert not stays_full_precision("model.layers.0.mlp.down_proj_extra", kind, also=("down_proj",))
    assert not stays_full_precision("model.my_lm_head", kind)  # a component, not a substring


def test_bad_kinds_and_names_are_refused():
    with pytest.raises(ValueError, match="unknown model kind 'seq2seq'"):
        full_precision_names("seq2seq")
    with pytest.raises(ValueError, match="dotted module names, got '.down_proj'"):
        full_precision_names("causal-lm", also=(".down_proj",))


# -- each library's form of the rule decides as the rule does, on every Linear of every model --

def converts_by_transformers(name, kind, also):
    """bitsandbytes' llm_int8_skip_modules and TorchAoConfig's modules_to_not_convert, as transformers matches them."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    return should_convert_module(name, full_precision_names(kind, also))


def converts_by_quanto(name, kind, also):
    return not any(fnmatch.fnmatch(name, pattern) for pattern in shell_patterns(kind, also))


def converts_by_llmcompressor(name, kind, also):
    from compressed_tensors.utils.match import match_name

    # llm-compressor's pruning modifiers match "<layer>." for a Linear found as its own layer
    return not any(match_name(candidate, pattern) for pattern in ignore_regexes(kind, also)
                   for candidate in (name, f"{name}."))


def converts_by_torchao(name, kind, also, model):
    return linear_filter(kind, also)(model.get_submodule(name), name)


FORMS = {"transformers": converts_by_transformers, "quanto": converts_by_quanto,
         "llmcompressor": converts_by_llmcompressor}


@pytest.mark.parametrize("also", [(), ("down_proj",)])
@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("arch, kind, model, head", MODELS, ids=IDS)
def test_each_library_form_agrees_with_the_rule(arch, kind, model, head, form, also):
    disagree = [name for name in linear_names(model)
                if FORMS[form](name, kind, also) == stays_full_precision(name, kind, also)]
    assert not disagree, f"{form} decides otherwise than the rule for {disagree}"


@pytest.mark.parametrize("arch, kind, model, head", MODELS, ids=IDS)
def test_torchao_filter_agrees_and_skips_non_linears(arch, kind, model, head):
    assert {name for name in linear_names(model) if not converts_by_torchao(name, kind, (), model)} == head
    embedding = next(name for name, module in model.named_modules() if isinstance(module, torch.nn.Embedding))
    assert not linear_filter(kind)(model.get_submodule(embedding), embedding)


# -- each method hands its library the rule's form --

@pytest.mark.parametrize("kind", ["classifier", "causal-lm"])
def test_bitsandbytes_skips_what_the_rule_keeps(kind):
    pytest.importorskip("bitsandbytes")
    from compresslab.methods.bnb import BitsAndBytesQuant

    for method in (BitsAndBytesQuant(bits=8), BitsAndBytesQuant(bits=4)):
        assert method.quantization_config(kind).llm_int8_skip_modules == full_precision_names(kind)


def test_sparsity_ignores_what_the_rule_keeps():
    pytest.importorskip("llmcompressor")
    from compresslab.methods.oneshot_sparsity import _modifier

    for algorithm in ("sparsegpt", "wanda"):
        assert _modifier(algorithm, 0.5, "0:0", "causal-lm").ignore == ignore_regexes("causal-lm")


def test_gptqmodel_leaves_the_lm_head_as_the_rule_keeps_it():
    pytest.importorskip("gptqmodel")
    from compresslab.methods.gptq import AWQ, GPTQ

    assert stays_full_precision("lm_head", "causal-lm")
    assert GPTQ().quantize_config().lm_head is False
    assert AWQ().quantize_config().lm_head is False


def test_torchao_int8_leaves_what_the_rule_keeps(tmp_path):
    """The torchao rows name the rule's modules themselves instead of leaning on transformers' default."""
    from compresslab.methods.torchao_quant import TorchaoQuant
    from tiny import tiny_bert_classifier

    model = tiny_bert_classifier(train_steps=0)
    src, out = saved(tmp_path / "src", model), tmp_path / "int8"
    TorchaoQuant(scheme="int8-weight").apply(src, out, StageContext("tiny", "classifier", "cpu", src))
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["modules_to_not_convert"] == full_precision_names("classifier")


def saved(tmp_path, model) -> Path:
    model.save_pretrained(tmp_path)
    save_tokenizer(tokenizer(), tmp_path)
    return tmp_path


def test_int4_quantizes_what_the_rule_converts(tmp_path):
    """DistilBERT's pre_classifier stays in bf16 (it was quantized before the one rule)."""
    pytest.importorskip("optimum.quanto")
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from compresslab.methods.int4_weight import Int4WeightOnly
    from compresslab.models.formats import QUANTO_QMAP

    # quanto's qint4 groups need in_features that are multiples of 128
    model = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=tokenizer().vocab_size, dim=128, n_layers=1, n_heads=2, hidden_dim=256, num_labels=3))
    src, out = saved(tmp_path / "src", model), tmp_path / "int4"
    Int4WeightOnly().apply(src, out, StageContext("tiny", "classifier", "cpu", src))
    quantized = {name for name, entry in json.loads((out / QUANTO_QMAP).read_text()).items() if entry.get("weights")}
    assert quantized == {name for name, _ in quantizable_linears(model, "classifier")}


def test_static_int8_calibrates_and_converts_what_the_rule_converts(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from compresslab.methods.torchao_static import TorchaoStaticInt8

    model = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer().vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=3))
    src = saved(tmp_path, model)
    ctx = StageContext("tiny", "classifier", "cpu", src, calibration=calibration_texts)
    scales = TorchaoStaticInt8(calibration_samples=2).activation_scales(src, ctx)
    expected = {name for name, _ in quantizable_linears(model, "classifier")}
    assert set(scales) == expected and "bert.pooler.dense" in expected and "classifier" not in expected


# -- no method module decides on its own --

HEAD_WORDS = re.compile(r"(^|[^A-Za-z0-9_])(lm_head|pre_classifier|score)([^A-Za-z0-9_]|$)")
# "classifier" alone is also the name of a model kind: only a pattern around it names modules
CLASSIFIER_PATTERN = re.compile(r"[.*:]classifier|classifier[.*$]")
# a literal list handed to a library, or the old static int8 rule (Linears under the base model)
OWN_RULES = re.compile(r"KEEP_FULL_PRECISION|base_model_prefix|(skip_modules|modules_to_not_convert|exclude|ignore)"
                       r"\s*=\s*[\[(]\s*[\"']")


def literal_strings(tree: ast.AST) -> list[str]:
    """String constants of a module, without docstrings and without the rule's own arguments
    (``stays_full_precision("lm_head", ...)`` asks the rule, it does not restate it)."""
    skipped = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            skipped.add(id(first.value))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "stays_full_precision":
            skipped.update(id(arg) for arg in node.args)
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped]


@pytest.mark.parametrize("path", sorted(METHODS_DIR.glob("*.py")), ids=lambda path: path.name)
def test_no_method_module_keeps_its_own_full_precision_list(path):
    source = path.read_text()
    assert not OWN_RULES.search(source), f"{path.name} decides what stays in full precision itself"
    own = [text for text in literal_strings(ast.parse(source))
           if HEAD_WORDS.search(text) or CLASSIFIER_PATTERN.search(text)]
    assert not own, f"{path.name} names head modules itself: {own}; ask models/precision.py"
