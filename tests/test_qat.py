"""Quantization-aware training (methods/qat.py) on tiny models: fake-quantized training that moves the
weights for exactly the budget's steps, converted to the PTQ twin's real quantized artifact, which
reloads quantized and computes what the in-memory quantized model computes."""

import json
import re

import pytest
import torch

from compresslab import registry
from compresslab.methods.base import MethodUnsupported
from compresslab.methods.dtype import DtypeCast
from compresslab.methods.qat import (QuantizationAwareTraining, fake_quantized, is_quantized_weight,
                                     quanto_int4_weight_config, unquantized_linears)
from compresslab.models.finetune import FinetuneConfig, TrainBudget
from compresslab.models.loading import load_pretrained, save_tokenizer
from compresslab.models.precision import linear_filter, quantizable_linears, shell_patterns
from compresslab.models.spec import RECORDS_DIR
from tiny import stage_context, tiny_bert_classifier, tiny_llama, tokenizer

pytest.importorskip("torchao")
pytest.importorskip("optimum.quanto")

# different step counts per kind, so a record that took the wrong one shows
BUDGET = TrainBudget(classifier=FinetuneConfig(max_steps=3, batch_size=8, max_length=32, learning_rate=1e-3),
                     causal_lm=FinetuneConfig(max_steps=2, batch_size=1, max_length=16, learning_rate=1e-3))
TARGETS = ("int8-dynamic", "int4-weight")
TEXTS = ["the movie was great and happy", "awful sad day and the food was terrible"]


def float_state(model, kind) -> dict[str, torch.Tensor]:
    return {name: linear.weight.detach().clone() for name, linear in quantizable_linears(model, kind)}


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory):
    # hidden 192: quanto groups the 192-wide inputs by 96 and the 384-wide by 128 (per-group fake quantization)
    out = {}
    for kind, model in (("classifier", tiny_bert_classifier(train_steps=1)),
                        ("causal-lm", tiny_llama(train_steps=1, hidden_size=192))):
        out[kind] = tmp_path_factory.mktemp(f"qat-{kind}-fp32")
        model.save_pretrained(out[kind])
        save_tokenizer(tokenizer(), out[kind])
    return out


@pytest.fixture(scope="module")
def built(base_dirs, tmp_path_factory):
    """{(kind, target): (record, weights before, weights trained, the converted float model, artifact)}:
    QuantizationAwareTraining.apply's steps, one by one."""
    out = {}
    for kind, base in base_dirs.items():
        for target in TARGETS:
            method, ctx = QuantizationAwareTraining(target=target, budget=BUDGET), stage_context(base, kind)
            model = load_pretrained(base, kind, dtype=torch.float32)
            before = float_state(model, kind)
            record = method.train(model, ctx)
            trained = float_state(model, kind)
            artifact = tmp_path_factory.mktemp(f"qat-{kind}-{target}")
            method.convert_and_save(model, artifact, ctx)
            out[kind, target] = record, before, trained, model, artifact
    return out


def inputs(kind):
    return dict(tokenizer()(TEXTS, padding=True, return_tensors="pt"))


@pytest.mark.parametrize("kind", ["classifier", "causal-lm"])
@pytest.mark.parametrize("target", TARGETS)
def test_training_moves_the_weights_for_exactly_the_budget_s_steps(built, kind, target):
    record, before, trained, _, _ = built[kind, target]
    assert record["steps"] == record["max_steps"] == BUDGET.for_kind(kind).max_steps
    assert record["fake_quantized_linears"] == len(before) > 0  # every quantizable Linear, not the head
    moved = [name for name in before if not torch.equal(before[name], trained[name])]
    assert len(moved) == len(before), f"unchanged: {set(before) - set(moved)}"


@pytest.mark.parametrize("kind", ["classifier", "causal-lm"])
@pytest.mark.parametrize("target", TARGETS)
def test_artifact_reloads_quantized_as_converted_in_memory(built, kind, target, tmp_path):
    from optimum.quanto import qint4
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    from compresslab.models.formats import quanto_class

    _, before, _, converted, artifact = built[kind, target]
    reloaded = load_pretrained(artifact, kind)
    assert unquantized_linears(reloaded, kind) == []
    assert not any(is_quantized_weight(m.weight) for n, m in reloaded.named_modules()
                   if isinstance(m, torch.nn.Linear) and not linear_filter(kind)(m, n))  # the head stays float
    assert fake_quantized(converted) == [] and len(unquantized_linears(converted, kind)) == len(before)
    if target == "int8-dynamic":
        quantize_(converted, Int8DynamicActivationInt8WeightConfig(), filter_fn=linear_filter(kind))
        in_memory = converted
    else:  # the PTQ row's CPU route: quanto qint4 on the model loaded in bf16 (rotary buffers stay fp32)
        converted.save_pretrained(tmp_path)
        in_memory = quanto_class(kind).quantize(load_pretrained(tmp_path, kind, dtype=torch.bfloat16), weights=qint4,
                                                exclude=shell_patterns(kind))
    with torch.no_grad():  # quanto's packed weights refuse inference_mode (see models/runner.py)
        assert torch.equal(in_memory(**inputs(kind)).logits, reloaded(**inputs(kind)).logits)


def test_the_quantized_check_fails_a_fake_quantized_model_and_an_unquantized_copy(base_dirs):
    for kind, base in base_dirs.items():
        plain = load_pretrained(base, kind, dtype=torch.float32)
        n = len(quantizable_linears(plain, kind))
        assert len(unquantized_linears(plain, kind)) == n  # an unquantized copy
        QuantizationAwareTraining(target="int4-weight").prepare(plain, kind, "cpu")
        assert len(fake_quantized(plain)) == n
        assert len(unquantized_linears(plain, kind)) == n  # prepared, never converted


def test_an_artifact_that_reloads_unquantized_fails_the_build(base_dirs, tmp_path, monkeypatch):
    base = base_dirs["classifier"]
    method = QuantizationAwareTraining(target="int8-dynamic", budget=BUDGET)
    monkeypatch.setattr(QuantizationAwareTraining, "ptq", lambda self: DtypeCast(dtype="bfloat16"))
    model = load_pretrained(base, "classifier", dtype=torch.float32)
    method.prepare(model, "classifier", "cpu")
    with pytest.raises(RuntimeError, match="Linears of the QAT artifact reload unquantized"):
        method.convert_and_save(model, tmp_path, stage_context(base, "classifier"))


def test_fake_quantization_follows_the_target_scheme(base_dirs):
    from torchao.quantization.granularity import PerAxis, PerGroup, PerToken

    model = load_pretrained(base_dirs["causal-lm"], "causal-lm", dtype=torch.float32)
    x = inputs("causal-lm")
    with torch.no_grad():
        plain = model(**x).logits
    QuantizationAwareTraining(target="int4-weight").prepare(model, "causal-lm", "cpu")
    layers = dict(model.named_modules())
    q_proj, down = layers["model.layers.0.self_attn.q_proj"], layers["model.layers.0.mlp.down_proj"]
    assert q_proj.weight_fake_quantizer.config.granularity == PerGroup(96)  # quanto's group for 192 inputs
    assert down.weight_fake_quantizer.config.granularity == PerGroup(128)
    assert q_proj.activation_fake_quantizer is None  # weight-only
    assert quanto_int4_weight_config(torch.nn.Linear(64, 8)).granularity == PerAxis(0)  # too narrow to group
    with torch.no_grad():
        assert not torch.equal(model(**x).logits, plain)  # the forward computes on fake-quantized weights
    model = load_pretrained(base_dirs["classifier"], "classifier", dtype=torch.float32)
    QuantizationAwareTraining(target="int8-dynamic").prepare(model, "classifier", "cpu")
    query = dict(model.named_modules())["bert.encoder.layer.0.attention.self.query"]
    assert query.weight_fake_quantizer.config.granularity == PerAxis(0)
    assert query.activation_fake_quantizer.config.granularity == PerToken()
    assert "classifier" not in fake_quantized(model)


def test_apply_writes_the_record_and_the_twin_s_artifact(base_dirs, tmp_path):
    base = base_dirs["classifier"]
    method = QuantizationAwareTraining(target="int4-weight", budget=BUDGET)
    method.apply(base, tmp_path, stage_context(base, "classifier"))
    record = json.loads((tmp_path / RECORDS_DIR / "qat.json").read_text())
    assert record["target"] == "int4-weight" and record["steps"] == 3 and record["train_s"] > 0
    from compresslab.models.formats import QUANTO_QMAP

    assert (tmp_path / QUANTO_QMAP).is_file()  # saved as int4-weight saves on CPU


def test_registered_and_validated():
    for method_id, target, family in (("qat-int8", "int8-dynamic", "int8"), ("qat-int4", "int4-weight", "int4")):
        method = registry.METHODS[method_id]
        assert (method.target, method.family) == (target, family)
        assert method.ptq() == registry.METHODS[target]  # the same scheme as the twin row
        for kind in ("classifier", "causal-lm"):
            method.check_supported(kind, "cpu")
    with pytest.raises(ValueError, match="target must be one of int8-dynamic, int4-weight, got 'int8-weight'"):
        QuantizationAwareTraining(target="int8-weight")
    with pytest.raises(ValueError, match="group_size must be one of 32, 64, 128, got 100"):
        QuantizationAwareTraining(target="int4-weight", group_size=100)
    with pytest.raises(MethodUnsupported, match="group size is 128, not 64"):
        QuantizationAwareTraining(target="int4-weight", group_size=64).check_supported("causal-lm", "cpu")


# --- the twin floor: a QAT row must match or beat its PTQ twin of the same run ---------------------

def qat_book(extra: str = ""):
    import tomllib

    from compresslab import floors

    text = ('[family.int8]\nmin_recovery = { accuracy = 0.9 }\n'
            '[method.qat-int8]\ntwin = "int8-dynamic"\ntwin_metrics = ["accuracy", "perplexity"]\n' + extra)
    return floors.parse(tomllib.loads(text), "test floors", registry.MODELS, registry.METHODS)


FAMILIES = {method_id: method.family for method_id, method in registry.METHODS.items()}


def test_the_twin_floor_fails_a_result_worse_than_its_twin():
    from compresslab import floors

    floor = qat_book().floor_for("minilm-sentiment", "qat-int8", FAMILIES)
    assert (floor.twin, floor.twin_metrics) == ("int8-dynamic", ("accuracy", "perplexity"))
    twin = {"accuracy": 0.90, "perplexity": 20.0}
    assert floors.check_twin(floor, {"accuracy": 0.90}, twin) == []  # a match
    assert floors.check_twin(floor, {"accuracy": 0.91, "perplexity": 19.0}, twin) == []  # better
    worse = floors.check_twin(floor, {"accuracy": 0.89, "perplexity": 20.5}, twin)
    assert [v.rule for v in worse] == ["twin.accuracy", "twin.perplexity"]  # each metric in its direction
    assert "accuracy 0.89 is worse than its twin int8-dynamic's 0.9 in this run (-0.01)" in worse[0].message
    assert [v.rule for v in floors.check_twin(floor, {"accuracy": float("nan")}, twin)] == ["twin.accuracy"]
    assert floors.twin_comparison(floor, {"accuracy": 0.91, "macro_f1": 0.5}, twin) == {
        "chain": "int8-dynamic", "metrics": {"accuracy": 0.90}, "difference": {"accuracy": pytest.approx(0.01)}}
    assert floors.twin_comparison(floor, {}, None, "not run")["skipped"] == "not run"
    assert floors.twin_comparison(qat_book().floor_for("minilm-sentiment", "int8-dynamic", FAMILIES), {}, None) is None
    # one method's promise: a chain ending in it does not inherit the twin
    assert qat_book().floor_for("minilm-sentiment", "distill-half+qat-int8", FAMILIES).twin is None
    assert floor.as_dict()["twin"] == "int8-dynamic"


@pytest.mark.parametrize("table, message", [
    ('twin = "int8-nope"\ntwin_metrics = ["accuracy"]', "twin: unknown method 'int8-nope'"),
    ('twin = "qat-int4"', "twin_metrics must be a non-empty list of metric names, got None"),
    ('twin = "int4-weight"\ntwin_metrics = ["acc"]', "twin_metrics names unknown metric 'acc'"),
    ('twin_metrics = ["accuracy"]', "twin_metrics needs a twin"),
    ('twin = "qat-int4"\ntwin_metrics = ["accuracy"]', "twin 'qat-int4' is the row itself"),
])
def test_a_bad_twin_is_refused_in_one_line(table, message):
    from compresslab import floors

    with pytest.raises(floors.FloorsError, match=re.escape(message)):
        qat_book(f"[method.qat-int4]\n{table}\n")


def test_the_shipped_floors_give_each_qat_row_its_ptq_twin():
    from compresslab import floors

    book = floors.load(floors.DEFAULT_FLOORS, registry.MODELS, registry.METHODS)
    for model_id in ("minilm-sentiment", "smollm2-135m"):
        for method_id in ("qat-int8", "qat-int4"):
            floor = book.floor_for(model_id, method_id, FAMILIES)
            assert floor.twin == registry.METHODS[method_id].target and floor.max_size_ratio


class FakeSession:
    """What Case.check_floors reads of a session: floors, the expected metrics, this run's records."""

    def __init__(self, records):
        self.records, self.floors, self.catalog = records, qat_book(), self

    def floor_for(self, model_id, chain_id):
        return self.floors.floor_for(model_id, chain_id, FAMILIES)

    def expected_metrics(self, spec):
        return {"accuracy": "tweet-sentiment"}


def check_case(records, accuracy: float):
    from types import SimpleNamespace

    from compresslab.fixture import Case
    from compresslab.results import CaseResult

    case = Case(FakeSession(records), registry.MODELS["minilm-sentiment"], "qat-int8",
                SimpleNamespace(metrics={"accuracy": accuracy}), SimpleNamespace(metrics={"accuracy": 0.95}),
                CaseResult(size_bytes=10, baseline_size_bytes=40))
    return case, case.check_floors


def twin_record(accuracy: float | None, model: str = "minilm-sentiment"):
    from compresslab.results import CaseRecord, CaseResult

    return CaseRecord(f"test[{model}-int8-dynamic]", model, "int8-dynamic", "passed",
                      CaseResult(metrics=None if accuracy is None else {"accuracy": accuracy}))


def test_a_case_worse_than_its_twin_in_the_run_fails_its_floors():
    from compresslab.floors import BelowFloors

    case, check = check_case([twin_record(0.93)], accuracy=0.92)
    with pytest.raises(BelowFloors, match="worse than its twin int8-dynamic's 0.93"):
        check()
    assert case.result.twin_comparison == {"chain": "int8-dynamic", "metrics": {"accuracy": 0.93},
                                           "difference": {"accuracy": pytest.approx(-0.01)}}
    case, check = check_case([twin_record(0.93)], accuracy=0.93)
    check()  # a match passes
    assert case.result.floor_violations == []


@pytest.mark.parametrize("records, reason", [
    ([], "was not measured before this case in this run"),
    ([twin_record(0.99, model="bert-base-emotion")], "was not measured before this case in this run"),
    ([twin_record(None)], "ran in this run but has no metrics (passed): not compared"),
])
def test_a_twin_missing_from_the_run_is_skipped_with_its_reason(records, reason):
    case, check = check_case(records, accuracy=0.92)
    check()
    assert reason in case.result.twin_comparison["skipped"]
