"""``compresslab init SOURCE``: a commented starter compresslab.toml for a user's own checkpoint.

The starter must run as written as far as it can: the model table points at the checkpoint, its
kind comes from the checkpoint's own config.json (so the benchmark loads it the way it was
trained), a classifier's label names come from its id2label (the output order the metrics need),
and a causal LM is judged on a built-in task on embedded data, so its first run needs no data.
Every line a user may edit says what it is, because this file is where they learn the schema.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

KINDS = ("classifier", "multilabel-classifier", "causal-lm")
TASK_TYPE = {"classifier": "classification", "multilabel-classifier": "multilabel", "causal-lm": "perplexity"}
METRICS = {"classification": ["accuracy", "macro_f1"], "multilabel": ["micro_f1", "macro_f1", "jaccard"]}
LATENCY_SEQ_LEN = {"classifier": 64, "multilabel-classifier": 64, "causal-lm": 128}
BUILTIN_LM_TASK = "wiki-perplexity"  # perplexity on the embedded Wikipedia text: no user data needed
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # what project.py accepts (its ID_PATTERN)
BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")  # a TOML key that needs no quotes
GENERIC_LABEL = re.compile(r"^LABEL_\d+$")  # transformers' placeholder names when none were given
COMMENT_COLUMN = 44
LINE_LIMIT = 120
NEXT_STEP = "next: {data}run `pytest` in {where} (README: Benchmark your own model)"
ADD_DATA = "put the test data where the task's comments say, then "
# The test a project needs for its matrix: what compresslab's own benchmarks/test_compression.py is.
TEST_FILE = "test_compresslab.py"
TEST_TEXT = '''"""Every case of compresslab.toml's [matrix]: built and cached, evaluated beside this run's fp32,
timed by pytest-benchmark and held to the floors. `pytest -k "<model> and int8"` runs a slice."""


def test_matrix(compressed, benchmark):
    compressed.time(benchmark)
    compressed.check_floors()
'''


class InitError(ValueError):
    """SOURCE, --kind, --id or --out cannot make a starter; the CLI prints the message as one line (exit 2)."""


@dataclass(frozen=True)
class Checkpoint:
    """What init learned about SOURCE: where it is (one TOML line) and the config.json it read, if any."""

    source: str
    location: tuple[str, str, str]  # (key, value, comment) of the model table's path or hub line
    name: str  # the directory, file or repository name the model id defaults to
    config: dict | None  # None for a .gguf file or a hub id missing from the local cache
    is_gguf: bool = False

    def architectures(self) -> list[str]:
        return list((self.config or {}).get("architectures") or [])


@dataclass(frozen=True)
class Written:
    path: Path
    model_id: str
    kind: str
    detected_from: str
    task_id: str | None
    matrix: tuple[str, ...]
    label_names: tuple[str, ...]
    test_file: Path | None = None  # the starter test written beside it (None: one was there already)

    def summary(self) -> str:
        lines = [f"wrote {self.path}: model {self.model_id!r}, kind {self.kind} ({self.detected_from})"]
        if self.label_names:
            lines.append(f"  labels in output order: {', '.join(self.label_names)}")
        if self.task_id:
            lines.append(f"  task {self.task_id!r}: its test split is yours to add (see its comments)")
        else:
            lines.append(f"  task {BUILTIN_LM_TASK!r}: built in, on embedded Wikipedia text")
        lines.append(f"  matrix: the default tier's {len(self.matrix)} rows: {', '.join(self.matrix)}")
        if self.test_file:
            lines.append(f"wrote {self.test_file}: one test, `compressed` parametrized with the matrix")
        where = str(self.path.parent) if str(self.path.parent) not in ("", ".") else "this directory"
        lines.append(NEXT_STEP.format(data=ADD_DATA if self.task_id else "", where=where))
        return "\n".join(lines)


def inspect_source(source: str, out_dir: Path) -> Checkpoint:
    """A local checkpoint directory, a local .gguf file, or a hub id (read from the local cache only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise InitError(f"{source}: a directory without config.json; a checkpoint directory holds config.json "
                            "and the weights (save_pretrained's layout)")
        return Checkpoint(source, ("path", _relative(path, out_dir), "the checkpoint directory (config.json + "
                                   "weights), relative to this file"), _dir_name(path), _read_json(config_file))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InitError(f"{source}: no such .gguf file")
        return Checkpoint(source, ("path", _relative(path, out_dir), "the .gguf file, relative to this file"),
                          path.stem, None, is_gguf=True)
    if path.exists() or not HUB_ID.match(source):
        raise InitError(f"{source}: neither a checkpoint directory, a .gguf file nor a hub id (org/name)")
    return Checkpoint(source, ("hub", source, "the hub repository (revision below)"),
                      source.rsplit("/", 1)[-1], _cached_hub_config(source))


def _relative(path: Path, out_dir: Path) -> str:
    """The path as the config file will see it: relative to the file's directory, with forward slashes."""
    try:
        return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return path.resolve().as_posix()


def _dir_name(path: Path) -> str:
    return path.resolve().name


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InitError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise InitError(f"{path}: a JSON {type(value).__name__}, not an object")
    return value


def _cached_hub_config(repo_id: str) -> dict | None:
    """config.json of a hub model if the local Hugging Face cache has it; never the network."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision="main")
    return _read_json(Path(cached)) if isinstance(cached, str) else None


def detect_kind(checkpoint: Checkpoint) -> tuple[tuple[str, ...], str]:
    """(the kinds the checkpoint can be, the evidence); the first kind is the default.

    A classifier whose config.json does not say its problem type may be either kind of classifier
    (many multi-label models were trained with a custom loss and never recorded it).
    """
    if checkpoint.is_gguf:
        return ("causal-lm",), "a .gguf file"
    architectures = checkpoint.architectures()
    found = f"architectures {architectures} in config.json"
    if any(a.endswith("ForCausalLM") for a in architectures):
        return ("causal-lm",), found
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        problem = checkpoint.config.get("problem_type")
        if problem == "multi_label_classification":
            return ("multilabel-classifier",), f"{found}, problem_type {problem}"
        if problem == "single_label_classification":
            return ("classifier",), f"{found}, problem_type {problem}"
        if problem is None:
            return ("classifier", "multilabel-classifier"), found
        raise InitError(f"{checkpoint.source}: problem_type {problem!r} in config.json; valid kinds: "
                        f"{', '.join(KINDS)} (a classifier's problem_type is single_label_classification, "
                        "multi_label_classification or unset)")
    if architectures:
        raise InitError(f"{checkpoint.source}: cannot tell the kind from {found}; valid kinds: {', '.join(KINDS)} "
                        "(from *ForSequenceClassification or *ForCausalLM)")
    if checkpoint.config is not None:
        return (), "config.json names no architectures"
    return (), ("it is no local path, and as a hub id its config.json is not in the local Hugging Face cache "
                "(init downloads nothing)")


def resolve_kind(checkpoint: Checkpoint, given: str | None) -> tuple[str, str]:
    """(the kind, where it came from): the detected one; --kind only where detection leaves room."""
    possible, evidence = detect_kind(checkpoint)
    if not possible:
        if given is None:
            raise InitError(f"{checkpoint.source}: {evidence}, so the kind is unknown: pass --kind "
                            f"({' | '.join(KINDS)})")
        return given, "given with --kind"
    if given is None:
        return possible[0], f"detected from {evidence}"
    if given not in possible:
        raise InitError(f"--kind {given} contradicts the checkpoint: {evidence} make it {' or '.join(possible)}")
    return given, f"--kind, consistent with {evidence}"


def default_model_id(name: str) -> str:
    """The checkpoint's name as an id: lowercase, every character outside [a-z0-9.-] a dash."""
    model_id = re.sub(r"[^a-z0-9.-]", "-", name.lower()).strip("-.")
    return model_id or "model"


def label_names(config: dict | None) -> list[str]:
    """The model's output labels in index order, from config.json's id2label ({"0": "negative", ...})."""
    id2label = (config or {}).get("id2label") or {}
    try:
        return [str(name) for _, name in sorted(id2label.items(), key=lambda item: int(item[0]))]
    except (TypeError, ValueError):
        raise InitError(f"config.json id2label {id2label!r}: its keys must be output indices") from None


def init(source: str, out: Path, model_id: str | None = None, kind: str | None = None,
         force: bool = False) -> Written:
    """Write the starter for SOURCE to ``out``; refuse to replace an existing file without ``force``."""
    _check_out(out, force)
    checkpoint = inspect_source(source, out.parent)
    chosen_kind, evidence = resolve_kind(checkpoint, kind)
    model_id = model_id or default_model_id(checkpoint.name)
    if not MODEL_ID.match(model_id):
        raise InitError(f"--id {model_id!r}: an id is lowercase letters, digits, '.', '_' and '-', starting with a "
                        "letter or digit (it appears in test ids and -k expressions)")
    from compresslab.registry import DEFAULT_TIER  # seconds of imports: only once the arguments are known good

    matrix = DEFAULT_TIER["causal-lm" if chosen_kind == "causal-lm" else "classifier"]
    labels = label_names(checkpoint.config) if chosen_kind != "causal-lm" else []
    task_id = None if chosen_kind == "causal-lm" else f"{model_id}-eval"
    text = render(checkpoint, model_id, chosen_kind, task_id, labels, matrix, given_kind=kind is not None)
    out.write_text(text, encoding="utf-8")
    test_file = out.parent / TEST_FILE
    if not test_file.exists() and not any(out.parent.glob("test_*.py")) and not (out.parent / "tests").is_dir():
        test_file.write_text(TEST_TEXT, encoding="utf-8")  # the first run is one `pytest` away
    else:
        test_file = None  # the project has tests of its own: adding one is theirs to decide
    return Written(out, model_id, chosen_kind, evidence, task_id, matrix, tuple(labels), test_file)


def _check_out(out: Path, force: bool) -> None:
    if out.name == "pyproject.toml":
        raise InitError(f"--out {out}: init writes a compresslab.toml; to keep the settings in pyproject.toml, "
                        "move its tables under [tool.compresslab] yourself")
    if out.is_dir():
        raise InitError(f"--out {out}: a directory, not a file")
    if out.exists() and not force:
        raise InitError(f"{out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise InitError(f"--out {out}: no directory {out.parent}")


# ---------------------------------------------------------------------------- rendering


def render(checkpoint: Checkpoint, model_id: str, kind: str, task_id: str | None, labels: list[str],
           matrix: tuple[str, ...], given_kind: bool = False) -> str:
    """The whole starter: header, model, task (or the commented own-text example), matrix, floors."""
    evidence = "from --kind" if given_kind else "detected"
    parts = [_header(checkpoint), _model_table(checkpoint, model_id, kind, task_id, evidence)]
    if kind == "classifier":
        parts.append(_classification_task(task_id, labels))
    elif kind == "multilabel-classifier":
        parts.append(_multilabel_task(task_id, labels))
    else:
        parts.append(_own_text_example(model_id))
    parts += [_matrix_table(model_id, matrix), _floors_examples(model_id, kind)]
    return "\n".join(parts)


def _header(checkpoint: Checkpoint) -> str:
    return "\n".join([
        "# compresslab project configuration, started by `compresslab init` from the checkpoint below.",
        "# pytest finds it beside the tests (or its tables under [tool.compresslab] in pyproject.toml).",
        "# Paths are relative to this file; data files are csv, jsonl, json or parquet, or a hub dataset",
        '# ({ dataset = "org/name", config = "...", split = "test" }). `compresslab list` shows every method id.',
        "",
        '# floors = "floors.toml"   # optional: a floors file in compresslab\'s floors.toml vocabulary;',
        "#                          # or the [floors.*] tables at the end of this file (one or the other)",
        "",
    ])


def _model_table(checkpoint: Checkpoint, model_id: str, kind: str, task_id: str | None, evidence: str) -> str:
    key, value, comment = checkpoint.location
    rows = [(key, _toml(value), comment)]
    if key == "hub":
        rows.append(("revision", _toml("main"), "a branch, tag or commit of the hub repository"))
    tasks = [task_id] if task_id else [BUILTIN_LM_TASK]
    tasks_comment = ("tasks that judge the model: ids of the tables below or built-in ones" if task_id else
                     "built in: perplexity on embedded Wikipedia text, so the first run needs no data")
    rows += [
        ("kind", _toml(kind), f"{' | '.join(KINDS)} ({evidence})"),
        ("tasks", _toml(tasks), tasks_comment),
        ("dtype", _toml("float32"), "the dtype the baseline (the fp32 row) is loaded and measured in"),
        ("latency_seq_len", str(LATENCY_SEQ_LEN[kind]), "tokens in the timed input"),
        ("description", _toml(_description(checkpoint, kind)), "shown by `compresslab list` and in reports"),
    ]
    title = f"[models.{_key(model_id)}]"
    return _table(title, "the model's id: benchmark ids read <id>-<method>", rows)


def _description(checkpoint: Checkpoint, kind: str) -> str:
    what = checkpoint.architectures()[0] if checkpoint.architectures() else kind
    key, where, _ = checkpoint.location
    return f"{what} from {where if key == 'hub' else checkpoint.name}"


def _classification_task(task_id: str, labels: list[str]) -> str:
    named = bool(labels) and not all(GENERIC_LABEL.match(n) for n in labels)
    rows = [
        ("type", _toml("classification"), "classification | multilabel | perplexity"),
        ("test", _toml("data/test.csv"), "the held-out split metrics are measured on: columns text and label"),
        ("# test", '{ dataset = "org/name", config = "default", split = "test" }', "or a hub dataset"),
        ("# train", _toml("data/train.csv"), "optional: calibration/training data for methods that use task data"),
        ("text", _toml("text"), "the column holding the input text"),
        ("label", _toml("label"), "the column holding the label: a name from label_names or an output index"
                                  if named else "the column holding the label: the output index"),
    ]
    rows.append(_label_names_row(labels, named))
    rows += [
        ("metrics", _toml(METRICS["classification"]), "any of accuracy, macro_f1, micro_f1"),
        ("max_length", "64", "tokens per input; longer texts are truncated"),
    ]
    return _table(f"[tasks.{_key(task_id)}]", "a task on your data; the model's tasks list names it", rows)


def _label_names_row(labels: list[str], named: bool) -> tuple[str, str, str]:
    if named:
        return ("label_names", _toml(labels), "the model's output order, from config.json id2label")
    example = labels or ["negative", "positive"]
    why = "config.json's names are placeholders" if labels else "the checkpoint's id2label is unknown here"
    return ("# label_names", _toml(example), f"the output order, if labels are names ({why})")


def _multilabel_task(task_id: str, labels: list[str]) -> str:
    rows = [
        ("type", _toml("multilabel"), "classification | multilabel | perplexity"),
        ("test", _toml("data/test.jsonl"), 'held-out split, lines like {"text": "...", "labels": ["a", "b"]}'),
        ("validation", _toml("data/validation.jsonl"), "tunes the decision threshold (threshold = \"tune\")"),
        ("# train", _toml("data/train.jsonl"), "optional: calibration/training data for methods that use task data"),
        ("text", _toml("text"), "the column holding the input text"),
        ("labels", _toml("labels"), "a list column of label names (in CSV one \";\"-separated string)"),
        ("# label_columns", _toml(labels[:2] or ["anger", "joy"]), "instead of labels: one 0/1 column per label"),
        _label_names_row(labels, bool(labels) and not all(GENERIC_LABEL.match(n) for n in labels)),
        ("threshold", _toml("tune"), "a probability such as 0.5, or \"tune\": the best one on validation"),
        ("metrics", _toml(METRICS["multilabel"]), "any of micro_f1, macro_f1, jaccard"),
        ("max_length", "64", "tokens per input; longer texts are truncated"),
    ]
    return _table(f"[tasks.{_key(task_id)}]", "a task on your data; the model's tasks list names it", rows)


def _own_text_example(model_id: str) -> str:
    task_id = f"{model_id}-text"
    rows = [
        ("type", _toml("perplexity"), "classification | multilabel | perplexity"),
        ("test", _toml("data/test.jsonl"), 'held-out text, lines like {"text": "..."}'),
        ("train", _toml("data/train.jsonl"), "optional: calibration text for methods that use it (GPTQ, AWQ, ...)"),
        ("text", _toml("text"), "the column holding the text"),
        ("metrics", _toml(["perplexity"]), "the one metric of a perplexity task"),
        ("max_length", "256", "tokens per scored window"),
    ]
    table = _table(f"[tasks.{_key(task_id)}]", None, rows).splitlines()
    return "\n".join([
        f"# Perplexity on your own text: uncomment this table, and in the model's tasks replace {BUILTIN_LM_TASK!r}",
        f"# with {task_id!r} (a model has one perplexity task).",
        *("# " + line for line in table if line),
        "",
    ])


def _matrix_table(model_id: str, matrix: tuple[str, ...]) -> str:
    lines = ["[matrix]",
             "# each model's rows: registered method ids and '+' chains of them (`compresslab list`); these are",
             "# compresslab's default tier for this kind of model: drop the slow ones, add others"]
    head = f"{_key(model_id)} = ["
    lines += [head] + [f"    {_toml(chain)}," for chain in matrix] + ["]", ""]
    return "\n".join(lines)


def _floors_examples(model_id: str, kind: str) -> str:
    metric = "perplexity" if kind == "causal-lm" else METRICS[TASK_TYPE[kind]][0]
    if kind == "causal-lm":
        family = ["# [floors.family.int8]", f"# max_increase = {{ {metric} = 0.05 }}"
                  "   # int8 methods raise the fp32 row's perplexity by at most 5%"]
        model = ["# [floors.model." + _key(model_id) + "]", f"# max = {{ {metric} = 30.0 }}"
                 "               # an absolute ceiling for every case of this model"]
    else:
        family = ["# [floors.family.int8]", f"# min_recovery = {{ {metric} = 0.99 }}"
                  "   # int8 methods keep at least 99% of the fp32 row's score"]
        model = ["# [floors.model." + _key(model_id) + "]", f"# min = {{ {metric} = 0.70 }}"
                 "               # an absolute minimum for every case of this model"]
    return "\n".join([
        "# Floors: override compresslab's defaults (recovery against this run's fp32 row, absolute bounds).",
        "# Uncomment and edit; the vocabulary (family / method / model / override) is compresslab's floors.toml.",
        *family, *model, ""])


def _table(title: str, title_comment: str | None, rows: list[tuple[str, str, str]]) -> str:
    """A TOML table whose lines carry their comments, aligned, or on the line above when too long."""
    lines = [_commented(title, title_comment) if title_comment else title]
    for key, value, comment in rows:
        lines.extend(_commented_lines(f"{key} = {value}", comment))
    return "\n".join(lines + [""])


def _commented(code: str, comment: str) -> str:
    return f"{code:<{COMMENT_COLUMN}}# {comment}" if len(code) < COMMENT_COLUMN else f"{code}  # {comment}"


def _commented_lines(code: str, comment: str) -> list[str]:
    line = _commented(code, comment)
    if len(line) <= LINE_LIMIT:
        return [line]
    return [f"# {part}" for part in _wrap(comment)] + [code]


def _wrap(text: str, width: int = LINE_LIMIT - 2) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def _key(name: str) -> str:
    return name if BARE_KEY.match(name) else _toml(name)


def _toml(value) -> str:
    """A TOML string or array of strings: JSON's escapes are TOML's basic-string escapes."""
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)
