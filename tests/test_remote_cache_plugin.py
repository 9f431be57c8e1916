"""The plugin's remote cache: --compresslab-remote-cache and COMPRESSLAB_REMOTE_CACHE, a bad one as one
usage line before anything builds, and a second machine with an empty local cache that runs a case
without building or evaluating it."""

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from compresslab import registry, remote_cache
from compresslab.models.spec import ModelSpec
from test_plugin import run, suite_dir  # noqa: F401 - the fixture
from test_usage_and_tiers import usage_error_line
from tiny import TinySource, save_tokenizer, tiny_bert_classifier, tokenizer


@dataclass(frozen=True)
class QuickSource(TinySource):
    """The tiny classifier after a few training steps: what is shared matters here, not its accuracy."""

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "train_steps": 4}

    def build(self, out: Path) -> None:
        tiny_bert_classifier(train_steps=4, seed=self.seed).save_pretrained(out)
        save_tokenizer(tokenizer(), out)


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_bad_remote_cache_is_one_usage_line(suite_dir, monkeypatch, how):
    url = "ftp://host/cache"
    if how == "environment":
        monkeypatch.setenv(remote_cache.ENV, url)
    line = usage_error_line(run(suite_dir, "-k", "clf", *(("--compresslab-remote-cache", url) if how == "option"
                                                          else ())))
    assert f"remote cache {url!r}: unknown scheme ftp://; valid: s3://" in line


def test_a_missing_backend_package_is_one_usage_line(suite_dir):
    if importlib.util.find_spec("adlfs") is not None:
        pytest.skip("adlfs is installed here")
    line = usage_error_line(run(suite_dir, "-k", "clf", "--compresslab-remote-cache", "az://container/cache"))
    assert line.endswith("the az:// backend needs the adlfs package (pip install adlfs)")


def test_a_second_machine_runs_a_case_without_building_or_evaluating(suite_dir, monkeypatch, tmp_path):
    monkeypatch.setitem(registry.MODELS, "tiny-clf", ModelSpec("tiny-clf", "classifier", QuickSource(),
                                                               ("synthetic-sentiment",), "tiny", 16))
    shared = tmp_path / "shared"
    common = ("-k", "clf and fp32", "--compresslab-memory", "off", "--benchmark-disable", "--compresslab-rounds", "1",
              "--compresslab-warmup", "0")

    def stages_and_evaluation() -> tuple[list[bool], bool, dict]:
        extra = json.loads((suite_dir.path / ".compresslab" / "latest.json").read_text())["benchmarks"][0]["extra_info"]
        return [stage["built_now"] for stage in extra["stages"]], extra["metrics_cached"], extra["metrics"]

    monkeypatch.setenv("COMPRESSLAB_CACHE_DIR", str(tmp_path / "machine-a"))
    run(suite_dir, *common, "--compresslab-remote-cache", str(shared)).assert_outcomes(passed=1)
    built, cached, metrics = stages_and_evaluation()
    assert (built, cached) == ([True], False) and "accuracy" in metrics
    monkeypatch.setenv("COMPRESSLAB_CACHE_DIR", str(tmp_path / "machine-b"))  # empty
    monkeypatch.setenv(remote_cache.ENV, str(shared))
    run(suite_dir, *common).assert_outcomes(passed=1)
    assert stages_and_evaluation() == ([False], True, metrics)  # fetched: neither built nor evaluated again
    assert {p.name for p in (tmp_path / "machine-b").iterdir() if not p.name.startswith(".")} == {
        p.name for p in shared.iterdir() if not p.name.startswith(".")}


def test_compresslab_build_refuses_a_bad_remote_cache_in_one_line(tmp_path, capsys):
    from compresslab import cli

    status = cli.main(["build", "tiny-clf", "fp32", "--cache-dir", str(tmp_path / "c"), "--remote-cache", "ftp://x/y"])
    err = capsys.readouterr().err
    assert status == cli.EXIT_BAD_INPUT and err.count("\n") == 1
    assert err.startswith("compresslab build: remote cache 'ftp://x/y': unknown scheme ftp://; valid: s3://")
