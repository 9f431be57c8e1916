"""The CLI's exit codes on bad input: 2 and one line on stderr naming what is wrong, never a
traceback (exit 1, which a CI gate reads as a regression)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compresslab import __version__, cli, compare, runs
from runfiles import as_pytest_benchmark, sidecar, write


def with_extra(document, index=0, **fields):
    """A copy whose benchmark ``index`` has these extra_info fields (a sidecar or pytest-benchmark doc)."""
    changed = json.loads(json.dumps(document))
    changed["benchmarks"][index]["extra_info"].update(fields)
    return changed


def with_bench(document, index=0, **fields):
    changed = json.loads(json.dumps(document))
    changed["benchmarks"][index].update(fields)
    return changed


def with_stats(**fields):
    document = as_pytest_benchmark(sidecar(2))
    document["benchmarks"][0]["stats"].update(fields)
    return document


def with_metrics(metrics):
    document = json.loads(json.dumps(sidecar(2)))
    document["benchmarks"][0]["extra_info"]["metrics"] = metrics
    return document


def without_name():
    document = sidecar(2)
    del document["benchmarks"][0]["name"]
    return document


FP32 = "benchmark #0 (test_compression[minilm-sentiment-fp32])"
# id -> (file contents: bytes, a JSON document, or a builder of the path; what the line must say)
MALFORMED = {
    "bench-is-a-string": ({"benchmarks": ["x"]}, "benchmark #0 is 'x', not an object"),
    "bench-is-null": ({"benchmarks": [None]}, "benchmark #0 is None, not an object"),
    "size-not-a-number": (with_extra(sidecar(2), size_bytes="big"), f"{FP32}: size_bytes is 'big', not a number"),
    "size-is-bool": (with_extra(sidecar(2), size_bytes=True), "size_bytes is True, not a number"),
    "size-too-large": (with_extra(sidecar(2), size_bytes=10 ** 400), "size_bytes is 1000"),
    "latency": (with_extra(sidecar(2), latency_p50_ms="12ms"), "latency_p50_ms is '12ms', not a number"),
    "speedup": (with_extra(sidecar(2), speedup_vs_baseline=[2]), "speedup_vs_baseline is [2], not a number"),
    "rss": (with_extra(sidecar(2), peak_rss_mb="500"), "peak_rss_mb is '500', not a number"),
    "cuda": (with_extra(sidecar(2), cuda_peak_mb={}), "cuda_peak_mb is {}, not a number"),  # an older run's name
    "rss-mib": (with_extra(sidecar(2), peak_rss_mib="500"), "peak_rss_mib is '500', not a number"),
    "cuda-mib": (with_extra(sidecar(2), cuda_peak_mib={}), "cuda_peak_mib is {}, not a number"),
    **{f"second-workload-{key}": (with_extra(sidecar(2), **{key: "x"}), f"{key} is 'x', not a number")
       for key in ("latency_b16_p50_ms", "decode_tokens_per_s", "speedup_b16_vs_baseline", "decode_speedup_vs_baseline")},
    "baseline-latency": (with_extra(sidecar(2), baseline_latency_p50_ms="16"),
                         "baseline_latency_p50_ms is '16', not a number"),
    "zstd-size": (with_extra(sidecar(2), size_zstd_bytes="x"), "size_zstd_bytes is 'x', not a number"),
    "metric-value": (with_metrics({"accuracy": "high"}), f"{FP32}: metrics.accuracy is 'high', not a number"),
    "metrics-not-object": (with_metrics([0.9]), "metrics is [0.9], not an object"),
    "recovery-value": (with_extra(sidecar(2), recovery={"accuracy": "99%"}), "recovery.accuracy is '99%'"),
    "samples-item": (with_extra(sidecar(2), latency_samples_ms=[1.0, "2"]), "latency_samples_ms[1] is '2'"),
    "samples-null-item": (with_extra(sidecar(2), latency_samples_ms=[1.0, None]),
                          "latency_samples_ms[1] is None, not a number"),
    "samples-not-list": (with_extra(sidecar(2), latency_samples_ms=5), "latency_samples_ms is 5, not a list"),
    "extra-info-not-object": (with_bench(sidecar(2), extra_info="x"), f"{FP32}: extra_info is 'x', not an object"),
    "name-missing": (without_name(), "benchmark #0: no 'name'"),
    "model-not-string": (with_bench(sidecar(2), model=7), f"{FP32}: model is 7, not a string"),
    "chain-null": (with_bench(sidecar(2), chain=None), f"{FP32}: chain is None, not a string"),
    "outcome-not-string": (with_bench(sidecar(2), outcome=["passed"]), "outcome is ['passed'], not a string"),
    "name-with-newline": (with_bench(with_extra(sidecar(2), size_bytes="big"), name="a\nb"),
                          r"benchmark #0 (a\nb): size_bytes"),
    "stats-median": (with_stats(median="fast"), f"{FP32}: stats.median is 'fast', not a number"),
    "stats-data": (with_stats(data=[0.01, "x"]), "stats.data[1] is 'x', not a number"),
    "stats-not-object": (with_bench(as_pytest_benchmark(sidecar(2)), stats=3), "stats is 3, not an object"),
    "floor-violations": (with_extra(as_pytest_benchmark(sidecar(2)), floor_violations="low"),
                         "floor_violations is 'low', not a list of str"),
    "pb-extra-info-not-object": (with_bench(as_pytest_benchmark(sidecar(2)), extra_info=[]),
                                 "extra_info is [], not an object"),
    "commit-info": ({**sidecar(2), "commit_info": "abc"}, "commit_info is 'abc', not an object"),
    "top-level-list": ([1, 2], "no 'benchmarks' list"),
    "top-level-number": (3, "no 'benchmarks' list"),
    "benchmarks-missing": ({"schema": 1}, "no 'benchmarks' list"),
    "benchmarks-not-list": ({"benchmarks": {"a": 1}}, "no 'benchmarks' list"),
    "no-compresslab-benchmarks": ({"benchmarks": []}, "no compresslab benchmarks"),
    "empty-file": (b"", "an empty file, not a run"),
    "binary-garbage": (bytes(range(256)) * 4, "not a JSON text file"),
    "not-json": (b"{nope", "not valid JSON"),
    "nested-too-deeply": (b"[" * 100_000, "nested too deeply"),
    "int-too-long-for-json": (b'{"benchmarks": [' + b"1" * 5000 + b"]}", "not valid JSON"),
    "a-directory": (lambda path: path.mkdir() or path, "a directory, not a run file"),
}


def make(tmp_path: Path, case: str) -> Path:
    content, _ = MALFORMED[case]
    path = tmp_path / "bad" / "run.json"
    path.parent.mkdir()
    if callable(content):
        return content(path)
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"compresslab {command}: "), err
    return err


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_run_is_bad_input_in_one_line_naming_the_file(tmp_path, capsys, case):
    bad, good = make(tmp_path, case), write(tmp_path / "good.json", sidecar(1))
    expected = MALFORMED[case][1]
    for argv in (["compare", str(good), str(bad)], ["compare", str(bad), str(good), "--fail=size:+1%"],
                 ["compare", str(good), str(good), "--history", str(bad.parent / "*.json")],
                 ["report", str(bad), "--out", str(tmp_path / "report")]):
        assert cli.main(argv) == cli.EXIT_BAD_INPUT, argv
        err = one_line(capsys, argv[0])
        assert str(bad) in err and expected in err, (argv, err)
    assert not (tmp_path / "report").exists()


def test_odd_but_valid_values_are_read_not_rejected(tmp_path, capsys):
    # NaN, inf and null are numbers compare has rules for (a broken model's perplexity is inf)
    head = with_extra(with_extra(sidecar(2), size_bytes=None, size_zstd_bytes=None, cuda_peak_mb=None,
                                 metrics={"accuracy": float("nan"), "macro_f1": None}, recovery=None),
                      index=3, latency_p50_ms=float("inf"), metrics={"perplexity": float("inf")})
    path = write(tmp_path / "head.json", head)
    assert cli.main(["report", str(path), "--out", str(tmp_path / "report")]) == cli.EXIT_OK
    assert cli.main(["compare", str(write(tmp_path / "base.json", sidecar(1))), str(path), "--fail=size:+1%",
                     "--fail=perplexity:+2%"]) == cli.EXIT_REGRESSION
    assert capsys.readouterr().err == ""
    record = runs.load(path).records["test_compression[minilm-sentiment-fp32]"]
    assert compare.field_value(record, "size") is None and record.metrics == {"accuracy": pytest.approx(float("nan"), nan_ok=True)}


def test_alpha_outside_0_1_is_bad_input(tmp_path, capsys):
    good = str(write(tmp_path / "good.json", sidecar(1)))
    for alpha in ("0", "1", "-0.5"):
        assert cli.main(["compare", good, good, "--alpha", alpha]) == cli.EXIT_BAD_INPUT
        assert "a significance level lies between 0 and 1" in one_line(capsys, "compare")


def test_history_glob_matching_nothing_is_bad_input(tmp_path, capsys):
    good = str(write(tmp_path / "good.json", sidecar(1)))
    assert cli.main(["compare", good, good, "--history", str(tmp_path / "none" / "*.json")]) == cli.EXIT_BAD_INPUT
    assert "no file matches" in one_line(capsys, "compare")


@pytest.mark.parametrize("error", [
    PermissionError(13, "Permission denied", "/runs/base.json"),
    NotADirectoryError(20, "Not a directory", "/cache/file/.locks"),
    OSError(28, "No space left on device"),
])
def test_an_os_error_in_any_command_is_one_line(monkeypatch, capsys, error):
    def fails(args):
        raise error
    monkeypatch.setattr(cli, "cmd_compare", fails)
    assert cli.main(["compare", "a", "b"]) == cli.EXIT_BAD_INPUT
    err = one_line(capsys, "compare")
    assert error.strerror in err and (error.filename or "") in err and "Errno" not in err


def test_report_into_a_regular_file_is_one_line(tmp_path, capsys):
    run, blocker = write(tmp_path / "run.json", sidecar(1)), tmp_path / "blocker"
    blocker.write_text("")
    assert cli.main(["report", str(run), "--out", str(blocker / "report")]) == cli.EXIT_BAD_INPUT
    assert str(blocker) in one_line(capsys, "report")


def test_build_with_a_regular_file_as_cache_dir_fails_before_any_model_work(tmp_path, capsys, monkeypatch):
    from compresslab import device, pipeline

    def no_model_work(*args, **kwargs):
        raise AssertionError("model work started before the cache dir was checked")
    for module, name in ((pipeline.Pipeline, "build"), (device, "resolve"), (device, "pin_threads")):
        monkeypatch.setattr(module, name, no_model_work)
    blocker = tmp_path / "cache"
    blocker.write_text("")
    assert cli.main(["build", "minilm-sentiment", "fp32", "--cache-dir", str(blocker)]) == cli.EXIT_BAD_INPUT
    assert str(blocker) in one_line(capsys, "build")


def test_without_the_cache_check_the_cache_mkdir_error_is_still_one_line(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    from compresslab import cache, device, pipeline

    def first_cache_write(self, spec, chain, resolved):  # what Pipeline.build does first: take a key's lock
        return self.cache.get_or_build("key", lambda out: None)
    monkeypatch.setattr(cache, "check_usable", lambda root: None)
    monkeypatch.setattr(device, "pin_threads", lambda threads: None)
    spec = SimpleNamespace(source=SimpleNamespace(check_available=str))
    monkeypatch.setattr(cli, "_catalog", lambda args: SimpleNamespace(get_model=lambda name: spec, methods={}, tasks={}))
    monkeypatch.setattr(pipeline.Pipeline, "build", first_cache_write)
    blocker = tmp_path / "cache"
    blocker.write_text("")
    assert cli.main(["build", "minilm-sentiment", "fp32", "--cache-dir", str(blocker)]) == cli.EXIT_BAD_INPUT
    err = one_line(capsys, "build")
    assert f"{blocker}/" in err and "Not a directory" in err


def test_list_with_a_missing_or_malformed_floors_file_is_bad_input_before_the_listing(tmp_path, capsys):
    missing = tmp_path / "nonexistent.toml"
    assert cli.main(["list", "--floors", str(missing)]) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr() == ("", f"compresslab list: --floors {missing}: no such file\n")
    assert cli.main(["list", "--floors", str(tmp_path)]) == cli.EXIT_BAD_INPUT
    assert capsys.readouterr() == ("", f"compresslab list: --floors {tmp_path}: a directory, not a file\n")
    broken = tmp_path / "broken.toml"
    broken.write_text("[defaults\nmin = 1\n")
    assert cli.main(["list", "--floors", str(broken)]) == cli.EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith(f"compresslab list: {broken}: not valid TOML")


def test_list_without_floors_uses_floors_toml_here_or_the_defaults(tmp_path, capsys, monkeypatch):
    from compresslab.floors import DEFAULT_FLOORS

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_available", lambda check: "-")  # the package checks take seconds
    assert cli.main(["list"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "floors (compresslab/floors.toml (the defaults)):" in out
    assert "smollm2-135m-prune-l1-50: {" in out and "expected_failure" in out  # the defaults' known failures
    assert "'max_size_ratio': 0.613" not in out
    (tmp_path / "floors.toml").write_text(DEFAULT_FLOORS.read_text().replace("max_size_ratio = 0.66 ",
                                                                           "max_size_ratio = 0.613 "))
    assert cli.main(["list"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "floors (floors.toml):" in out and "'max_size_ratio': 0.613" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"compresslab {__version__}\n"


@pytest.mark.parametrize("argv, expected", [
    (["build", "minilm-sentiment", "fp32", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (["compare"], "the following arguments are required: base, head"),
    (["frob"], "invalid choice: 'frob'"),
    (["compare", "a.json", "b.json", "--alpha", "abc"], "argument --alpha: invalid float value: 'abc'"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, expected, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == cli.EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "--help" in lines[0], lines
