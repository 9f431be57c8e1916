"""A project's own config: its models, tasks on its data, matrix and floors, end to end through the
plugin in a directory that is not compresslab's, and one named error for each kind of bad config."""

import csv
import json
import tomllib
from pathlib import Path

import pytest
# Import before pytester's in-process runs (see test_plugin.py): torchao registers its ops once.
import torchao.quantization  # noqa: F401

from compresslab import floors, project, registry
from compresslab.errors import ConfigError
from compresslab.models.checkpoint import GGUFCheckpoint, LocalCheckpoint
from tiny import synthetic_examples, tiny_bert_classifier, tokenizer

MODEL = """
[models.tiny-mine]
path = "checkpoints/tiny"
kind = "classifier"
tasks = ["keywords"]
latency_seq_len = 16
"""
TASK = """
[tasks.keywords]
type = "classification"
test = "data/test.csv"
train = "data/train.csv"
label = "sentiment"
label_names = ["negative", "positive"]
max_length = 32
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A user's fine-tuned checkpoint: a tiny keyword classifier saved with its tokenizer beside it."""
    path = tmp_path_factory.mktemp("user") / "tiny"
    tiny_bert_classifier().save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path


def write_csv(path: Path, examples) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "sentiment"])
        writer.writerows((e.text, ("negative", "positive")[e.label]) for e in examples)


@pytest.fixture
def project_dir(tmp_path, checkpoint) -> Path:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "tiny").symlink_to(checkpoint)
    write_csv(tmp_path / "data" / "test.csv", synthetic_examples(96, seed=999))
    write_csv(tmp_path / "data" / "train.csv", synthetic_examples(64, seed=3))
    (tmp_path / "compresslab.toml").write_text(MODEL + TASK)
    return tmp_path


def test_no_config_is_the_registry(tmp_path):
    assert project.find(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n[tool.ruff]\nline-length = 100\n")
    assert project.find(tmp_path) is None
    catalog = project.load_catalog(tmp_path)
    assert catalog.tiered and catalog.models is registry.MODELS and catalog.matrix == registry.FULL_MATRIX


def test_a_project_catalog_holds_its_models_tasks_and_default_matrix(project_dir):
    catalog = project.load_catalog(project_dir)
    spec = catalog.get_model("tiny-mine")
    assert spec.kind == "classifier" and spec.tasks == ("keywords",) and spec.latency_seq_len == 16
    assert isinstance(spec.source, LocalCheckpoint) and spec.source.path == (project_dir / "checkpoints/tiny").resolve()
    assert not catalog.tiered and catalog.source == "compresslab.toml"
    # no [matrix]: the project's model with its kind's default tier; the embedded models are not in it
    assert catalog.matrix == {"tiny-mine": registry.DEFAULT_TIER["classifier"]}
    assert set(registry.MODELS) < set(catalog.models)  # still benchmarkable by id


def test_pyproject_table_and_its_names_in_messages(project_dir):
    text = (project_dir / "compresslab.toml").read_text().replace("[models.", "[tool.compresslab.models.")
    (project_dir / "compresslab.toml").unlink()
    (project_dir / "pyproject.toml").write_text(text.replace("[tasks.", "[tool.compresslab.tasks.")
                                                + '[tool.compresslab.matrix]\ntiny-mine = ["fp32", "int9"]\n')
    with pytest.raises(ConfigError) as err:
        project.load_catalog(project_dir)
    assert str(err.value).startswith("pyproject.toml [tool.compresslab.matrix] tiny-mine: unknown method 'int9'")
    assert "valid: " in str(err.value) and "int8-dynamic" in str(err.value)
    (project_dir / "compresslab.toml").write_text("")
    with pytest.raises(ConfigError, match="both compresslab.toml and pyproject.toml"):
        project.find(project_dir)


def test_floors_layer_over_the_defaults(project_dir):
    (project_dir / "compresslab.toml").write_text(MODEL + TASK + """
[floors.family.int8]
min_recovery = { accuracy = 0.995 }
[floors.model.tiny-mine]
min = { accuracy = 0.9 }
""")
    catalog = project.load_catalog(project_dir)
    book = floors.load_layers(floors.DEFAULT_FLOORS, catalog.floors, catalog.floors_source, catalog.models,
                              catalog.methods)
    floor = book.floor_for("tiny-mine", "int8-dynamic", catalog.family_of())
    assert floor.min_recovery["accuracy"] == 0.995  # the project's bound
    assert floor.min_recovery["macro_f1"] == 0.98 and floor.max_size_ratio == 0.66  # the defaults' others
    assert floor.min == {"accuracy": 0.9}
    assert book.source == "compresslab/floors.toml (the defaults) + compresslab.toml [floors]"


BAD = [
    ("[model.x]\n", "compresslab.toml: unknown key(s) model; valid: models, tasks, matrix, floors"),
    (MODEL.replace('kind = "classifier"', 'kind = "regressor"') + TASK,
     "compresslab.toml [models.tiny-mine] kind: 'regressor' is not a kind of model; valid: classifier, "
     "multilabel-classifier, causal-lm"),
    (MODEL.replace('latency_seq_len = 16', 'seq_len = 16') + TASK,
     "compresslab.toml [models.tiny-mine]: unknown key(s) seq_len; valid: path, hub, revision, kind, tasks"),
    (MODEL.replace("checkpoints/tiny", "checkpoints/gone") + TASK,
     "compresslab.toml [models.tiny-mine] path: checkpoints/gone does not exist"),
    (MODEL.replace('path = "checkpoints/tiny"', 'path = "checkpoints/tiny"\nhub = "org/tiny"') + TASK,
     "compresslab.toml [models.tiny-mine]: give exactly one of path"),
    (MODEL.replace('path = "checkpoints/tiny"', 'hub = "tiny"') + TASK,
     "compresslab.toml [models.tiny-mine] hub: 'tiny' must be a Hugging Face id such as 'org/name'"),
    (MODEL.replace('path = "checkpoints/tiny"', 'path = "llm.gguf"') + TASK,
     "compresslab.toml [models.tiny-mine] path: a GGUF file holds a causal LM; kind is 'classifier'"),
    (MODEL + 'dtype = "bfloat16"\n' + TASK, "compresslab.toml [models.tiny-mine] dtype: 'bfloat16'; valid: float32"),
    (MODEL.replace('["keywords"]', '["keyword"]') + TASK,
     "compresslab.toml [models.tiny-mine] tasks: unknown task 'keyword'; valid: emotion, keywords, "),
    (MODEL.replace('["keywords"]', '["wiki-perplexity"]') + TASK,
     "compresslab.toml [models.tiny-mine] tasks: 'wiki-perplexity' is a lm task, which cannot judge a classifier"),
    (MODEL.replace('["keywords"]', '["keywords", "tweet-sentiment"]') + TASK,
     "compresslab.toml [models.tiny-mine] tasks: 'keywords' and 'tweet-sentiment' both measure accuracy"),
    (MODEL.replace("[models.tiny-mine]", "[models.Tiny_Mine]") + TASK,
     "compresslab.toml [models.Tiny_Mine]: id 'Tiny_Mine' must be lowercase letters"),
    (MODEL.replace("[models.tiny-mine]", "[models.smollm2-135m]") + TASK,
     "compresslab.toml [models.smollm2-135m]: 'smollm2-135m' is a built-in model; choose another id"),
    (MODEL + TASK.replace('label = "sentiment"', 'label = "stars"'),
     "compresslab.toml [tasks.keywords] label: no column 'stars' in the test file data/test.csv; "
     "valid: 'text', 'sentiment'"),
    (MODEL + TASK.replace("data/test.csv", "data/tests.csv"), "compresslab.toml [tasks.keywords] test: "),
    (MODEL + TASK.replace('max_length = 32', 'metrics = ["accuracy", "bleu"]'),
     "compresslab.toml [tasks.keywords] metrics: "),
    (MODEL + TASK + '[matrix]\ntiny-mine = ["fp32", "int8-dynamic+gptq-w4g12"]\n',
     "compresslab.toml [matrix] tiny-mine: unknown method 'gptq-w4g12' in chain 'int8-dynamic+gptq-w4g12'"),
    (MODEL + TASK + '[matrix]\ntiny-yours = ["fp32"]\n', "compresslab.toml [matrix] tiny-yours: unknown model"),
    (MODEL + TASK + '[matrix]\ntiny-mine = "fp32"\n', "compresslab.toml [matrix] tiny-mine: 'fp32' must be a "),
    (MODEL + TASK + 'floors = "project-floors.toml"\n', "compresslab.toml [tasks.keywords]"),  # a key of the table
    ('floors = "nope.toml"\n' + MODEL + TASK, "compresslab.toml floors: nope.toml does not exist"),
    (MODEL + TASK + '[floors]\nfamilies = 1\n', None),
    (MODEL + TASK + '[floors.model.tiny-mine]\nmin_recovery = { accuracy = 2.0 }\n', None),
    (MODEL + TASK + '[floors.override.tiny-mine.int8-dynamic]\nmin = { bleu = 30 }\n', None),
]


@pytest.mark.parametrize("text, expected", BAD)
def test_each_bad_config_is_one_named_error(project_dir, text, expected):
    (project_dir / "compresslab.toml").write_text(text)
    with pytest.raises((ConfigError, floors.FloorsError)) as err:
        catalog = project.load_catalog(project_dir)
        floors.load_layers(floors.DEFAULT_FLOORS, catalog.floors, catalog.floors_source, catalog.models,
                           catalog.methods)
    message = str(err.value)
    assert len(message.splitlines()) == 1
    if expected is None:  # a malformed floor: floors.py's message, attributed to the project's table
        assert message.startswith("compresslab.toml [floors]: ") and "valid: " in message or "ratio" in message
    else:
        assert message.startswith(expected), message


def test_a_gguf_model_is_a_causal_lm(project_dir):
    (project_dir / "llm.gguf").write_bytes(b"GGUF")
    (project_dir / "compresslab.toml").write_text(
        '[models.my-llm]\npath = "llm.gguf"\nkind = "causal-lm"\ntasks = ["wiki-perplexity"]\n')
    catalog = project.load_catalog(project_dir)
    spec = catalog.get_model("my-llm")
    assert isinstance(spec.source, GGUFCheckpoint) and spec.kind == "causal-lm" and spec.latency_seq_len == 128
    assert catalog.matrix == {"my-llm": registry.DEFAULT_TIER["causal-lm"]}


# --- through pytest, in the project's own directory ---------------------------------------------------------

OWN_TEST = """
import pytest


def test_every_case(compressed, benchmark):
    compressed.time(benchmark)
    compressed.check_floors()


@pytest.mark.compresslab(models="tiny-mine", methods=["int8-weight"])
def test_int8_only(compressed):
    compressed.check_floors()
    assert compressed.result.size_ratio < 1
"""


def copy_project(project_dir: Path, pytester) -> None:
    for path in project_dir.rglob("*"):
        if path.is_file() or path.is_symlink():
            target = pytester.path / path.relative_to(project_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve()) if path.is_symlink() else target.write_bytes(path.read_bytes())


def run(pytester, *args):
    return pytester.runpytest("-p", "no:cacheprovider", "--compresslab-rounds", "3", "--compresslab-warmup", "1",
                              "--compresslab-memory", "off", *args)


def test_a_project_benchmarks_its_own_model_with_its_own_test_file(project_dir, pytester):
    (project_dir / "compresslab.toml").write_text(MODEL + TASK + """
[matrix]
tiny-mine = ["fp32", "int8-weight"]

[floors.model.tiny-mine]
min = { accuracy = 0.8 }
max_size_ratio = 1.0  # tiny: its embedding, which int8-weight leaves in fp32, is most of its bytes
""")
    copy_project(project_dir, pytester)
    pytester.makepyfile(test_mine=OWN_TEST)
    result = run(pytester, "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_every_case?tiny-mine-fp32? PASSED*",
                                 "*test_every_case?tiny-mine-int8-weight? PASSED*",
                                 "*test_int8_only?tiny-mine-int8-weight? PASSED*"])
    sidecar = json.loads((pytester.path / ".compresslab" / "latest.json").read_text())
    records = {b["name"]: b for b in sidecar["benchmarks"]}
    case = records["test_every_case[tiny-mine-int8-weight]"]
    assert case["model"] == "tiny-mine" and case["chain"] == "int8-weight"
    assert case["extra_info"]["metrics"]["accuracy"] > 0.8 and case["extra_info"]["floors"]["min"] == {"accuracy": 0.8}

    # the project's floor is a promise: raise it past what the model can do and the same cases fail
    config = (pytester.path / "compresslab.toml")
    config.write_text(config.read_text().replace("min = { accuracy = 0.8 }", "min_recovery = { accuracy = 1.2 }"))
    failing = run(pytester, "-k", "every_case")
    failing.assert_outcomes(failed=2)
    failing.stdout.fnmatch_lines(["*tiny-mine-fp32 is below its floors (*compresslab.toml ?floors?):",
                                  "*accuracy 1 < floor 1.2 (120.0% of baseline 1)*"])


def test_a_bad_project_config_is_a_usage_error_before_anything_builds(project_dir, pytester):
    copy_project(project_dir, pytester)
    pytester.makefile(".toml", compresslab=MODEL.replace('kind = "classifier"', 'kind = "regressor"') + TASK)
    pytester.makepyfile(test_mine=OWN_TEST)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: compresslab.toml [models.tiny-mine] kind: 'regressor' is not a kind of model;"
                                 " valid: classifier, multilabel-classifier, causal-lm"])
    assert not (pytester.path / ".compresslab").exists()


def test_a_marker_naming_an_unknown_model_is_a_usage_error(pytester):
    pytester.makepyfile(test_mine="""
import pytest

@pytest.mark.compresslab(models="tiny-nowhere", methods=["int8-weight"])
def test_x(compressed):
    pass
""")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error: nothing runs
    result.stdout.fnmatch_lines(["*test_mine.py::test_x: @pytest.mark.compresslab: unknown model 'tiny-nowhere'; "
                                 "valid: *minilm-sentiment*"])


def test_the_config_parses_as_toml_the_user_wrote_it():
    """The schema example in project.py's docstring is itself a valid config (what users copy)."""
    doc = project.__doc__
    example = "\n".join(line[4:] for line in doc.splitlines() if line.startswith("    "))
    table = tomllib.loads(example)["tool"]["compresslab"]
    assert set(table) <= set(project.SECTIONS)


def test_a_hub_model_that_is_not_here_skips_with_one_line(project_dir, pytester, monkeypatch):
    """A project's hub id without the hub (or the local HF cache) is a skip that says what is missing,
    never a hang or a crash; the project's other cases still run."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without the network: answer at once
    copy_project(project_dir, pytester)
    (pytester.path / "compresslab.toml").write_text(MODEL + TASK + """
[models.tiny-hub]
hub = "compresslab-tests/not-a-model"
kind = "classifier"
tasks = ["keywords"]

[matrix]
tiny-mine = ["fp32"]
tiny-hub = ["fp32"]
""")
    pytester.makepyfile(test_mine=OWN_TEST.split("@pytest.mark")[0])
    result = run(pytester, "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*tiny-hub-fp32: compresslab-tests/not-a-model is not in the local Hugging Face "
                                 "cache and the hub is unreachable*"])
