"""compresslab compare: rules, deltas, the statistical latency decision, run locating, exit codes."""

import json
import re

import pytest

from compresslab import cli, compare, runs
from runfiles import as_pytest_benchmark, edit, samples, sidecar, write

FIELDS = compare.valid_fields()


# --- rules -------------------------------------------------------------------------------------

def test_rules_parse_relative_and_points():
    size, accuracy, perplexity = compare.parse_rules(["size:+1%, accuracy:-0.5pt", "perplexity:+2%"], FIELDS)
    assert (size.field, size.direction, size.amount, size.unit) == ("size", 1, 0.01, "%")
    assert (accuracy.direction, accuracy.unit) == (-1, "pt") and accuracy.amount == pytest.approx(0.005)
    assert perplexity.exceeded(20.0, 20.5) and not perplexity.exceeded(20.0, 20.3)
    assert accuracy.exceeded(0.90, 0.894) and not accuracy.exceeded(0.90, 0.896)
    assert not accuracy.exceeded(0.90, 0.95)  # the good direction never fails


@pytest.mark.parametrize("text, message", [
    ("siz:+1%", "unknown field 'siz'"),
    ("size:1%", "malformed rule"),
    ("size:+1", "malformed rule"),
    ("size+1%", "malformed rule"),
    ("size:+1pt", "points (pt) are for 0..1 task metrics"),
])
def test_bad_rules_are_rejected_with_the_valid_fields(text, message):
    with pytest.raises(compare.RuleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compare.parse_rules([text], FIELDS)


def test_unknown_field_message_lists_valid_fields():
    with pytest.raises(compare.RuleError) as err:
        compare.parse_rules(["acuracy:-1pt"], FIELDS)
    assert ("valid fields: size, latency, speedup, memory, b16, decode, b16_speedup, decode_speedup, accuracy"
            in str(err.value))


def test_a_second_rule_on_one_field_is_a_rule_error_naming_it():
    # it used to replace the first without a word: latency:+10% latency:+20% gated at +20%
    with pytest.raises(compare.RuleError, match="rule 'latency:[+]20%' repeats field 'latency' "
                                                "[(]already 'latency:[+]10%'[)]"):
        compare.parse_rules(["latency:+10%", "size:+1% latency:+20%"], FIELDS)
    with pytest.raises(compare.RuleError, match="repeats field 'accuracy'"):
        compare.parse_rules(["accuracy:-0.5pt,accuracy:+5pt"], FIELDS)


# --- the statistical decision ------------------------------------------------------------------

def test_shifted_samples_are_a_significant_slowdown():
    test = compare.shift_test(tuple(samples(10.0, 1)), tuple(samples(12.0, 2)))
    assert test.p_value < 1e-6 and test.ratio == pytest.approx(1.2, rel=0.03)
    assert test.ci[0] > 1.1 and test.ci[1] < 1.3


def test_same_distribution_is_not_significant():
    test = compare.shift_test(tuple(samples(10.0, 1)), tuple(samples(10.0, 2)))
    assert test.p_value > 0.05 and test.ci[0] < 1 < test.ci[1]


def test_rank_test_and_interval_must_agree():
    # as measured on a contended 2-core VM: a few exploding rounds give p < 0.05 while the median
    # ratio's interval still spans 1; that is noise, not a regression
    assert not compare.ShiftTest(1.606, 0.044, (0.859, 5.443)).significant(0.05)
    assert compare.ShiftTest(1.2, 0.001, (1.1, 1.3)).significant(0.05)
    assert not compare.ShiftTest(1.2, 0.2, (1.1, 1.3)).significant(0.05)
    assert compare.ShiftTest(0.8, 0.001, (0.7, 0.9), worse="less").significant(0.05)


def compare_docs(base_doc, head_doc, *rules):
    base = runs.from_document(base_doc, "base.json")
    head = runs.from_document(head_doc, "head.json")
    return compare.compare(base, head, compare.parse_rules(rules, FIELDS))


def test_latency_regression_needs_threshold_and_significance():
    base = sidecar(seed=1)
    slower = compare_docs(base, edit(sidecar(seed=2), "minilm-sentiment", "int8-dynamic", latency_factor=1.2),
                          "latency:+10%")
    [(row, message)] = slower.regressions
    assert row.chain == "int8-dynamic" and message.startswith("latency") and "p=" in message
    # noise only (another seed of the same distribution): no regression even with a tight threshold
    assert not compare_docs(base, sidecar(seed=2), "latency:+1%").regressions
    # significant but within the threshold: no regression
    assert not compare_docs(base, edit(sidecar(seed=2), "minilm-sentiment", "int8-dynamic", latency_factor=1.05),
                            "latency:+10%").regressions


def set_rounds(document, model, method, rounds):
    for record in document["benchmarks"]:
        if (record["model"], record["chain"]) == (model, method):
            median = sorted(rounds)[len(rounds) // 2]
            record["extra_info"].update(latency_samples_ms=list(rounds), latency_p50_ms=median)
    return document


def keep_rounds(document, count):
    for record in document["benchmarks"]:
        extra = record["extra_info"]
        extra["latency_samples_ms"] = extra["latency_samples_ms"][:count]
        extra["latency_p50_ms"] = sorted(extra["latency_samples_ms"])[count // 2]
    return document


def test_latency_beyond_threshold_but_not_significant_is_no_regression():
    # 9 rounds each (the rank test could reach p < 0.05), medians 12% apart, rounds interleaved: noise
    base = set_rounds(sidecar(seed=1), "smollm2-135m", "int8-dynamic", [200, 212, 224, 230, 236, 250, 262, 270, 300])
    head = set_rounds(sidecar(seed=2), "smollm2-135m", "int8-dynamic", [205, 218, 232, 250, 265, 268, 275, 290, 310])
    result = compare_docs(base, head, "latency:+10%")
    delta = next(r for r in result.rows if r.chain == "int8-dynamic" and r.model == "smollm2-135m").deltas["latency"]
    assert delta.test.can_reject(0.05) and not delta.powerless
    assert delta.rule.exceeded(delta.base, delta.head) and delta.test.p_value >= 0.05 and not delta.regression


def test_rounds_too_few_for_the_rank_test_fall_back_to_threshold_and_interval_and_say_so():
    # 3 against 3 rounds: the smallest one-sided p is 1/C(6,3) = 0.05, never < 0.05, so a latency rule
    # could not fire at all; a 30x slowdown must still be a regression, and the output says how it was decided
    assert compare.smallest_p_value(3, 3) == pytest.approx(0.05) and compare.smallest_p_value(4, 4) < 0.05
    base = keep_rounds(sidecar(seed=1), 3)
    head = keep_rounds(edit(sidecar(seed=2), "minilm-sentiment", "int8-dynamic", latency_factor=30), 3)
    result = compare_docs(base, head, "latency:+10%")
    [(row, message)] = result.regressions
    assert row.chain == "int8-dynamic" and message.startswith("latency")
    assert "3 vs 3 rounds: the rank test cannot reject at alpha 0.05" in message
    text = compare.render(result)
    assert "p=0.05 (3 vs 3 rounds) !" in text
    assert "note: 3 vs 3 rounds: the rank test cannot reject at alpha 0.05 (smallest p 0.05); decided by " \
           "threshold and interval only: minilm-sentiment-fp32 latency, minilm-sentiment-int8-dynamic latency" in text
    # overlapping rounds are still noise: the interval spans 1
    noise = set_rounds(keep_rounds(sidecar(seed=2), 3), "minilm-sentiment", "int8-dynamic", [8.0, 13.0, 11.6])
    assert not compare_docs(base, noise, "latency:+10%").regressions


def test_powerless_rounds_names_the_rules_and_the_rounds_needed():
    base = runs.from_document(keep_rounds(sidecar(seed=1), 3), "base.json")
    rules = compare.parse_rules(["size:+1% latency:+10% speedup:-20%"], FIELDS)
    assert compare.powerless_rounds(rules, base, 3) == (
        "latency:+10% speedup:-20%: 3 stored vs 3 timed rounds, the rank test can never reach p < 0.05 "
        "(smallest p 0.05); use --compresslab-rounds 4 or more")
    assert compare.powerless_rounds(rules, base, 4) is None
    assert compare.powerless_rounds(compare.parse_rules(["size:+1%"], FIELDS), base, 1) is None


def test_without_samples_the_threshold_alone_decides_and_says_so():
    base, head = sidecar(seed=1), edit(sidecar(seed=1), "minilm-sentiment", "fp32", latency_factor=1.3)
    for document in (base, head):
        for record in document["benchmarks"]:
            del record["extra_info"]["latency_samples_ms"]
    result = compare_docs(base, head, "latency:+10%")
    [(_, message)] = result.regressions
    assert "no samples; threshold only" in message
    assert "(threshold only)" in compare.render(result)


def test_speedup_rule_ignores_a_uniformly_slower_machine():
    base = sidecar(seed=1)
    head = sidecar(seed=2)
    for record in head["benchmarks"]:  # everything 25% slower, the fp32 reference included
        extra = record["extra_info"]
        extra["latency_samples_ms"] = [s * 1.25 for s in extra["latency_samples_ms"]]
        extra["latency_p50_ms"] *= 1.25
        extra["baseline_latency_p50_ms"] *= 1.25
    assert not compare_docs(base, head, "speedup:-10%").regressions
    assert compare_docs(base, head, "latency:+10%").regressions


# --- size, metrics, outcomes, rendering --------------------------------------------------------

def test_five_percent_larger_artifact_is_named():
    base = sidecar(seed=1)
    head = edit(sidecar(seed=2), "minilm-sentiment", "int8-dynamic", size_factor=1.05)
    result = compare_docs(base, head, "size:+1%", "latency:+10%")
    [(row, message)] = result.regressions
    assert (row.model, row.chain) == ("minilm-sentiment", "int8-dynamic")
    assert message.startswith("size 58.7 MB -> 61.6 MB (+5.0%; rule size:+1%")
    text = compare.render(result)
    assert "REGRESSION minilm-sentiment int8-dynamic: size" in text
    assert text.splitlines()[-1].startswith("1 regression (4 compared, 0 new, 0 missing): "
                                            "minilm-sentiment-int8-dynamic (size)")


def test_second_workload_rules_batch16_latency_and_decode_throughput():
    base, head = sidecar(seed=1), sidecar(seed=1)
    for document, decode in ((base, 30.0), (head, 24.0)):
        for record in document["benchmarks"]:
            if record["model"] == "smollm2-135m":
                record["extra_info"]["decode_tokens_per_s"] = decode
            else:
                record["extra_info"]["latency_b16_p50_ms"] = 100.0
    result = compare_docs(base, head, "decode:-10%", "b16:+10%")
    assert sorted((row.chain, message.split()[0]) for row, message in result.regressions) == [
        ("fp32", "decode"), ("int8-dynamic", "decode")]  # tokens/s fell 20%; batch-16 latency held
    text = compare.render(result)
    assert "decode tok/s" in text and "b16 ms" in text and "24 -20.0% !" in text


def test_metric_rules_in_points_and_percent():
    base = sidecar(seed=1)
    head = edit(edit(sidecar(seed=1), "minilm-sentiment", "int8-dynamic", accuracy=0.8800),
                "smollm2-135m", "int8-dynamic", perplexity=23.0)
    result = compare_docs(base, head, "accuracy:-0.5pt", "perplexity:+2%")
    messages = sorted(message.split()[0] for _, message in result.regressions)
    assert messages == ["accuracy", "perplexity"]
    text = compare.render(result)
    assert "0.8800 -0.68pt !" in text and "23 +3.5% !" in text


def test_new_missing_and_changed_outcome_rows_are_marked():
    base = sidecar(seed=1)
    head = edit(sidecar(seed=1), "minilm-sentiment", "int8-dynamic", outcome="failed")
    head["benchmarks"] = [b for b in head["benchmarks"] if b["chain"] != "fp32" or b["model"] != "smollm2-135m"]
    extra = json.loads(json.dumps(head["benchmarks"][0]))
    extra.update(name="test_compression[minilm-sentiment-bf16]", chain="bf16")
    head["benchmarks"].append(extra)
    result = compare_docs(base, head)
    statuses = {(r.model, r.chain): r.status for r in result.rows}
    assert statuses[("smollm2-135m", "fp32")] == "missing" and statuses[("minilm-sentiment", "bf16")] == "new"
    text = compare.render(result)
    assert "CHANGED passed -> failed" in text and "missing: passed" in text and "new: passed" in text
    # a case that now fails its floor is a regression, and so is one that passed and is gone
    assert sorted((row.chain, message) for row, message in result.regressions) == [
        ("fp32", "outcome passed -> missing (not in head)"),
        ("int8-dynamic", "outcome passed -> failed (see the test report)")]
    result = compare.compare(result.base, result.head, [], allow_missing=True)
    [(row, message)] = result.regressions
    assert row.chain == "int8-dynamic" and message.startswith("outcome passed -> failed")


def test_lost_cases_are_regressions_with_the_head_reason_unless_allowed_missing():
    base = edit(sidecar(seed=1), "smollm2-135m", "fp32", outcome="xfailed")
    head = edit(edit(sidecar(seed=1), "minilm-sentiment", "fp32", outcome="skipped"),
                "minilm-sentiment", "int8-dynamic", outcome="xfailed")
    for record in head["benchmarks"]:
        if record["chain"] == "fp32":  # xfailed -> xfailed below is fine
            record.update(outcome=record["outcome"] if record["model"] == "minilm-sentiment" else "xfailed",
                          reason="minilm-sentiment-fp32: weights are not here" if record["model"] ==
                          "minilm-sentiment" else "known: below its floors")
        if record["chain"] == "int8-dynamic" and record["model"] == "minilm-sentiment":
            record.update(reason="accuracy 0.61 < floor 0.85", extra_info={})
    gone = ("smollm2-135m", "int8-dynamic")
    head["benchmarks"] = [b for b in head["benchmarks"] if (b["model"], b["chain"]) != gone]
    rules = ("accuracy:-0.5pt", "latency:+10%")
    found = sorted((f"{r.model}-{r.chain}", m) for r, m in compare_docs(base, head, *rules).regressions)
    assert found == [
        ("minilm-sentiment-fp32", "outcome passed -> skipped (minilm-sentiment-fp32: weights are not here)"),
        ("minilm-sentiment-int8-dynamic", "outcome passed -> xfailed (accuracy 0.61 < floor 0.85)"),
        ("smollm2-135m-int8-dynamic", "outcome passed -> missing (not in head)")]
    # a smaller matrix, a machine without the package: skipped and missing accepted, a failure is not
    allowed = compare.compare(runs.from_document(base, "b"), runs.from_document(head, "h"),
                              compare.parse_rules(rules, FIELDS), allow_missing=True)
    assert [m for _, m in allowed.regressions] == ["outcome passed -> xfailed (accuracy 0.61 < floor 0.85)"]
    assert not compare_docs(edit(sidecar(1), "minilm-sentiment", "fp32", outcome="failed"),
                            edit(sidecar(1), "minilm-sentiment", "fp32", outcome="error")).regressions
    error = compare_docs(sidecar(1), edit(sidecar(1), "minilm-sentiment", "fp32", outcome="error"))
    assert [m for _, m in error.regressions] == ["outcome passed -> error (see the test report)"]


def test_nan_inf_or_missing_value_in_head_is_a_regression_named_with_the_field():
    # every comparison with NaN is False: such a rule used to pass whatever the model did
    base = sidecar(seed=1)
    head = edit(edit(sidecar(seed=1), "minilm-sentiment", "int8-dynamic", accuracy=float("nan")),
                "smollm2-135m", "int8-dynamic", perplexity=float("inf"))
    for document in (base, head):  # missing on both sides: nothing to compare, no regression
        for record in document["benchmarks"]:
            record["extra_info"]["metrics"].pop("fewshot_accuracy", None)
    del head["benchmarks"][0]["extra_info"]["size_bytes"]  # minilm-sentiment fp32
    result = compare_docs(base, head, "accuracy:-0.5pt", "perplexity:+2%", "fewshot_accuracy:-2pt", "size:+1%")
    assert sorted((f"{r.model}-{r.chain}", m) for r, m in result.regressions) == [
        ("minilm-sentiment-fp32", "size is missing in head (base 90.9 MB) (rule size:+1%)"),
        ("minilm-sentiment-int8-dynamic", "accuracy is nan in head (base 0.8868) (rule accuracy:-0.5pt)"),
        ("smollm2-135m-int8-dynamic", "perplexity is inf in head (base 22.22) (rule perplexity:+2%)")]
    text = compare.render(result)
    assert "nan !" in text and "missing !" in text
    # NaN in base only: nothing to regress from
    assert not compare_docs(head, base, "accuracy:-0.5pt", "perplexity:+2%").regressions


def test_second_workload_same_run_ratios_are_rule_fields():
    base, head = sidecar(seed=1), sidecar(seed=1)
    for document, ratio in ((base, 2.0), (head, 1.5)):
        for record in document["benchmarks"]:
            key = "decode_speedup_vs_baseline" if record["model"] == "smollm2-135m" else "speedup_b16_vs_baseline"
            record["extra_info"][key] = 1.0 if record["chain"] == "fp32" else ratio
    result = compare_docs(base, head, "b16_speedup:-10%", "decode_speedup:-10%")
    assert sorted(m.split(" (")[0] for _, m in result.regressions) == [
        "b16_speedup 2.00x -> 1.50x", "decode_speedup 2.00x -> 1.50x"]
    assert "b16 x" in compare.render(result)


# --- thresholds learned from the history of runs ------------------------------------------------

def shifted(document, factor):
    """Every case's rounds scaled alike: another process on a shared VM, identical code."""
    for model, method in {(b["model"], b["chain"]) for b in document["benchmarks"]}:
        document = edit(document, model, method, latency_factor=factor)
    return document


def test_history_widens_the_latency_threshold_to_the_run_to_run_spread():
    base = runs.from_document(sidecar(seed=1), "base.json")
    history = [runs.from_document(shifted(sidecar(seed), factor), f"h{seed}.json")
               for seed, factor in ((3, 1.12), (4, 0.93), (5, 1.08))]
    head = runs.from_document(shifted(sidecar(seed=2), 1.15), "head.json")
    rules = compare.parse_rules(["latency:+10%"], FIELDS)
    # one process 15% slower than another: 30 rounds each call it significant, without history every case "regressed"
    assert len(compare.compare(base, head, rules).regressions) == 4
    learned = compare.compare(base, head, rules, history=history)
    assert learned.history == 3 and not learned.regressions
    assert "(limit +20%)" in compare.render(learned) and "history: 3 earlier run(s)" in compare.render(learned)
    # a real slowdown still shows; head itself and a second copy of base in the history change nothing
    slower = runs.from_document(edit(shifted(sidecar(seed=2), 1.15), "minilm-sentiment", "int8-dynamic",
                                     latency_factor=1.5), "slower.json")
    copies = [runs.from_document(as_pytest_benchmark(sidecar(seed=1)), "base-copy.json"), slower]
    result = compare.compare(base, slower, rules, history=[*history, *copies])
    [(row, message)] = result.regressions
    assert result.history == 3 and row.chain == "int8-dynamic"
    assert message.startswith("latency 10.") and re.search(r"threshold 2\d\.\d% learned from 4 runs", message)
    # too short a history: the rule's own threshold, and the rows say why
    short = compare.compare(base, head, rules, history=history[:1])
    assert len(short.regressions) == 4 and "history holds 2 run(s) of it, 3 needed" in short.regressions[0][1]


def test_runs_of_disjoint_models_are_bad_input():
    lm_only = sidecar(seed=1)
    lm_only["benchmarks"] = [b for b in lm_only["benchmarks"] if b["model"] == "smollm2-135m"]
    clf_only = sidecar(seed=1)
    clf_only["benchmarks"] = [b for b in clf_only["benchmarks"] if b["model"] == "minilm-sentiment"]
    with pytest.raises(runs.RunError, match="share no model"):
        compare_docs(lm_only, clf_only)


# --- locating and loading runs -----------------------------------------------------------------

def test_locate_by_file_number_and_commit_glob(tmp_path):
    storage = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    first = write(storage / f"0001_{'1' * 40}_20261125_100000.json", as_pytest_benchmark(sidecar(1, commit="1" * 40)))
    second = write(storage / f"0002_{'abc1234' + '2' * 33}_20261125_110000.json",
                   as_pytest_benchmark(sidecar(2, commit="abc1234" + "2" * 33)))
    side = write(tmp_path / ".compresslab" / "runs" / "20261125T120000_fedcba9876.json", sidecar(3))
    assert runs.locate("1", tmp_path) == first and runs.locate("0002", tmp_path) == second
    assert runs.locate("abc1234*", tmp_path) == second and runs.locate("abc1234", tmp_path) == second
    assert runs.locate("*_1111*", tmp_path) == first
    assert runs.locate("fedcba98", tmp_path) == side
    assert runs.locate(str(side), tmp_path) == side
    with pytest.raises(runs.RunError, match="no run numbered 0007"):
        runs.locate("7", tmp_path)
    with pytest.raises(runs.RunError, match="no such file"):
        runs.locate("deadbeef", tmp_path)


def test_pytest_benchmark_json_and_sidecar_load_alike(tmp_path):
    document = sidecar(seed=4)
    from_sidecar = runs.load(write(tmp_path / "s.json", document))
    from_benchmark = runs.load(write(tmp_path / "b.json", as_pytest_benchmark(document)))
    assert from_sidecar.kind == "sidecar" and from_benchmark.kind == "pytest-benchmark"
    assert from_sidecar.records.keys() == from_benchmark.records.keys()
    for name, record in from_sidecar.records.items():
        other = from_benchmark.records[name]
        assert (record.model, record.chain, record.outcome) == (other.model, other.chain, other.outcome)
        assert record.samples_ms == other.samples_ms and compare.field_value(record, "size") == compare.field_value(other, "size")


def test_pytest_benchmark_saved_data_supplies_samples(tmp_path):
    document = as_pytest_benchmark(sidecar(seed=4))
    for bench in document["benchmarks"]:  # --benchmark-save-data, and an older plugin without the samples
        bench["stats"]["data"] = [s / 1e3 for s in bench["extra_info"].pop("latency_samples_ms")]
    run = runs.load(write(tmp_path / "b.json", document))
    assert all(r.samples_ms and len(r.samples_ms) == 30 for r in run.records.values())


# --- the CLI: exit codes -----------------------------------------------------------------------

def cli_compare(tmp_path, base_doc, head_doc, *rules):
    base, head = write(tmp_path / "base.json", base_doc), write(tmp_path / "head.json", head_doc)
    return cli.main(["compare", str(base), str(head), *(f"--fail={r}" for r in rules)])


def test_cli_exit_0_without_and_1_with_a_regression(tmp_path, capsys):
    rules = ("size:+1%", "latency:+10%", "accuracy:-0.5pt", "perplexity:+2%")
    assert cli_compare(tmp_path, sidecar(1), sidecar(2), *rules) == cli.EXIT_OK
    assert capsys.readouterr().out.strip().endswith("no regressions (4 compared, 0 new, 0 missing)")
    larger = edit(sidecar(2), "smollm2-135m", "int8-dynamic", size_factor=1.05)
    assert cli_compare(tmp_path, sidecar(1), larger, *rules) == cli.EXIT_REGRESSION
    assert "REGRESSION smollm2-135m int8-dynamic: size 220.5 MB -> 231.5 MB" in capsys.readouterr().out


@pytest.mark.parametrize("head, rules, message", [
    ("missing", (), "no such file"),
    ("not-json", (), "not valid JSON"),
    ("no-benchmarks", (), "no 'benchmarks' list"),
    ("empty", (), "no compresslab benchmarks"),
    ("other-model", (), "share no model"),
    ("ok", ("accurcy:-1pt",), "unknown field 'accurcy'"),
    ("ok", ("size:+abc%",), "malformed rule"),
    ("ok", ("latency:+10%", "latency:+20%"), "repeats field 'latency'"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, head, rules, message):
    base = write(tmp_path / "base.json", sidecar(1))
    other = sidecar(1)
    other["benchmarks"] = [dict(b, model="other-model") for b in other["benchmarks"]]
    heads = {"not-json": "{nope", "no-benchmarks": json.dumps({"x": 1}),
             "empty": json.dumps({"benchmarks": [{"name": "t", "extra_info": {}}]}),
             "other-model": json.dumps(other), "ok": json.dumps(sidecar(2))}
    path = tmp_path / "head.json"
    if head in heads:
        path.write_text(heads[head])
    assert cli.main(["compare", str(base), str(path), *(f"--fail={r}" for r in rules)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("compresslab compare: ") and message in err and len(err.splitlines()) == 1


def test_cli_history_glob_and_allow_missing(tmp_path, capsys):
    for seed, factor in ((3, 1.12), (4, 0.93), (5, 1.08)):
        write(tmp_path / "history" / f"run{seed}.json", shifted(sidecar(seed), factor))
    head = shifted(sidecar(2), 1.15)
    assert cli_compare(tmp_path, sidecar(1), head, "latency:+10%") == cli.EXIT_REGRESSION
    capsys.readouterr()
    history = ["--history", str(tmp_path / "history" / "*.json")]
    assert cli.main(["compare", str(tmp_path / "base.json"), str(tmp_path / "head.json"), "--fail=latency:+10%",
                     *history]) == cli.EXIT_OK
    assert "history: 3 earlier run(s)" in capsys.readouterr().out
    assert cli.main(["compare", str(tmp_path / "base.json"), str(tmp_path / "head.json"),
                     "--history", str(tmp_path / "nothing" / "*.json")]) == cli.EXIT_BAD_INPUT
    assert "no file matches" in capsys.readouterr().err
    fewer = sidecar(2)
    fewer["benchmarks"] = fewer["benchmarks"][1:]
    assert cli_compare(tmp_path, sidecar(1), fewer) == cli.EXIT_REGRESSION
    assert "outcome passed -> missing (not in head)" in capsys.readouterr().out
    assert cli.main(["compare", str(tmp_path / "base.json"), str(tmp_path / "head.json"),
                     "--allow-missing"]) == cli.EXIT_OK
