"""Sharded runs: the split (--compresslab-shard I/N) and the merge (compresslab merge). No model is
built: the split is planned on case lists and collected with --collect-only, and merges join
synthetic runs (runfiles.py)."""

from __future__ import annotations

import copy
import itertools
import json
import random

import pytest

from compresslab import cli, merge, registry, runs, shard
from compresslab.shard import CaseTimes
from runfiles import CASES, as_pytest_benchmark, sidecar, write
import test_plugin
from test_plugin import run
from test_usage_and_tiers import usage_error_line

CHAINS = ("fp32", "bf16", "int8-dynamic", "distill-half", "distill-half+int8-dynamic", "distill-half+ov-int8",
          "distill-half+vocab-trim+ov-int8", "prune-global-50", "prune-global-50+int8-dynamic", "ort-int8",
          "vocab-trim", "vocab-trim+ort-int8")
MODELS = ("minilm-sentiment", "smollm2-135m")
suite_dir = test_plugin.suite_dir  # the fixture: tiny models registered for pytester runs
ALL = [(model, chain) for model in MODELS for chain in CHAINS]


def group(case):
    return case[0], shard.first_stage(case[1], registry.METHODS)


# --- the value -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("1/1", (1, 1)), ("2/4", (2, 4)), (" 4/4 ", (4, 4))])
def test_parse_reads_i_of_n(text, expected):
    assert shard.parse(text) == expected


@pytest.mark.parametrize("text", ["0/2", "3/2", "x", "2", "1/0", "-1/2", "1/2/3", "a/b", ""])
def test_parse_refuses_what_is_no_shard_naming_the_value(text):
    with pytest.raises(ValueError, match="not a shard; write I/N with 1 <= I <= N") as err:
        shard.parse(text)
    assert f"--compresslab-shard {text}:" in str(err.value)


# --- the plan --------------------------------------------------------------------------------------

def test_first_stage_skips_identity_stages():
    assert group(("m", "distill-half+vocab-trim+ov-int8")) == ("m", "distill-half")
    assert group(("m", "fp32")) == ("m", "fp32")
    assert group(("m", "fp32+int8-dynamic")) == ("m", "int8-dynamic")
    assert group(("m", "not-a-method")) == ("m", "not-a-method")  # a project's own id: its own group
    # the speculative decoder builds the distill-half student of the baseline as its draft
    assert group(("m", "spec-distill-half")) == ("m", "distill-half")


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 40])
def test_every_case_is_in_exactly_one_shard_and_groups_stay_together(count):
    cases = random.Random(count).sample(ALL, 17)
    plan = shard.plan(cases, count, group)
    assert set(plan.shard_of) == set(cases) and all(1 <= s <= count for s in plan.shard_of.values())
    assert sum(plan.sizes) == len(cases) and len(plan.sizes) == count
    for key, members in itertools.groupby(sorted(cases, key=group), key=group):
        assert len({plan.shard_of[case] for case in members}) == 1, key
    if count <= 4:  # more groups than shards: none left empty
        assert all(plan.sizes)


def test_a_chain_goes_with_its_first_stage_and_nothing_is_built_twice():
    plan = shard.plan(ALL, 4, group)
    distilled = {plan.shard_of[("minilm-sentiment", c)] for c in CHAINS if c.startswith("distill-half")}
    assert len(distilled) == 1
    for chain, first in (("vocab-trim+ort-int8", "vocab-trim"), ("prune-global-50+int8-dynamic", "prune-global-50")):
        assert plan.shard_of[("smollm2-135m", chain)] == plan.shard_of[("smollm2-135m", first)]
    # a broken grouping (case by case) would split them: the check above can fail
    split = shard.plan(ALL, 4, lambda case: case)
    assert len({split.shard_of[("minilm-sentiment", c)] for c in CHAINS if c.startswith("distill-half")}) > 1


def test_the_plan_is_deterministic_whatever_the_order_of_the_cases():
    times = {case: CaseTimes(((case[1], 10.0 + i),), 5.0, 1.0) for i, case in enumerate(ALL[:10])}
    first = shard.plan(ALL, 3, group, times)
    shuffled = ALL[:]
    random.Random(1).shuffle(shuffled)
    again = shard.plan(shuffled, 3, group, dict(reversed(list(times.items()))))
    assert again.shard_of == first.shard_of and again.digest == first.digest
    assert shard.plan(ALL, 4, group, times).digest != first.digest  # another N: another plan


def timed(seconds: dict[str, float], base: float = 0.0):
    """Recorded times for single-stage chains of one model: {chain: build seconds}."""
    return {("m", chain): CaseTimes(((chain, s),) if chain != "fp32" else (), base, 1.0)
            for chain, s in seconds.items()}


def test_recorded_times_balance_the_shards_and_counting_is_the_fallback():
    seconds = {"a": 600.0, "b": 10.0, "c": 10.0, "d": 10.0, "e": 10.0, "f": 10.0}
    cases = [("m", chain) for chain in seconds]
    by_time = shard.plan(cases, 2, lambda case: case, timed(seconds))
    assert [c for c, s in by_time.shard_of.items() if s == by_time.shard_of[("m", "a")]] == [("m", "a")]
    assert "recorded for 6 of 6 cases" in by_time.balanced_by
    by_count = shard.plan(cases, 2, lambda case: case)
    assert by_count.sizes == [3, 3] and "number of cases" in by_count.balanced_by
    # longest-first: no shard carries more than an even share plus the largest group
    rng = random.Random(7)
    many = {f"x{i}": rng.uniform(1, 300) for i in range(30)}
    loads = shard.plan([("m", c) for c in many], 4, lambda case: case, timed(many)).loads
    assert max(loads) <= sum(many.values()) / 4 + max(many.values()) + 1e-6


def test_a_stage_two_cases_share_is_counted_once_and_an_unrecorded_case_costs_the_median():
    times = {("m", "d"): CaseTimes((("d", 100.0),), 0.0, 2.0), ("m", "d+q"): CaseTimes((("d", 100.0), ("q", 5.0)),
                                                                                     0.0, 2.0),
             ("m", "x"): CaseTimes((("x", 50.0),), 0.0, 2.0)}
    plan = shard.plan([*times, ("m", "y")], 1, lambda case: case[1].split("+")[0], times)
    # d's stage once (100) + q (5) + two evaluations; x: 52; y unrecorded: the median case (102 of 52, 102, 107)
    assert plan.loads == [pytest.approx(100 + 5 + 2 + 2 + 52 + 102)]


def test_a_model_whose_baseline_and_groups_fit_a_share_stays_whole_and_pays_its_baseline_once():
    m = timed({"fp32": 0.0, "a": 30.0, "b": 30.0, "c": 30.0, "d": 30.0}, base=100.0)
    n = {("n", chain): t for (_, chain), t in timed({f"x{i}": 30.0 for i in range(10)}).items()}
    plan = shard.plan([*m, *n], 2, lambda case: case, m | n)
    assert len({plan.shard_of[case] for case in m}) == 1  # its 100 s baseline built on one shard only
    assert sum(plan.loads) == pytest.approx(101 + 4 * 31 + 10 * 31)
    assert max(plan.loads) <= 1.1 * sum(plan.loads) / 2
    # a model larger than a share is split by group, and each shard it lands on pays its baseline
    big = timed({f"y{i}": 30.0 for i in range(12)}, base=100.0)
    spread = shard.plan(big, 3, lambda case: case, big)
    holding = len({spread.shard_of[case] for case in big})
    assert holding == 3 and sum(spread.loads) == pytest.approx(12 * 31 + holding * 100)


def test_recorded_times_come_from_the_newest_run_holding_each_case(tmp_path):
    def with_times(seed, build):
        document = sidecar(seed)
        for bench in document["benchmarks"]:
            bench["extra_info"]["stages"] = [{"name": "base", "key": "k0", "build_s": 9.0},
                                             {"name": bench["chain"], "key": "k1", "build_s": build}]
            bench["extra_info"]["task_details"] = {"t": {"eval_s": 3.0}}
        return document

    write(tmp_path / "runs" / "20261125T120000_aaaa.json", with_times(0, 1.0))
    write(tmp_path / "runs" / "20261126T120000_aaaa.json", with_times(1, 7.0))
    (tmp_path / "runs" / "20261127T120000_bad.json").write_text("{nope")  # passed over
    found = shard.recorded_times(tmp_path / "runs", [("minilm-sentiment", "int8-dynamic"), ("other", "fp32")])
    assert found == {("minilm-sentiment", "int8-dynamic"): CaseTimes((("int8-dynamic", 7.0),), 9.0, 3.0)}


def test_runs_of_the_commit_under_test_give_no_times(tmp_path):
    """Shards run one after another in one checkout: a later shard must not plan from an earlier
    shard's run (measured: two cases ran on no shard and fp32 on three)."""
    def at(commit, build):
        document = sidecar(0)
        document["commit_info"] = {"commit": commit, "branch": "main", "dirty": False}
        for bench in document["benchmarks"]:
            bench["extra_info"]["stages"] = [{"name": "base", "key": "k0", "build_s": 9.0},
                                             {"name": bench["chain"], "key": "k1", "build_s": build}]
        return document

    write(tmp_path / "runs" / "20261125T120000_aaaa.json", at("a" * 40, 1.0))
    write(tmp_path / "runs" / "20261126T120000_bbbb.json", at("b" * 40, 7.0))  # newer: an earlier shard's
    case = ("minilm-sentiment", "int8-dynamic")
    assert shard.recorded_times(tmp_path / "runs", [case])[case].stages == (("int8-dynamic", 7.0),)
    assert shard.recorded_times(tmp_path / "runs", [case], current_commit="b" * 40)[case].stages == \
        (("int8-dynamic", 1.0),)
    assert shard.recorded_times(tmp_path / "runs", [case], current_commit="a" * 40)[case].stages == \
        (("int8-dynamic", 7.0),)


# --- the plugin: usage errors and the split of a collection -------------------------------------------

SHARD_BENCH = """
import pytest
from compresslab.plugin import case_params

CHAINS = ("fp32", "bf16", "int8-weight", "distill-half", "distill-half+int8-dynamic", "distill-half+ov-int8")

@pytest.mark.parametrize("compressed", case_params({"tiny-clf": CHAINS}), indirect=True)
def test_compression(compressed, benchmark):
    compressed.time(benchmark)

def test_not_a_case():
    pass
"""


@pytest.mark.parametrize("args, env, expected", [
    (("--compresslab-shard", "0/2"), None, "--compresslab-shard 0/2: not a shard"),
    (("--compresslab-shard", "3/2"), None, "--compresslab-shard 3/2: not a shard"),
    (("--compresslab-shard", "x"), None, "--compresslab-shard x: not a shard"),
    ((), "3/2", "COMPRESSLAB_SHARD=3/2: not a shard"),
])
def test_a_bad_shard_is_one_usage_line(suite_dir, monkeypatch, args, env, expected):
    if env:
        monkeypatch.setenv("COMPRESSLAB_SHARD", env)
    assert expected in usage_error_line(run(suite_dir, "-k", "clf", *args))


def collected(result) -> list[str]:
    return sorted(line.split("::")[-1] for line in result.stdout.lines if "::" in line)


def test_the_shards_of_a_collection_partition_it_and_say_so(suite_dir, monkeypatch):
    suite_dir.makepyfile(test_bench=SHARD_BENCH)
    everything = collected(run(suite_dir, "--collect-only", "-q"))
    assert len(everything) == 7
    parts = []
    for index in (1, 2, 3):
        result = run(suite_dir, "--collect-only", "-q", "--compresslab-shard", f"{index}/3")
        parts.append(collected(result))
        result.stdout.fnmatch_lines([f"compresslab: shard {index}/3: * of 6 cases (plan *, balanced by the number "
                                     f"of cases (no recorded times))*"])
        result.stdout.fnmatch_lines([f"{len(parts[-1])}/7 tests collected ({7 - len(parts[-1])} deselected)*"])
    assert sorted(itertools.chain(*parts)) == everything  # each test in exactly one shard
    distilled = [i for i, part in enumerate(parts) if any("distill-half" in name for name in part)]
    assert len(distilled) == 1 and sum("distill-half" in n for n in parts[distilled[0]]) == 3
    assert "test_not_a_case" in parts[0]
    # the split is of what -k (and the tiers, -m) left: 4 cases and the plain test
    narrowed = [collected(run(suite_dir, "--collect-only", "-q", "-k", "not bf16 and not weight",
                              "--compresslab-shard", f"{i}/2")) for i in (1, 2)]
    assert sorted(itertools.chain(*narrowed)) == [n for n in everything if "bf16" not in n and "weight" not in n]
    monkeypatch.setenv("COMPRESSLAB_SHARD", "2/3")  # the environment, and the option over it
    assert collected(run(suite_dir, "--collect-only", "-q")) == parts[1]
    assert collected(run(suite_dir, "--collect-only", "-q", "--compresslab-shard", "1/3")) == parts[0]


def test_a_shard_does_not_plan_from_runs_of_its_own_commit(suite_dir):
    suite_dir.makepyfile(test_bench=SHARD_BENCH)
    chains = ("fp32", "bf16", "int8-weight", "distill-half", "distill-half+int8-dynamic", "distill-half+ov-int8")
    template = sidecar(0)["benchmarks"][0]
    document = sidecar(0)
    document["benchmarks"] = []
    for chain in chains:
        bench = copy.deepcopy(template)
        bench.update(model="tiny-clf", chain=chain, name=f"test_compression[tiny-clf-{chain}]")
        bench["extra_info"]["stages"] = [{"name": "base", "key": "k0", "build_s": 9.0},
                                         {"name": chain, "key": "k1", "build_s": 5.0}]
        document["benchmarks"].append(bench)
    for commit, balanced_by in ((None, "the number of cases (no recorded times)"),  # this checkout's (no git)
                                ("a" * 40, "the build and evaluation times recorded for 6 of 6 cases")):
        document["commit_info"] = {"commit": commit, "branch": None, "dirty": None}
        write(suite_dir.path / ".compresslab" / "runs" / "20261125T120000_x.json", document)
        result = run(suite_dir, "--collect-only", "-q", "--compresslab-shard", "1/2")
        result.stdout.fnmatch_lines([f"compresslab: shard 1/2: * of 6 cases (plan *, balanced by {balanced_by})*"])


GONE_BENCH = """
import pytest
from compresslab.plugin import case_params

@pytest.mark.parametrize("compressed", case_params({"tiny-gone": ("fp32", "bf16", "int8-weight", "distill-half",
                                                                  "distill-half+int8-dynamic")}), indirect=True)
def test_compression(compressed, benchmark):
    compressed.time(benchmark)
"""


def test_the_shards_runs_record_their_shard_and_merge_into_the_unsharded_run(suite_dir):
    """Real runs of the plugin (cases whose weights are missing skip before building anything)."""
    suite_dir.makepyfile(test_bench=GONE_BENCH)
    run(suite_dir, "--compresslab-results-dir", "whole").assert_outcomes(skipped=5)
    plans = set()
    for index in (1, 2):
        result = run(suite_dir, "--compresslab-results-dir", f"shard{index}", "--compresslab-shard", f"{index}/2")
        document = json.loads((suite_dir.path / f"shard{index}" / "latest.json").read_text())
        shard_info = document["shard"]
        assert (shard_info["index"], shard_info["count"], shard_info["selected"]) == (index, 2, 5)
        assert len(document["benchmarks"]) == shard_info["cases"] == shard_info["sizes"][index - 1] > 0
        result.assert_outcomes(skipped=shard_info["cases"], deselected=5 - shard_info["cases"])
        assert document["settings"]["rounds"] == 3 and document["settings"]["device"] == "cpu"
        plans.add(shard_info["plan"])
    assert len(plans) == 1
    out = suite_dir.path / "merged.json"
    shard1, shard2 = (str(suite_dir.path / f"shard{i}" / "latest.json") for i in (1, 2))
    assert cli.main(["merge", shard1, shard2, "-o", str(out)]) == cli.EXIT_OK
    whole = runs.load(suite_dir.path / "whole" / "latest.json")
    assert runs.load(out).records == whole.records
    assert cli.main(["compare", str(suite_dir.path / "whole" / "latest.json"), str(out), "--fail=size:+1%"]) == 0
    # a shard run with other settings is refused
    run(suite_dir, "--compresslab-results-dir", "other", "--compresslab-shard", "2/2", "--compresslab-rounds", "4")
    other = str(suite_dir.path / "other" / "latest.json")
    assert cli.main(["merge", shard1, other, "-o", str(suite_dir.path / "bad.json")]) == cli.EXIT_BAD_INPUT


# --- merge -----------------------------------------------------------------------------------------

def shard_runs(document, count=2, plan_id="p1"):
    """``document`` split as shards of a plan would record it."""
    plan = shard.plan(CASES, count, lambda case: case[0])
    parts = []
    for index in range(1, count + 1):
        part = copy.deepcopy(document)
        part["benchmarks"] = [b for b in document["benchmarks"] if plan.shard_of[(b["model"], b["chain"])] == index]
        part["shard"] = {"index": index, "count": count, "cases": plan.sizes[index - 1], "sizes": plan.sizes,
                         "selected": len(CASES), "plan": plan_id}
        part["machine_info"] = {"node": f"runner-{index}", "machine": "x86_64", "python": "3.11.9"}
        part["settings"] = {"device": "cuda", "threads": 8, "rounds": 30}
        parts.append(part)
    return parts


def written(tmp_path, documents, prefix="shard"):
    return [str(write(tmp_path / f"{prefix}{i}.json", doc)) for i, doc in enumerate(documents, 1)]


def test_merged_shards_are_the_unsharded_run_and_compare_reads_them(tmp_path, capsys):
    whole = write(tmp_path / "whole.json", sidecar(1))
    paths = written(tmp_path, shard_runs(sidecar(1)))
    out = tmp_path / "merged.json"
    assert cli.main(["merge", *paths, "-o", str(out)]) == cli.EXIT_OK
    assert "merged 2 runs (shards 1/2, 2/2), 4 cases" in capsys.readouterr().out
    merged, unsharded = runs.load(out), runs.load(whole)
    assert merged.kind == "sidecar" and merged.records == unsharded.records
    document = json.loads(out.read_text())
    assert [(m["run"], m["shard"], m["node"]) for m in document["merged_from"]] == [
        ("shard1.json", "1/2", "runner-1"), ("shard2.json", "2/2", "runner-2")]
    assert "shard" not in document and document["machine_info"]["node"] == "runner-1, runner-2"
    assert cli.main(["compare", str(whole), str(out), "--fail=size:+1%", "--fail=accuracy:-0.5pt"]) == cli.EXIT_OK


def test_merge_without_out_writes_where_the_plugin_writes_runs(tmp_path, capsys, monkeypatch):
    paths = written(tmp_path, shard_runs(sidecar(1)))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["merge", *paths]) == cli.EXIT_OK
    assert runs.load(tmp_path / ".compresslab" / "latest.json").records == runs.load(tmp_path / "shard1.json").records \
        | runs.load(tmp_path / "shard2.json").records
    assert [p.name.endswith("_merged.json") for p in (tmp_path / ".compresslab" / "runs").iterdir()] == [True]


def test_merged_pytest_benchmark_json_is_pytest_benchmark_json(tmp_path, capsys):
    parts = []
    for part in shard_runs(sidecar(1)):
        converted = as_pytest_benchmark(part)
        converted["compresslab"] = {"shard": part["shard"]}
        parts.append(converted)
    paths = written(tmp_path, parts)
    assert cli.main(["merge", *paths]) == cli.EXIT_BAD_INPUT
    assert "give the file to write with -o OUT" in capsys.readouterr().err
    out = tmp_path / "merged.json"
    assert cli.main(["merge", *paths, "-o", str(out)]) == cli.EXIT_OK
    merged = runs.load(out)
    assert merged.kind == "pytest-benchmark" and len(merged.records) == 4
    assert [m["shard"] for m in json.loads(out.read_text())["compresslab"]["merged_from"]] == ["1/2", "2/2"]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("compresslab merge: "), err
    return err


def refused(tmp_path, capsys, documents) -> str:
    out = tmp_path / "merged.json"
    assert cli.main(["merge", *written(tmp_path, documents), "-o", str(out)]) == cli.EXIT_BAD_INPUT
    assert not out.exists()
    return one_line(capsys)


def test_merge_refuses_runs_of_different_commits(tmp_path, capsys):
    first, second = shard_runs(sidecar(1))
    second["commit_info"]["commit"] = "b" * 40
    err = refused(tmp_path, capsys, [first, second])
    assert "shard2.json: commit 'bbbb" in err and "differs from 'aaaa" in err and "one commit" in err


@pytest.mark.parametrize("where, change, expected", [
    ("settings", {"threads": 4}, "settings"),
    ("machine_info", {"python": "3.12.1"}, "python '3.12.1' differs from '3.11.9'"),
    ("extra_info", {"threads": 2}, "threads 2 differs from 8"),
    ("extra_info", {"device_name": "NVIDIA A10"}, "device 'NVIDIA A10' differs from 'NVIDIA L4'"),
])
def test_merge_refuses_runs_of_different_settings(tmp_path, capsys, where, change, expected):
    first, second = shard_runs(sidecar(1))
    for part in (first, second):
        for bench in part["benchmarks"]:
            bench["extra_info"].update(threads=8, device_name="NVIDIA L4")
    if where == "extra_info":
        for bench in second["benchmarks"]:
            bench["extra_info"].update(change)
    else:
        second[where].update(change)
    assert expected in refused(tmp_path, capsys, [first, second])


def test_merge_refuses_a_case_in_two_runs(tmp_path, capsys):
    first, second = shard_runs(sidecar(1))
    second["benchmarks"].append(first["benchmarks"][0])
    err = refused(tmp_path, capsys, [first, second])
    assert f"case {first['benchmarks'][0]['name']} is in both" in err


def test_merge_refuses_a_shard_twice_a_missing_shard_and_another_plan(tmp_path, capsys):
    first, second = shard_runs(sidecar(1))
    twice = copy.deepcopy(second) | {"shard": first["shard"]}
    assert "shard 1/2 given twice" in refused(tmp_path, capsys, [first, twice])
    assert "shard 2/2 missing (" in refused(tmp_path, capsys, [first])
    other = copy.deepcopy(second)
    other["shard"]["plan"] = "p2"
    assert "shards of different selections or recorded times" in refused(tmp_path, capsys, [first, other])
    plain = copy.deepcopy(second)
    del plain["shard"]
    assert "is not a shard's run" in refused(tmp_path, capsys, [first, plain])


def test_merge_refuses_a_sidecar_with_pytest_benchmark_json(tmp_path, capsys):
    first, second = shard_runs(sidecar(1))
    for part in (first, second):
        del part["shard"]
    assert "merge runs of one kind" in refused(tmp_path, capsys, [first, as_pytest_benchmark(second)])


def test_a_shard_that_stopped_early_leaves_the_merged_run_incomplete(tmp_path):
    first, second = shard_runs(sidecar(1))
    second["incomplete"] = "interrupted (SIGTERM)"
    first["machine_info"]["roofline"] = {"peak_gflops": {"fp32": 100.0}}
    document, _ = merge.merge(written(tmp_path, [first, second]))
    assert document["incomplete"] == "2/2: interrupted (SIGTERM)"
    assert document["machine_info"]["roofline"] == {"shards": {"1/2": {"peak_gflops": {"fp32": 100.0}}}}


FAKE_COMPRESSLAB = """#!/bin/sh
echo "compresslab $@" >> "{log}"
if [ "$1" = merge ]; then echo '{{"benchmarks": []}}' > "$5"; fi
if [ "$1" = compare ]; then echo "compared"; exit "${{COMPARE_STATUS:-0}}"; fi
if [ "$1" = report ]; then echo "the table"; fi
"""


@pytest.mark.parametrize("status", [0, 1])
def test_make_merge_gate_merges_the_shards_then_gates_and_reports(tmp_path, status):
    """The GPU workflow's gate: merge, compare (its exit status is the target's), report."""
    import os
    import subprocess
    from pathlib import Path

    bin_dir, log, stamp = tmp_path / "bin", tmp_path / "calls.log", tmp_path / "installed"
    bin_dir.mkdir()
    stamp.touch()
    (bin_dir / "compresslab").write_text(FAKE_COMPRESSLAB.format(log=log))
    (bin_dir / "compresslab").chmod(0o755)
    results, report = tmp_path / "results", tmp_path / "report"
    done = subprocess.run(["make", "--no-print-directory", "-C", str(Path(__file__).resolve().parent.parent),
                           "merge-gate", "RUNS=s1.json s2.json", "BASE=base.json", f"BIN={bin_dir}", f"STAMP={stamp}",
                           f"RESULTS={results}", f"REPORT_DIR={report}", "FAIL=size:+1%"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COMPARE_STATUS": str(status)})
    assert (done.returncode == 0) == (status == 0), done.stdout + done.stderr
    calls = log.read_text().splitlines()
    assert calls == [f"compresslab merge s1.json s2.json -o {results}/latest.json",
                     f"compresslab compare base.json {results}/latest.json --fail=size:+1%",
                     f"compresslab report {results}/latest.json --out {report} --format markdown"]
    summary = (report / "summary.md").read_text()
    assert "compared" in summary and "the table" in summary
