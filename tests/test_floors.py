import math

import pytest

from compresslab import floors, pipeline, registry
from compresslab.floors import Floor, FloorsError

FAMILIES = {name: m.family for name, m in registry.METHODS.items()}


def load_text(tmp_path, text):
    path = tmp_path / "floors.toml"
    path.write_text(text)
    return floors.load(path, registry.MODELS, registry.METHODS)


def test_repository_floors_file_parses_and_covers_every_family():
    book = floors.load(floors.DEFAULT_FLOORS, registry.MODELS, registry.METHODS)
    assert {m.family for m in registry.METHODS.values()} <= set(book.families)


def test_family_default_model_absolute_and_override_combine(tmp_path):
    book = load_text(tmp_path, """
[family.int8]
min_recovery = { accuracy = 0.99 }
[model.minilm-sentiment]
min = { accuracy = 0.7 }
[override.minilm-sentiment.int8-dynamic]
max_size_mb = 30
min_recovery = { accuracy = 0.95 }
""")
    floor = book.floor_for("minilm-sentiment", "int8-dynamic", FAMILIES)
    assert floor.min_recovery == {"accuracy": 0.95}
    assert floor.min == {"accuracy": 0.7}
    assert floor.max_size_mb == 30
    assert book.floor_for("minilm-sentiment", "int8-weight", FAMILIES).min_recovery == {"accuracy": 0.99}


def test_chain_default_is_loosest_of_its_stages(tmp_path):
    book = load_text(tmp_path, """
[family.dtype]
min_recovery = { accuracy = 0.995 }
max_increase = { perplexity = 0.01 }
[family.int8]
min_recovery = { accuracy = 0.98 }
max_increase = { perplexity = 0.03 }
""")
    floor = book.floor_for("smollm2-135m", "bf16+int8-weight", FAMILIES)
    assert floor.min_recovery == {"accuracy": 0.98}
    assert floor.max_increase == {"perplexity": 0.03}


@pytest.mark.parametrize("text, needle", [
    ("[family.int8\n", "not valid TOML"),
    ("[family.nope]\n", "unknown method family 'nope'; valid: "),
    ("[model.gpt-5]\n", "unknown model 'gpt-5'; valid: bert-base-emotion"),
    ("[override.minilm-sentiment.int9]\n", "unknown method 'int9' in chain 'int9'; valid: awq-w4g128, awq-w4g64, bf16"),
    ("[override.minilm-sentiment.\"bf16++int8-dynamic\"]\n", "malformed method chain"),
    ("[family.int8]\nmin_recovery = { acuracy = 0.9 }\n", "unknown metric 'acuracy'"),
    ("[family.int8]\nmin_recovery = { accuracy = \"high\" }\n", "must be a finite number"),
    ("[family.int8]\nmax_increase = { perplexity = inf }\n", "must be a finite number, got inf"),
    ("[override.minilm-sentiment.bf16]\nexpected_failure = \"\"\n", "expected_failure must be a non-empty reason"),
    ("[override.minilm-sentiment.bf16]\nreference_tolerance = 2\n", "reference_tolerance must be a fraction"),
    ("[family.int8]\nexpected_failure = \"x\"\n", "unknown key(s) expected_failure"),
    ("[family.int8]\nmax_increase = { perplexity = -0.2 }\n", "max_increase.perplexity = -0.2 must be >= 0"),
    ("[model.smollm2-135m]\nmin = { fewshot_accuracy = 1.7 }\n",
     "min.fewshot_accuracy = 1.7 is outside the values fewshot_accuracy can take [0, 1]"),
    ("[model.smollm2-135m]\nmax = { perplexity = 0.5 }\n", "max.perplexity = 0.5 is outside the values"),
    ("[family.int8]\nmin_recovery = { accuracy = 99 }\n", "is not a ratio"),
    ("[family.int8]\nmax_size = 3\n", "unknown key(s) max_size; valid: min_recovery"),
    ("[family.int8]\nmax_size_mb = -3\n", "max_size_mb must be a positive number"),
    ("[floors]\n", "unknown section(s) floors"),
])
def test_malformed_files_name_file_key_and_valid_values(tmp_path, text, needle):
    with pytest.raises(FloorsError) as err:
        load_text(tmp_path, text)
    assert needle in str(err.value)
    assert "floors.toml" in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FloorsError, match="does not exist"):
        floors.load(tmp_path / "absent.toml", registry.MODELS, registry.METHODS)


def test_check_reports_each_violation_readably():
    floor = Floor(min_recovery={"accuracy": 0.99}, max_increase={"perplexity": 0.02},
                  min={"macro_f1": 0.8}, max={"perplexity": 30.0}, max_size_mb=10)
    violations = floors.check(floor, {"accuracy": 0.80, "perplexity": 31.0, "macro_f1": 0.7},
                              {"accuracy": 0.85, "perplexity": 20.0, "macro_f1": 0.8}, size_mb=12.5)
    rules = {v.rule for v in violations}
    assert rules == {"min_recovery.accuracy", "max_increase.perplexity", "min.macro_f1", "max.perplexity",
                     "max_size_mb"}
    text = " | ".join(v.message for v in violations)
    assert "accuracy 0.8 < floor 0.8415 (99.0% of baseline 0.85); recovery 94.12%" in text
    assert "size 12.50 MB > ceiling 10.00 MB" in text


def test_check_passes_within_floors():
    floor = Floor(min_recovery={"accuracy": 0.99}, max_increase={"perplexity": 0.02}, max_size_mb=10)
    assert floors.check(floor, {"accuracy": 0.845, "perplexity": 20.3}, {"accuracy": 0.85, "perplexity": 20.0},
                        size_mb=9.9) == []


def test_recovery_direction():
    assert floors.recovery("accuracy", 0.8, 0.9) == pytest.approx(0.8 / 0.9)
    assert floors.recovery("perplexity", 22.0, 20.0) == pytest.approx(20 / 22)
    assert math.isnan(floors.recovery("accuracy", 0.5, 0.0))


@pytest.mark.parametrize("measured", [math.nan, math.inf, -math.inf])
def test_a_non_finite_metric_breaks_every_bound_on_it(measured):
    floor = Floor(min_recovery={"accuracy": 0.5}, max_increase={"perplexity": 10.0}, min={"accuracy": 0.1},
                  max={"perplexity": 1e9})
    violations = floors.check(floor, {"accuracy": measured, "perplexity": measured},
                              {"accuracy": 0.85, "perplexity": 20.0}, size_mb=None)
    assert {v.rule for v in violations} >= {"min_recovery.accuracy", "max_increase.perplexity"}
    assert any(f"measured accuracy is {measured}" in v.message for v in violations)


def test_a_nan_baseline_breaks_relative_bounds():
    violations = floors.check(Floor(min_recovery={"accuracy": 0.5}), {"accuracy": 0.8}, {"accuracy": math.nan},
                              size_mb=None)
    assert [v.message for v in violations] == ["baseline accuracy is nan"]


def test_a_missing_or_nan_metric_names_the_task_that_should_have_produced_it():
    expected = {"accuracy": "tweet-sentiment", "macro_f1": "tweet-sentiment", "perplexity": "wiki-perplexity"}
    violations = floors.check_present({"accuracy": 0.9, "macro_f1": math.nan}, expected)
    assert [v.message for v in violations] == [
        "macro_f1 is nan (task tweet-sentiment)",
        "perplexity is missing: task wiki-perplexity should have produced it",
    ]
    assert floors.check_present({"accuracy": 0.9, "macro_f1": 0.8, "perplexity": 20.0}, expected) == []


def test_known_failure_parses_and_its_reference_gates_getting_worse(tmp_path):
    book = load_text(tmp_path, """
[family.prune]
max_increase = { perplexity = 0.5 }
[override.smollm2-135m.prune-l1-50]
expected_failure = "magnitude pruning wrecks a 135M decoder"
reference = { perplexity = 375.0, fewshot_accuracy = 0.4 }
reference_tolerance = 0.1
""")
    floor = book.floor_for("smollm2-135m", "prune-l1-50", FAMILIES)
    assert floor.expected_failure == "magnitude pruning wrecks a 135M decoder"
    assert floor.max_increase == {"perplexity": 0.5}  # the floor a user accepts stays as it is
    assert floors.check_reference(floor, {"perplexity": 400.0, "fewshot_accuracy": 0.39}) == []
    worse = floors.check_reference(floor, {"perplexity": 420.0, "fewshot_accuracy": 0.3})
    assert [v.rule for v in worse] == ["reference.perplexity", "reference.fewshot_accuracy"]
    assert "perplexity 420 is worse than its reference 375 by more than 10% (limit 412.5)" in worse[0].message
    assert [v.rule for v in floors.check_reference(floor, {"perplexity": math.nan})] == [
        "reference.perplexity", "reference.fewshot_accuracy"]
    assert book.floor_for("smollm2-135m", "prune-global-50", FAMILIES).expected_failure is None


def test_size_ratio_per_method_and_chains_take_the_smallest(tmp_path):
    book = load_text(tmp_path, """
[family.int8]
max_size_ratio = 0.66
[family.distill]
max_size_ratio = 0.8
[family.ort]
max_size_ratio = 1.02
[method.ort-int8]
max_size_ratio = 0.4
""")
    assert book.floor_for("minilm-sentiment", "ort", FAMILIES).max_size_ratio == 1.02
    assert book.floor_for("minilm-sentiment", "ort-int8", FAMILIES).max_size_ratio == 0.4
    assert book.floor_for("minilm-sentiment", "distill-half+int8-dynamic", FAMILIES).max_size_ratio == 0.66
    floor = book.floor_for("minilm-sentiment", "int8-dynamic", FAMILIES)
    # an unquantized copy (the same size as fp32) breaks the ceiling
    violations = floors.check(floor, {}, {}, size_mb=90.9, baseline_size_mb=90.9)
    assert [v.message for v in violations] == ["size 90.90 MB is 1.000x the baseline's 90.90 MB > ceiling 0.660x"]
    assert floors.check(floor, {}, {}, size_mb=58.7, baseline_size_mb=90.9) == []


def test_every_compressing_default_row_has_a_size_ceiling():
    book = floors.load(floors.DEFAULT_FLOORS, registry.MODELS, registry.METHODS)
    for model_id, chains in registry.FULL_MATRIX.items():
        for chain in chains:
            if chain != registry.BASELINE_METHOD:
                floor = book.floor_for(model_id, chain, FAMILIES)
                assert floor.max_size_ratio or floor.max_size_mb, f"{model_id}-{chain} has no size ceiling"


def test_a_chain_is_split_by_the_pipeline_parser(tmp_path, monkeypatch):
    book = load_text(tmp_path, "[family.dtype]\nmin_recovery = { accuracy = 0.995 }\n"
                               "[family.int8]\nmin_recovery = { accuracy = 0.98 }\n")
    with pytest.raises(ValueError, match="malformed method chain 'bf16[+][+]int8-weight'"):
        book.floor_for("smollm2-135m", "bf16++int8-weight", FAMILIES)
    with pytest.raises(KeyError, match="unknown method 'int9' in chain 'bf16[+]int9'"):
        book.floor_for("smollm2-135m", "bf16+int9", FAMILIES)
    monkeypatch.setattr(pipeline, "CHAIN_SEPARATOR", "&")  # one parser: floors follow its separator
    assert book.floor_for("smollm2-135m", "bf16&int8-weight", FAMILIES).min_recovery == {"accuracy": 0.98}
