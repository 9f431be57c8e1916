"""Tasks on a user's own data, one table each in their compresslab config.

The schema of one task table (relative paths resolve against the directory of the config file)::

    [tool.compresslab.tasks.sentiment]
    type = "classification"            # classification | multilabel | perplexity (required)
    test = "data/sentiment-test.csv"   # the held-out split the metrics are measured on (required)
    train = "data/sentiment-train.csv" # optional: calibration texts and labelled training examples for
                                       # methods that use task data (GPTQ calibration, static int8,
                                       # distillation, recovery fine-tunes); without it they skip, saying so
    # a split is a .csv, .jsonl, .json (JSON lines or a list of objects) or .parquet file, or a
    # `datasets` source: test = { dataset = "dair-ai/emotion", config = "split", split = "test" }
    # (config is optional; split defaults to the key's name: "test", "train", "validation")
    text = "text"                      # the text column (default "text")
    label = "label"                    # classification: the label column (default "label"), holding a
                                       # class index or a label name
    label_names = ["negative", "neutral", "positive"]  # the model's output order; required when labels
                                       # are names (a guessed order would silently mismatch the model's head)
    metrics = ["accuracy", "macro_f1"] # a subset of METRICS_BY_TYPE[type] (default: all of them)
    max_length = 64                    # tokens per text (default 128); perplexity: the window (default 512)
    # multilabel only:
    validation = "data/val.jsonl"      # the split threshold = "tune" tunes on (never the test split)
    labels = "labels"                  # a column holding a list of label names (a JSON/Parquet list; in CSV a
                                       # string split on label_separator, default ";"); default "labels"; OR:
    label_columns = ["anger", "joy"]   # one 0/1 column per label (the SemEval-2018 E-c layout); label_names
                                       # then defaults to these (if given, it renames them, in the same order)
    label_separator = ";"              # splits a CSV labels string
    threshold = 0.5                    # on sigmoid outputs (default 0.5; a label is predicted above it),
                                       # or "tune": the threshold in 0.05..0.95 (step 0.05) with the best
                                       # micro-F1 on the validation split, tuned for every evaluated model
    # perplexity only:
    max_windows = 64                   # at most this many windows of max_length tokens are scored

A perplexity task scores non-overlapping windows of ``max_length`` tokens of the test texts joined
by blank lines; its train split gives calibration text.

task_from_table checks every value before anything builds, and a local file's columns by reading
its header, first record or Parquet schema only. Every invalid value raises ConfigError, one line:
``<where> <key>: <what is wrong>; valid: <the valid values>``. Rows are read (and every label
checked) on first use, at the latest in check_available(); a `datasets` source cannot be checked
offline, so its columns are checked there too.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compresslab.errors import ConfigError, MethodUnsupported, TaskDataUnavailable
from compresslab.tasks import metrics
from compresslab.tasks.base import Runner, TaskResult
from compresslab.tasks.classification import classify, fixed_length_inputs, label_shares, score
from compresslab.tasks.lm import CALIBRATION_CHARS, score_windows
from compresslab.tasks.tweets import Example

TASK_TYPES = ("classification", "multilabel", "perplexity")
METRICS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "multilabel": ("micro_f1", "macro_f1", "jaccard"),
    "perplexity": ("perplexity",),
}
SPLITS = ("test", "train", "validation")
SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
_COMMON_KEYS = ("type", "test", "train", "text", "metrics", "max_length")
KEYS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "classification": _COMMON_KEYS + ("label", "label_names"),
    "multilabel": _COMMON_KEYS + ("validation", "labels", "label_columns", "label_names", "label_separator",
                                  "threshold"),
    "perplexity": _COMMON_KEYS + ("max_windows",),
}
HUB_KEYS = ("dataset", "config", "split")
DEFAULT_MAX_LENGTH = {"classification": 128, "multilabel": 128, "perplexity": 512}
DEFAULT_MAX_WINDOWS = 64
TUNE = "tune"
TUNE_GRID = tuple(round(0.05 * step, 2) for step in range(1, 20))  # 0.05 .. 0.95
# User files are often sorted (by label, by date): the train split is shuffled once, seeded, so
# the first n calibration texts or training examples are a fair sample of it.
TRAIN_ORDER_SEED = 20180
PERPLEXITY_BATCH = 4
# A prefix of the test texts this many characters per needed token long holds enough tokens for
# any tokenizer of natural text; only when it does not is the whole text tokenized.
CHARS_PER_TOKEN_BOUND = 16


@dataclass(frozen=True)
class FileSource:
    path: Path  # resolved against the config file's directory
    name: str  # as the user wrote it, for messages

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True)
class HubSource:
    dataset: str
    config: str | None
    split: str

    def describe(self) -> str:
        return f"{self.dataset}" + (f" ({self.config})" if self.config else "") + f" split {self.split}"


Source = FileSource | HubSource


# --- reading rows ---------------------------------------------------------------------------------

def _pyarrow_parquet():
    try:
        import pyarrow.parquet
    except ImportError:
        return None
    return pyarrow.parquet


def _peek(path: Path) -> tuple[tuple[str, ...], dict | None]:
    """A file's columns and first record, reading no more of it than that."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            first = next(reader, None)
            return tuple(reader.fieldnames or ()), first
    if suffix == ".parquet":
        parquet = _pyarrow_parquet().ParquetFile(path)
        batch = next(parquet.iter_batches(batch_size=1), None)
        rows = batch.to_pylist() if batch is not None else []
        return tuple(parquet.schema_arrow.names), (rows[0] if rows else None)
    first = _first_json_record(path)
    return (tuple(first) if first else ()), first


def _first_json_record(path: Path) -> dict | None:
    with path.open(encoding="utf-8-sig") as handle:
        for line in handle:
            if line.strip():
                break
        else:
            return None
        if not line.lstrip().startswith("["):  # JSON lines
            return _record(json.loads(line), 1)
        text = line + handle.read()
    start = text.index("[") + 1
    while start < len(text) and text[start].isspace():
        start += 1
    if text.startswith("]", start):
        return None
    return _record(json.JSONDecoder().raw_decode(text, start)[0], 1)  # parses the first object only


def _record(value: Any, number: int) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"record {number} is {type(value).__name__}, not an object of column values")
    return value


def _read_file(path: Path, columns: tuple[str, ...]) -> tuple[dict, ...]:
    stat = path.stat()
    return _read_file_cached(path, stat.st_mtime_ns, stat.st_size, columns)


@functools.cache  # keyed on the file's mtime and size too: a file edited within one process is read again
def _read_file_cached(path: Path, mtime_ns: int, size: int, columns: tuple[str, ...]) -> tuple[dict, ...]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return tuple(_pyarrow_parquet().read_table(path, columns=list(columns)).to_pylist())
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    else:
        text = path.read_text(encoding="utf-8-sig")
        if text.lstrip().startswith("["):
            rows = [_record(value, n) for n, value in enumerate(json.loads(text), start=1)]
        else:
            rows = [_record(json.loads(line), n) for n, line in enumerate(text.splitlines(), start=1)
                    if line.strip()]
    return tuple({column: row.get(column) for column in columns} for row in rows)


_HUB_FAILURES: dict[HubSource, str] = {}  # one failed (possibly slow) attempt per source and process


@functools.cache
def _hub_split(source: HubSource):
    if source in _HUB_FAILURES:
        raise TaskDataUnavailable(_HUB_FAILURES[source])
    try:
        import datasets

        return datasets.load_dataset(source.dataset, source.config, split=source.split)
    except Exception as err:  # datasets raises many types for "not reachable / not found / not installed"
        _HUB_FAILURES[source] = (f"dataset {source.describe()} is not available here ({type(err).__name__}); "
                                 "point the task at a local file instead")
        raise TaskDataUnavailable(_HUB_FAILURES[source]) from err


@functools.cache
def _hub_rows(source: HubSource, columns: tuple[str, ...]) -> tuple[dict, ...]:
    return tuple(_hub_split(source).select_columns(list(columns)).to_list())


# --- values of one record -------------------------------------------------------------------------

def _as_index(value: Any) -> int | None:
    """A class index written as an int, an integral float or a string of digits; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


FLAGS = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "false": 0.0, "true": 1.0}


def _as_flag(value: Any) -> float | None:
    """0.0 or 1.0 from a 0/1 number, a bool or their text; None for anything else."""
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return float(value)
    if isinstance(value, str):
        return FLAGS.get(value.strip().lower())
    return None


def _quoted(values: Sequence[str]) -> str:
    return ", ".join(repr(value) for value in values) or "(none)"


def _sha256(rows: Sequence) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row.text, row.label] if isinstance(row, Example) else row).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# --- the task -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataTask:
    """A task on the user's data (see the module docstring for its table). Frozen and hashable:
    rows are read once per source, and the task is a cache key like every registered task."""

    id: str
    task_type: str
    test: Source
    metrics: tuple[str, ...]
    max_length: int
    train: Source | None = None
    validation: Source | None = None
    text: str = "text"
    label: str = "label"  # classification
    labels: str | None = None  # multilabel: a column of label lists
    label_columns: tuple[str, ...] = ()  # multilabel: one 0/1 column per label
    label_names: tuple[str, ...] = ()
    label_separator: str = ";"
    threshold: float | str = 0.5
    max_windows: int = DEFAULT_MAX_WINDOWS
    where: str = field(default="", compare=False)  # the config table, for messages about rows

    @property
    def kind(self) -> str:
        return "lm" if self.task_type == "perplexity" else "classification"

    def sources(self) -> dict[str, Source]:
        return {role: source for role in SPLITS if (source := getattr(self, role)) is not None}

    def columns(self) -> dict[str, tuple[str, ...]]:
        """The columns the task reads, by the key that names them."""
        named: dict[str, tuple[str, ...]] = {"text": (self.text,)}
        if self.task_type == "classification":
            named["label"] = (self.label,)
        elif self.task_type == "multilabel":
            named.update({"label_columns": self.label_columns} if self.label_columns else {"labels": (self.labels,)})
        return named

    # -- rows

    def _rows(self, role: str) -> tuple[dict, ...]:
        source = self.sources()[role]
        wanted = tuple(column for group in self.columns().values() for column in group)
        if isinstance(source, HubSource):
            check_columns(self.where, self.columns(), _hub_split(source).column_names, f"{role} dataset "
                          f"{source.describe()}")
            return _hub_rows(source, wanted)
        try:
            return _read_file(source.path, wanted)
        except FileNotFoundError as err:
            raise TaskDataUnavailable(f"task {self.id}: its {role} file {source.name} is gone") from err
        except (ValueError, UnicodeDecodeError) as err:  # json, csv and pyarrow parse errors are ValueErrors
            raise ConfigError(f"{self.where} {role}: {source.name} cannot be read ({err}); valid: "
                              "UTF-8 CSV with a header, JSON lines, a JSON list of objects, Parquet") from err

    def examples(self, role: str) -> tuple:
        """The split's records in file order: Examples (a class index, or one 0/1 per label), or
        the texts of a perplexity task."""
        source = self.sources()[role].describe()
        out = []
        for number, row in enumerate(self._rows(role), start=1):
            text = row[self.text]
            if not isinstance(text, str):
                raise ConfigError(f"{self.where} text: record {number} of {source} has {text!r} in column "
                                  f"{self.text!r}; valid: a string")
            if self.task_type == "perplexity":
                out.append(text)
            else:
                out.append(Example(text, self._label(row, f"record {number} of {source}")))
        if not out:
            raise ConfigError(f"{self.where} {role}: {source} has no records; valid: a split with records")
        return tuple(out)

    def _label(self, row: dict, at: str) -> int | tuple[float, ...]:
        if self.task_type == "classification":
            return class_index(row[self.label], self.label_names, at, self.where)
        if self.label_columns:
            return tuple(self._flag(row[column], column, at) for column in self.label_columns)
        return label_set(row[self.labels], self.label_names, self.label_separator, at, self.where)

    def _flag(self, value: Any, column: str, at: str) -> float:
        flag = _as_flag(value)
        if flag is None:
            raise ConfigError(f"{self.where} label_columns: {at} has {value!r} in column {column!r}; valid: 0 or 1")
        return flag

    def _train(self) -> tuple:
        if self.train is None:
            raise MethodUnsupported(f"task {self.id} has no train split to take calibration or training data from; "
                                    "add train = <a file or datasets source> to its table")
        rows = list(self.examples("train"))
        random.Random(TRAIN_ORDER_SEED).shuffle(rows)
        return tuple(rows)

    # -- the Task protocol

    def check_available(self) -> None:
        """Reads every split (cached) and checks every record: a bad label fails here, before builds."""
        for role in self.sources():
            self.examples(role)

    def fingerprint(self) -> dict[str, Any]:
        data = {}
        for role, source in self.sources().items():
            rows = self.examples(role)
            data[role] = {"records": len(rows), "sha256": _sha256(rows),
                          **({"dataset": source.describe()} if isinstance(source, HubSource) else {})}
        settings = {"label_names": list(self.label_names), "max_length": self.max_length}
        if self.task_type == "multilabel":
            settings["threshold"] = self.threshold
        if self.task_type == "perplexity":
            settings["max_windows"] = self.max_windows
        return {"task": self.id, "type": self.task_type, "data": data, "train_order_seed": TRAIN_ORDER_SEED,
                "columns": {key: list(value) for key, value in self.columns().items()}, **settings}

    def evaluate(self, runner: Runner) -> TaskResult:
        if self.task_type == "perplexity":
            return self._evaluate_perplexity(runner)
        test = self.examples("test")
        logits = classify(runner, [e.text for e in test], self.max_length)
        if self.task_type == "classification":
            return self._evaluate_classes(test, logits)
        return self._evaluate_multilabel(runner, test, logits)

    def latency_inputs(self, tokenizer, seq_len: int, batch_size: int = 1) -> dict[str, torch.Tensor]:
        if self.task_type != "perplexity":
            return fixed_length_inputs(tokenizer, [e.text for e in self.examples("test")], seq_len, batch_size)
        ids = self.windows(tokenizer).reshape(-1)
        need = batch_size * seq_len
        ids = ids.repeat(-(-need // len(ids)))[:need].view(batch_size, seq_len)  # tiled when the text is short
        return {"input_ids": ids.clone(), "attention_mask": torch.ones_like(ids)}

    def calibration_texts(self, n: int) -> list[str]:
        """The first n texts of the (shuffled) train split; a perplexity task's train text is cut
        into chunks of CALIBRATION_CHARS, like the Wikipedia calibration text."""
        train = self._train()
        if self.task_type != "perplexity":
            return [e.text for e in train[:n]]
        text = "\n\n".join(train)
        return [text[start : start + CALIBRATION_CHARS] for start in range(0, len(text), CALIBRATION_CHARS)][:n]

    def training_examples(self, n: int) -> list[Example]:
        if self.task_type == "perplexity":
            raise MethodUnsupported(f"task {self.id} is a perplexity task: it has no labelled examples")
        return list(self._train()[:n])

    # -- classification

    def _evaluate_classes(self, test: tuple[Example, ...], logits: torch.Tensor) -> TaskResult:
        n_classes = logits.shape[-1]
        names = self._output_names(n_classes)
        target = torch.tensor([e.label for e in test])
        if int(target.max()) >= n_classes:
            raise ValueError(f"task {self.id}: the test split has label {int(target.max())}, but the model "
                             f"outputs {n_classes} classes")
        scores = score(test, logits, n_classes)
        details = {"n_test": len(test), "majority_class_accuracy": max(label_shares(target, names).values()),
                   "predicted_labels": label_shares(logits.argmax(-1), names)}
        return TaskResult({name: scores[name] for name in self.metrics}, reference_logits=logits, details=details)

    def _output_names(self, width: int) -> tuple[str, ...]:
        if not self.label_names:
            return tuple(str(index) for index in range(width))
        if len(self.label_names) != width:
            raise ValueError(f"task {self.id}: the model outputs {width} logits, but label_names lists "
                             f"{len(self.label_names)} labels")
        return self.label_names

    # -- multilabel

    def _evaluate_multilabel(self, runner: Runner, test: tuple[Example, ...], logits: torch.Tensor) -> TaskResult:
        names = self._output_names(logits.shape[-1])
        target = torch.tensor([e.label for e in test]).bool()
        threshold, tuning = self._threshold(runner)
        pred = torch.sigmoid(logits) > threshold
        scores = multilabel_scores(pred, target)
        details = {"n_test": len(test), "threshold": threshold, "threshold_tuned": self.threshold == TUNE, **tuning,
                   "label_frequencies": dict(zip(names, target.float().mean(0).tolist())),
                   "predicted_label_frequencies": dict(zip(names, pred.float().mean(0).tolist()))}
        return TaskResult({name: scores[name] for name in self.metrics}, reference_logits=label_pairs(logits),
                          details=details)

    def _threshold(self, runner: Runner) -> tuple[float, dict[str, Any]]:
        """The fixed threshold, or the one tuned for this model on the validation split (never test)."""
        if self.threshold != TUNE:
            return float(self.threshold), {}
        validation = self.examples("validation")
        logits = classify(runner, [e.text for e in validation], self.max_length)
        self._output_names(logits.shape[-1])
        target = torch.tensor([e.label for e in validation]).bool()
        threshold, micro = tune_threshold(torch.sigmoid(logits), target)
        return threshold, {"validation_micro_f1": micro, "n_validation": len(validation)}

    # -- perplexity

    def windows(self, tokenizer) -> torch.Tensor:
        """Up to max_windows non-overlapping windows of max_length tokens of the joined test texts;
        a text shorter than one window is scored as one shorter window."""
        budget = self.max_windows * self.max_length
        ids = _joined_ids(tokenizer, self.examples("test"), budget)
        if len(ids) < 2:
            raise ValueError(f"task {self.id}: the test text has {len(ids)} tokens; perplexity needs at least 2")
        if len(ids) < self.max_length:
            return ids.view(1, -1)
        n_windows = min(self.max_windows, len(ids) // self.max_length)
        return ids[: n_windows * self.max_length].view(n_windows, self.max_length)

    def _evaluate_perplexity(self, runner: Runner) -> TaskResult:
        windows = self.windows(runner.tokenizer)
        result = score_windows(runner, windows, PERPLEXITY_BATCH)
        result.details.update({"n_windows": len(windows), "window": windows.shape[1],
                               "n_test": len(self.examples("test"))})
        return result


_JOINED_IDS: dict[tuple, torch.Tensor] = {}


def _joined_ids(tokenizer, texts: tuple[str, ...], budget: int) -> torch.Tensor:
    """The first ``budget`` token ids of the texts joined by blank lines, tokenized once per
    tokenizer; a prefix of the texts is enough, and much cheaper for a long test file."""
    key = (tokenizer.name_or_path, len(tokenizer), texts, budget)
    if key not in _JOINED_IDS:
        prefix, chars = [], 0
        for text in texts:
            if chars >= budget * CHARS_PER_TOKEN_BOUND:
                break
            prefix.append(text)
            chars += len(text) + 2
        ids = _tokenize_joined(tokenizer, prefix)
        if len(ids) < budget and len(prefix) < len(texts):
            ids = _tokenize_joined(tokenizer, texts)
        _JOINED_IDS[key] = ids[:budget]
    return _JOINED_IDS[key]


def _tokenize_joined(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    return tokenizer("\n\n".join(texts), return_tensors="pt", add_special_tokens=False)["input_ids"][0]


# --- labels and scores (module functions: the tests check them on values they control) ------------

def class_index(value: Any, names: tuple[str, ...], at: str, where: str) -> int:
    """A classification label as the model's output index: a name from ``names``, or an index."""
    if names and isinstance(value, str) and value in names:
        return names.index(value)
    index = _as_index(value)
    if index is None and not names:
        raise ConfigError(f"{where} label_names: labels are names ({value!r} in {at}) but no label_names is "
                          "given; valid: label_names = [every label, in the model's output order]")
    if index is None or index < 0 or (names and index >= len(names)):
        valid = _quoted(names) + f" or an index 0..{len(names) - 1}" if names else "an index >= 0"
        raise ConfigError(f"{where} label: {at} has label {value!r}; valid: {valid}")
    return index


def label_set(value: Any, names: tuple[str, ...], separator: str, at: str, where: str) -> tuple[float, ...]:
    """A multi-label set (a list, or a string split on ``separator``) as one 0.0/1.0 per name."""
    if value is None:
        items = []
    elif isinstance(value, str):
        items = [item.strip() for item in value.split(separator) if item.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"{where} labels: {at} has {value!r}; valid: a list of label names, or a string "
                          f"of them separated by {separator!r}")
    flags = [0.0] * len(names)
    for item in items:
        if item in names:
            flags[names.index(item)] = 1.0
            continue
        index = _as_index(item)
        if index is None or not 0 <= index < len(names):
            raise ConfigError(f"{where} labels: {at} has label {item!r}, not in label_names; valid: {_quoted(names)}")
        flags[index] = 1.0
    return tuple(flags)


def multilabel_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Every multilabel metric of ``[samples, labels]`` indicator matrices."""
    return {**metrics.multilabel_f1(pred, target), "jaccard": metrics.jaccard_accuracy(pred, target)}


def tune_threshold(probs: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """The TUNE_GRID threshold with the highest micro-F1 (the lowest such on ties), and that F1."""
    f1 = {threshold: metrics.multilabel_f1(probs > threshold, target)["micro_f1"] for threshold in TUNE_GRID}
    best = max(TUNE_GRID, key=f1.__getitem__)
    return best, f1[best]


def check_columns(where: str, named: dict[str, tuple[str, ...]], present: Sequence[str], what: str) -> None:
    for key, columns in named.items():
        for column in columns:
            if column not in present:
                raise ConfigError(f"{where} {key}: no column {column!r} in the {what}; valid: {_quoted(present)}")


# --- parsing a task table -------------------------------------------------------------------------

def task_from_table(task_id: str, table: dict, where: str, base_dir: Path) -> DataTask:
    """The task a config table declares, every value checked (see the module docstring)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: a task is a table of keys, got {table!r}; valid: type, test, ...")
    task_type = _task_type(table, where)
    _check_keys(table, task_type, where)
    if "test" not in table:
        raise ConfigError(f"{where} test: missing; valid: a {'/'.join(SUFFIXES)} file or "
                          "{ dataset = ..., split = ... }")
    sources = {role: _source(table[role], role, where, Path(base_dir)) for role in SPLITS if role in table}
    task = DataTask(id=task_id, task_type=task_type, metrics=_metrics(table, task_type, where),
                    max_length=_positive_int(table, "max_length", DEFAULT_MAX_LENGTH[task_type], where),
                    text=_string(table, "text", "text", where), where=where, **sources,
                    **_type_fields(table, task_type, where))
    _check_local_files(task)
    return task


def _task_type(table: dict, where: str) -> str:
    task_type = table.get("type")
    if task_type not in TASK_TYPES:
        problem = "missing" if task_type is None else f"unknown type {task_type!r}"
        raise ConfigError(f"{where} type: {problem}; valid: {', '.join(TASK_TYPES)}")
    return task_type


def _check_keys(table: dict, task_type: str, where: str) -> None:
    valid = KEYS_BY_TYPE[task_type]
    for key in table:
        if key not in valid:
            owners = [other for other, keys in KEYS_BY_TYPE.items() if key in keys]
            hint = f" (a key of {' and '.join(owners)} tasks)" if owners else ""
            raise ConfigError(f"{where} {key}: not a key of a {task_type} task{hint}; valid: {', '.join(valid)}")


def _source(value: Any, role: str, where: str, base_dir: Path) -> Source:
    if isinstance(value, dict):
        return _hub_source(value, role, where)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} {role}: {value!r} is not a file path or a dataset table; valid: a path or "
                          "{ dataset = ..., split = ... }")
    path = base_dir / value
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"{where} {role}: unsupported file type {path.suffix or '(none)'!r} of {value}; "
                          f"valid: {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ConfigError(f"{where} {role}: file {value} does not exist (looked for {path}); valid: an existing "
                          f"{'/'.join(SUFFIXES)} file, or {{ dataset = ..., split = ... }}")
    if path.suffix.lower() == ".parquet" and _pyarrow_parquet() is None:
        raise ConfigError(f"{where} {role}: reading {value} needs pyarrow, which is not installed; valid: "
                          "pip install pyarrow, or a .csv/.jsonl/.json file")
    return FileSource(path, value)


def _hub_source(value: dict, role: str, where: str) -> HubSource:
    for key in value:
        if key not in HUB_KEYS:
            raise ConfigError(f"{where} {role}.{key}: not a key of a dataset source; valid: {', '.join(HUB_KEYS)}")
    for key in HUB_KEYS:
        if key in value and (not isinstance(value[key], str) or not value[key]):
            raise ConfigError(f"{where} {role}.{key}: {value[key]!r} is not a name; valid: a non-empty string")
    if "dataset" not in value:
        raise ConfigError(f"{where} {role}.dataset: missing; valid: a `datasets` id or path, e.g. "
                          "\"dair-ai/emotion\"")
    return HubSource(value["dataset"], value.get("config"), value.get("split", role))


def _string(table: dict, key: str, default: str, where: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} {key}: {value!r} is not a name; valid: a non-empty string")
    return value


def _positive_int(table: dict, key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} {key}: {value!r} is not a positive integer; valid: an integer >= 1")
    return value


def _names(table: dict, key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if (not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value)
            or len(set(value)) != len(value)):
        raise ConfigError(f"{where} {key}: {value!r} is not a list of distinct names; valid: a non-empty list "
                          "of distinct strings")
    return tuple(value)


def _metrics(table: dict, task_type: str, where: str) -> tuple[str, ...]:
    valid = METRICS_BY_TYPE[task_type]
    chosen = table.get("metrics", list(valid))
    if not isinstance(chosen, list) or not chosen or len(set(map(str, chosen))) != len(chosen):
        raise ConfigError(f"{where} metrics: {chosen!r} is not a list of distinct metric names; "
                          f"valid: {', '.join(valid)}")
    for name in chosen:
        if name not in valid:
            owners = [other for other, names in METRICS_BY_TYPE.items() if name in names]
            problem = f"{name!r} is a metric of {' and '.join(owners)} tasks" if owners else f"unknown metric {name!r}"
            raise ConfigError(f"{where} metrics: {problem}; valid: {', '.join(valid)} (for a {task_type} task)")
    return tuple(chosen)


def _type_fields(table: dict, task_type: str, where: str) -> dict[str, Any]:
    names = _names(table, "label_names", where) if "label_names" in table else ()
    if task_type == "classification":
        return {"label": _string(table, "label", "label", where), "label_names": names}
    if task_type == "perplexity":
        return {"max_windows": _positive_int(table, "max_windows", DEFAULT_MAX_WINDOWS, where)}
    return _multilabel_fields(table, names, where)


def _multilabel_fields(table: dict, names: tuple[str, ...], where: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"threshold": _threshold_value(table, where),
                              "label_separator": _string(table, "label_separator", ";", where)}
    if "label_columns" in table:
        if "labels" in table:
            raise ConfigError(f"{where} labels: given with label_columns; valid: one of labels (a column of "
                              "label lists) or label_columns (one 0/1 column per label)")
        columns = _names(table, "label_columns", where)
        if names and len(names) != len(columns):
            raise ConfigError(f"{where} label_names: {len(names)} names for {len(columns)} label_columns; "
                              "valid: one name per label column, in the same order, or no label_names")
        return {**fields, "label_columns": columns, "label_names": names or columns}
    if not names:
        raise ConfigError(f"{where} label_names: missing; valid: label_names = [every label, in the model's "
                          "output order] (required with a labels column)")
    return {**fields, "labels": _string(table, "labels", "labels", where), "label_names": names}


def _threshold_value(table: dict, where: str) -> float | str:
    value = table.get("threshold", 0.5)
    if value == TUNE:
        if "validation" not in table:
            raise ConfigError(f"{where} threshold: \"tune\" needs a validation split to tune on; valid: a number "
                              "in (0, 1), or \"tune\" with validation = <a file or datasets source>")
        return TUNE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f"{where} threshold: {value!r} is not a threshold; valid: a number in (0, 1), or "
                          "\"tune\"")
    return float(value)


def _check_local_files(task: DataTask) -> None:
    """Each local file has the named columns, and a first record whose label makes sense."""
    for role, source in task.sources().items():
        if not isinstance(source, FileSource):
            continue  # a `datasets` source is checked in check_available: it may not be reachable offline
        try:
            present, first = _peek(source.path)
        except (ValueError, UnicodeDecodeError) as err:
            raise ConfigError(f"{task.where} {role}: {source.name} cannot be read ({err}); valid: UTF-8 CSV "
                              "with a header, JSON lines, a JSON list of objects, Parquet") from err
        check_columns(task.where, task.columns(), present, f"{role} file {source.name}")
        if first is None:
            raise ConfigError(f"{task.where} {role}: {source.name} has no records; valid: a file with records")
        if task.task_type == "classification":
            class_index(first[task.label], task.label_names, f"record 1 of {source.name}", task.where)


def label_pairs(logits: torch.Tensor) -> torch.Tensor:
    """Multi-label ``[texts, labels]`` logits as ``[texts, labels, 2]`` pairs ``(0, logit)``: a pair's
    softmax is the label's sigmoid, so the fidelity tracker (which compares softmax outputs) gives
    the share of per-label decisions at 0.5 that a compressed model keeps and the mean Bernoulli KL
    per label, instead of an argmax over labels that a multi-label model never takes."""
    return torch.stack([torch.zeros_like(logits), logits], dim=-1)
