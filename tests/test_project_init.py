"""``compresslab init``: the starter it writes parses, and holds what the checkpoint says (its kind,
its labels in output order) and the kind's default tier; every input it cannot use is exit 2 and
one line, and nothing is written then."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from compresslab import cli, registry

LABELS = ["sad", "angry", "happy"]  # not alphabetical: the order must be the model's output order


def save_tiny_bert(path: Path, labels: list[str], problem_type: str | None = None) -> Path:
    from tiny import tiny_bert_classifier

    model = tiny_bert_classifier(train_steps=0)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    model.config.problem_type = problem_type
    model.save_pretrained(path)
    return path


def save_tiny_llama(path: Path) -> Path:
    from tiny import tiny_llama

    tiny_llama(train_steps=0).save_pretrained(path)
    return path


def write_config(path: Path, **config) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def run_init(*argv: str) -> int:
    return cli.main(["init", *argv])


def starter(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("compresslab init: "), err
    return err


@pytest.fixture
def no_hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache: nothing a test asks for is cached, and nothing is downloaded."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_classifier_starter(tmp_path, monkeypatch, capsys):
    save_tiny_bert(tmp_path / "checkpoints" / "My_Tweet Model", LABELS)
    monkeypatch.chdir(tmp_path)
    assert run_init("checkpoints/My_Tweet Model") == cli.EXIT_OK
    config = starter(tmp_path / "compresslab.toml")
    model = config["models"]["my-tweet-model"]
    assert model["path"] == "checkpoints/My_Tweet Model"
    assert model["kind"] == "classifier" and model["latency_seq_len"] == 64
    (task_id,) = model["tasks"]
    task = config["tasks"][task_id]
    assert task["type"] == "classification" and task["label_names"] == LABELS
    assert task["metrics"] == ["accuracy", "macro_f1"] and task["test"] == "data/test.csv"
    assert config["matrix"] == {"my-tweet-model": list(registry.DEFAULT_TIER["classifier"])}
    out = capsys.readouterr().out
    assert "wrote compresslab.toml" in out and "sad, angry, happy" in out and "pytest" in out


def test_every_editable_line_says_what_it_is(tmp_path):
    save_tiny_bert(tmp_path / "clf", LABELS)
    assert run_init(str(tmp_path / "clf"), "--out", str(tmp_path / "compresslab.toml")) == cli.EXIT_OK
    lines = (tmp_path / "compresslab.toml").read_text().splitlines()
    for above, line in zip([""] + lines, lines):
        if " = " in line and not line.startswith(("#", "    ")) and not line.endswith("["):
            assert "  # " in line or above.startswith("# "), line
        assert len(line) <= 120, line


def test_path_is_relative_to_the_written_file(tmp_path):
    save_tiny_bert(tmp_path / "models" / "clf", LABELS)
    (tmp_path / "project").mkdir()
    assert run_init(str(tmp_path / "models" / "clf"), "--out", str(tmp_path / "project" / "c.toml")) == 0
    assert starter(tmp_path / "project" / "c.toml")["models"]["clf"]["path"] == "../models/clf"


def test_labels_in_index_order_past_nine(tmp_path):
    names = [f"class{i}" for i in range(12)]
    id2label = {str(i): name for i, name in reversed(list(enumerate(names)))}  # "10" sorts before "2" as text
    write_config(tmp_path / "clf", architectures=["RobertaForSequenceClassification"], id2label=id2label)
    assert run_init(str(tmp_path / "clf"), "--out", str(tmp_path / "c.toml")) == 0
    assert starter(tmp_path / "c.toml")["tasks"]["clf-eval"]["label_names"] == names


def test_multilabel_starter(tmp_path):
    save_tiny_bert(tmp_path / "tags", LABELS, problem_type="multi_label_classification")
    assert run_init(str(tmp_path / "tags"), "--out", str(tmp_path / "c.toml"), "--id", "my-tags") == 0
    config = starter(tmp_path / "c.toml")
    model = config["models"]["my-tags"]
    assert model["kind"] == "multilabel-classifier"
    task = config["tasks"][model["tasks"][0]]
    assert task["type"] == "multilabel" and task["threshold"] == "tune" and "validation" in task
    assert task["labels"] == "labels" and task["label_names"] == LABELS
    assert task["metrics"] == ["micro_f1", "macro_f1", "jaccard"]
    assert config["matrix"]["my-tags"] == list(registry.DEFAULT_TIER["classifier"])


def test_causal_lm_starter_runs_on_a_builtin_task(tmp_path):
    save_tiny_llama(tmp_path / "lm")
    assert run_init(str(tmp_path / "lm"), "--out", str(tmp_path / "c.toml")) == 0
    config = starter(tmp_path / "c.toml")
    model = config["models"]["lm"]
    assert model["kind"] == "causal-lm" and model["tasks"] == ["wiki-perplexity"] and model["latency_seq_len"] == 128
    assert "tasks" not in config  # the own-text perplexity task is a commented example
    assert '# type = "perplexity"' in (tmp_path / "c.toml").read_text()
    assert config["matrix"]["lm"] == list(registry.DEFAULT_TIER["causal-lm"])


def test_gguf_is_a_causal_lm(tmp_path):
    (tmp_path / "x.gguf").touch()
    assert run_init(str(tmp_path / "x.gguf"), "--out", str(tmp_path / "c.toml")) == 0
    model = starter(tmp_path / "c.toml")["models"]["x"]
    assert model["kind"] == "causal-lm" and model["path"] == "x.gguf"


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    (tmp_path / "x.gguf").touch()
    out = tmp_path / "compresslab.toml"
    out.write_text("# mine\n")
    assert run_init(str(tmp_path / "x.gguf"), "--out", str(out)) == cli.EXIT_BAD_INPUT
    assert "--force" in one_line_error(capsys) and out.read_text() == "# mine\n"
    assert run_init(str(tmp_path / "x.gguf"), "--out", str(out), "--force") == cli.EXIT_OK
    assert starter(out)["models"]["x"]["kind"] == "causal-lm"


def test_hub_id_not_cached_needs_kind(tmp_path, capsys, no_hub_cache):
    out = tmp_path / "c.toml"
    assert run_init("some-org/not-cached", "--out", str(out)) == cli.EXIT_BAD_INPUT
    assert "--kind" in one_line_error(capsys) and not out.exists()
    assert run_init("some-org/not-cached", "--out", str(out), "--kind", "classifier") == cli.EXIT_OK
    config = starter(out)
    model = config["models"]["not-cached"]
    assert model["hub"] == "some-org/not-cached" and model["revision"] == "main" and model["kind"] == "classifier"
    assert "label_names" not in config["tasks"][model["tasks"][0]]  # unknown here: left as a commented example


def test_hub_id_read_from_the_local_cache(tmp_path, no_hub_cache):
    repo = no_hub_cache / "models--some-org--cached-clf"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    write_config(repo / "snapshots" / ("0" * 40), architectures=["BertForSequenceClassification"],
                 id2label={"0": "no", "1": "yes"})
    assert run_init("some-org/cached-clf", "--out", str(tmp_path / "c.toml")) == 0
    config = starter(tmp_path / "c.toml")
    assert config["models"]["cached-clf"]["kind"] == "classifier"
    assert config["tasks"]["cached-clf-eval"]["label_names"] == ["no", "yes"]


def test_unknown_architecture(tmp_path, capsys):
    write_config(tmp_path / "enc", architectures=["BertModel"])
    assert run_init(str(tmp_path / "enc"), "--out", str(tmp_path / "c.toml")) == cli.EXIT_BAD_INPUT
    err = one_line_error(capsys)
    assert "BertModel" in err and all(kind in err for kind in ("classifier", "multilabel-classifier", "causal-lm"))
    assert not (tmp_path / "c.toml").exists()


@pytest.mark.parametrize("config, kind", [
    ({"architectures": ["LlamaForCausalLM"]}, "classifier"),
    ({"architectures": ["BertForSequenceClassification"]}, "causal-lm"),
    ({"architectures": ["BertForSequenceClassification"], "problem_type": "multi_label_classification"},
     "classifier"),
    ({"architectures": ["BertForSequenceClassification"], "problem_type": "single_label_classification"},
     "multilabel-classifier"),
], ids=["lm-as-classifier", "classifier-as-lm", "multilabel-as-classifier", "single-label-as-multilabel"])
def test_contradicting_kind(tmp_path, capsys, config, kind):
    write_config(tmp_path / "m", **config)
    assert run_init(str(tmp_path / "m"), "--out", str(tmp_path / "c.toml"), "--kind", kind) == cli.EXIT_BAD_INPUT
    assert "contradicts" in one_line_error(capsys) and not (tmp_path / "c.toml").exists()


def test_gguf_given_another_kind(tmp_path, capsys):
    (tmp_path / "x.gguf").touch()
    assert run_init(str(tmp_path / "x.gguf"), "--out", str(tmp_path / "c.toml"), "--kind", "classifier") == 2
    assert "contradicts" in one_line_error(capsys)


def test_unrecorded_problem_type_may_be_multilabel(tmp_path):
    """A classifier that never recorded its problem type may be multi-label: --kind decides, no contradiction."""
    write_config(tmp_path / "m", architectures=["BertForSequenceClassification"], id2label={"0": "a", "1": "b"})
    assert run_init(str(tmp_path / "m"), "--out", str(tmp_path / "c.toml"), "--kind", "multilabel-classifier") == 0
    assert starter(tmp_path / "c.toml")["models"]["m"]["kind"] == "multilabel-classifier"


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.mkdir(), "without config.json"),
    (lambda p: None, "no such .gguf file"),
    (lambda p: (p / "config.json").parent.mkdir() or (p / "config.json").write_text("[1]"), "not an object"),
], ids=["no-config", "missing-gguf", "config-not-object"])
def test_bad_sources(tmp_path, capsys, make, expected):
    source = tmp_path / ("missing.gguf" if expected == "no such .gguf file" else "ckpt")
    make(source)
    assert run_init(str(source), "--out", str(tmp_path / "c.toml")) == cli.EXIT_BAD_INPUT
    assert expected in one_line_error(capsys)


def test_bad_id(tmp_path, capsys):
    (tmp_path / "x.gguf").touch()
    assert run_init(str(tmp_path / "x.gguf"), "--out", str(tmp_path / "c.toml"), "--id", "My Model") == 2
    assert "--id" in one_line_error(capsys)


@pytest.mark.parametrize("kind", ["classifier", "multilabel-classifier", "causal-lm"])
def test_starter_loads_as_a_project(tmp_path, kind):
    """The starter, with its test data in place, is a valid project config (project.py's own reading)."""
    from compresslab import project

    problem = "multi_label_classification" if kind == "multilabel-classifier" else None
    if kind == "causal-lm":
        save_tiny_llama(tmp_path / "ckpt")
    else:
        save_tiny_bert(tmp_path / "ckpt", LABELS, problem_type=problem)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.csv").write_text("text,label\ngood day,happy\nbad day,sad\n")
    rows = "".join(json.dumps({"text": t, "labels": ls}) + "\n" for t, ls in [("good", ["happy"]), ("bad", ["sad"])])
    for split in ("test", "validation"):
        (tmp_path / "data" / f"{split}.jsonl").write_text(rows)
    assert run_init(str(tmp_path / "ckpt"), "--out", str(tmp_path / "compresslab.toml")) == 0
    catalog = project.load_catalog(tmp_path)
    assert catalog.matrix["ckpt"] == registry.DEFAULT_TIER["causal-lm" if kind == "causal-lm" else "classifier"]


def test_init_adds_a_starter_test_only_where_there_are_no_tests(tmp_path, capsys):
    from compresslab import project_init

    source = tmp_path / "ckpt"
    source.mkdir()
    (source / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    project_dir = tmp_path / "mine"
    project_dir.mkdir()
    assert cli.main(["init", str(source), "--out", str(project_dir / "compresslab.toml")]) == 0
    test_file = project_dir / project_init.TEST_FILE
    assert "def test_matrix(compressed, benchmark):" in test_file.read_text()
    out = capsys.readouterr().out
    assert f"wrote {test_file}" in out and "next: run `pytest` in" in out  # a causal LM needs no data first
    test_file.unlink()
    (project_dir / "test_other.py").write_text("")
    assert cli.main(["init", str(source), "--out", str(project_dir / "compresslab.toml"), "--force"]) == 0
    assert not test_file.exists()  # the project's own tests stay the only ones
