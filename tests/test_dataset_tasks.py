"""Tasks on user data (tasks/dataset.py): parsing a task table, reading CSV/JSONL/JSON/Parquet,
classification, multi-label (fixed and tuned thresholds) and perplexity scores, and training data."""

import csv
import json
import math
import random
import time

import pytest
import torch
import torch.nn.functional as F

from compresslab.errors import ConfigError, MethodUnsupported, TaskDataUnavailable
from compresslab.models.finetune import FinetuneConfig, classifier_batches
from compresslab.models.runner import TorchRunner
from compresslab.tasks import dataset, metrics
from compresslab.tasks.dataset import METRICS_BY_TYPE, TASK_TYPES, task_from_table
from tiny import tiny_llama, tokenizer

WHERE = "pyproject.toml [tool.compresslab.tasks.t]"


def write_csv(path, header, rows):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path.name


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path.name


def parse(tmp_path, **table):
    return task_from_table("t", table, WHERE, tmp_path)


class FakeTokenizer:
    """Maps each text to its row in a fixed logits table, so a test controls every prediction."""

    def __init__(self, texts):
        self.index = {text: i for i, text in enumerate(texts)}

    def __call__(self, texts, **kwargs):
        return {"row": torch.tensor([self.index[text] for text in texts])}


class FakeRunner:
    device = "cpu"

    def __init__(self, logits_by_text: dict[str, list[float]]):
        self.tokenizer = FakeTokenizer(list(logits_by_text))
        self.table = torch.tensor(list(logits_by_text.values()), dtype=torch.float)

    def logits(self, inputs, keep_last=None):
        return self.table[inputs["row"]]


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# --- classification -------------------------------------------------------------------------------

# pred [0,0,1,1,2,2] vs target [0,1,1,1,2,0]: accuracy 4/6; per-class F1 .5, .8, 2/3
TARGET = [0, 1, 1, 1, 2, 0]
PRED = [0, 0, 1, 1, 2, 2]
NAMES = ("negative", "neutral", "positive")


def class_runner():
    return FakeRunner({f"text {i}": F.one_hot(torch.tensor(p), 3).float().tolist() for i, p in enumerate(PRED)})


def test_classification_from_csv_int_labels_matches_hand_computation(tmp_path):
    test = write_csv(tmp_path / "test.csv", ["text", "label"], [[f"text {i}", t] for i, t in enumerate(TARGET)])
    task = parse(tmp_path, type="classification", test=test)
    assert task.kind == "classification" and task.metrics == ("accuracy", "macro_f1") and task.max_length == 128
    task.check_available()
    result = task.evaluate(class_runner())
    assert result.metrics["accuracy"] == pytest.approx(4 / 6)
    assert result.metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert result.details["n_test"] == 6 and result.details["majority_class_accuracy"] == pytest.approx(0.5)
    assert result.reference_logits.shape == (6, 3)


def test_classification_named_labels_follow_label_names_order(tmp_path):
    rows = [[f"text {i}", NAMES[t]] for i, t in enumerate(TARGET)]
    test = write_jsonl(tmp_path / "test.jsonl", [{"tweet": text, "sentiment": name} for text, name in rows])
    table = dict(type="classification", test=test, text="tweet", label="sentiment", metrics=["accuracy"])
    task = parse(tmp_path, **table, label_names=list(NAMES))
    result = task.evaluate(class_runner())
    assert result.metrics == {"accuracy": pytest.approx(4 / 6)}
    shares = {"negative": 2 / 6, "neutral": 2 / 6, "positive": 2 / 6}  # rounded to 4 places
    assert result.details["predicted_labels"] == pytest.approx(shares, abs=1e-4)
    # another output order is another model head: targets become [2,1,1,1,0,2] against PRED [0,0,1,1,2,2]
    reordered = parse(tmp_path, **table, label_names=["positive", "neutral", "negative"])
    assert reordered.evaluate(class_runner()).metrics["accuracy"] == pytest.approx(3 / 6)


def test_classification_checks_the_model_head_against_label_names(tmp_path):
    test = write_csv(tmp_path / "test.csv", ["text", "label"], [[f"text {i}", t] for i, t in enumerate(TARGET)])
    task = parse(tmp_path, type="classification", test=test, label_names=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="outputs 3 logits, but label_names lists 4"):
        task.evaluate(class_runner())


def test_a_json_list_file_reads_like_json_lines(tmp_path):
    records = [{"text": f"text {i}", "label": t} for i, t in enumerate(TARGET)]
    (tmp_path / "test.json").write_text(json.dumps(records, indent=1))
    write_jsonl(tmp_path / "lines.json", records)
    scores = [parse(tmp_path, type="classification", test=name).evaluate(class_runner()).metrics
              for name in ("test.json", "lines.json")]
    assert scores[0] == scores[1] and scores[0]["accuracy"] == pytest.approx(4 / 6)


# --- multi-label ----------------------------------------------------------------------------------

EMOTIONS = ["anger", "joy", "sadness"]
GOLD = [{"anger", "joy"}, set(), {"sadness"}, {"joy"}]
PREDICTED = [{"anger"}, set(), {"joy", "sadness"}, set()]
# Jaccard per sample .5, 1 (both empty), .5, 0. Per label: anger tp1 -> F1 1; joy tp0 fp1 fn2 -> 0;
# sadness tp1 -> 1. Micro: tp2 fp1 fn2 -> 4/7.
EXPECTED = {"jaccard": 0.5, "macro_f1": 2 / 3, "micro_f1": 4 / 7}


def multilabel_runner(predicted=PREDICTED):
    return FakeRunner({f"tweet {i}": [2.0 if name in chosen else -2.0 for name in EMOTIONS]
                       for i, chosen in enumerate(predicted)})


def emotion_files(tmp_path):
    jsonl = write_jsonl(tmp_path / "test.jsonl", [{"text": f"tweet {i}", "emotions": sorted(gold)}
                                                  for i, gold in enumerate(GOLD)])
    columns = write_csv(tmp_path / "test.csv", ["ID", "Tweet", *EMOTIONS],
                        [[i, f"tweet {i}", *(int(name in gold) for name in EMOTIONS)] for i, gold in enumerate(GOLD)])
    return (dict(type="multilabel", test=jsonl, labels="emotions", label_names=EMOTIONS),
            dict(type="multilabel", test=columns, text="Tweet", label_columns=EMOTIONS))


@pytest.mark.parametrize("layout", ["labels list", "label columns"])
def test_multilabel_scores_match_hand_computation(tmp_path, layout):
    table = emotion_files(tmp_path)[layout == "label columns"]
    task = parse(tmp_path, **table)
    assert task.kind == "classification" and task.label_names == tuple(EMOTIONS)
    result = task.evaluate(multilabel_runner())
    assert result.metrics == pytest.approx(EXPECTED)
    assert result.details["threshold"] == 0.5 and result.details["threshold_tuned"] is False
    assert result.details["label_frequencies"] == pytest.approx({"anger": 0.25, "joy": 0.5, "sadness": 0.25})


def test_multilabel_from_parquet(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet

    table = pyarrow.table({"text": [f"tweet {i}" for i in range(4)], "labels": [sorted(g) for g in GOLD]})
    pyarrow.parquet.write_table(table, tmp_path / "test.parquet")
    task = parse(tmp_path, type="multilabel", test="test.parquet", label_names=EMOTIONS)
    assert task.evaluate(multilabel_runner()).metrics == pytest.approx(EXPECTED)


def test_a_constant_multilabel_predictor_scores_low(tmp_path):
    task = parse(tmp_path, **emotion_files(tmp_path)[0])
    nothing = task.evaluate(FakeRunner({f"tweet {i}": [0.0] * 3 for i in range(4)}))  # sigmoid 0.5, not above
    assert nothing.metrics == pytest.approx({"micro_f1": 0.0, "macro_f1": 0.0, "jaccard": 0.25})  # the empty one
    everything = task.evaluate(multilabel_runner([set(EMOTIONS)] * 4)).metrics
    assert everything["jaccard"] < 0.4 and everything["micro_f1"] < 0.6


def test_csv_label_strings_split_on_the_separator(tmp_path):
    test = write_csv(tmp_path / "test.csv", ["text", "labels"],
                     [[f"tweet {i}", " | ".join(sorted(gold))] for i, gold in enumerate(GOLD)])
    task = parse(tmp_path, type="multilabel", test=test, label_names=EMOTIONS, label_separator="|")
    assert [e.label for e in task.examples("test")] == [(1.0, 1.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0),
                                                        (0.0, 1.0, 0.0)]
    assert task.evaluate(multilabel_runner()).metrics == pytest.approx(EXPECTED)


def tuning_files(tmp_path):
    """One label. On validation only 0.70 of the grid separates the positives (p .72, .80) from the
    negatives (.62, .68); on test the positives (.55, .60) sit below it, where test alone would put it."""
    validation = {"v pos 1": 0.72, "v pos 2": 0.80, "v neg 1": 0.62, "v neg 2": 0.68}
    test = {"t pos 1": 0.55, "t pos 2": 0.60, "t neg 1": 0.30, "t neg 2": 0.40}
    for name, probs in (("validation", validation), ("test", test)):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"text": text, "labels": ["joy"] if " pos " in text else []}
                                                 for text in probs])
    runner = FakeRunner({text: [logit(p)] for text, p in {**validation, **test}.items()})
    return runner, test


def test_threshold_is_tuned_on_validation_not_test(tmp_path):
    runner, test_probs = tuning_files(tmp_path)
    task = parse(tmp_path, type="multilabel", test="test.jsonl", validation="validation.jsonl", label_names=["joy"],
                 threshold="tune")
    result = task.evaluate(runner)
    assert result.details["threshold"] == pytest.approx(0.7) and result.details["threshold_tuned"] is True
    assert result.details["validation_micro_f1"] == pytest.approx(1.0) and result.details["n_validation"] == 4
    assert result.metrics["micro_f1"] == 0.0  # the honest outcome: nothing on test is above 0.7
    target = torch.tensor([[" pos " in text] for text in test_probs])
    best_on_test, _ = dataset.tune_threshold(torch.tensor([[p] for p in test_probs.values()]), target)
    assert best_on_test < 0.6  # what tuning on test would have picked


def test_threshold_tune_needs_a_validation_split(tmp_path):
    tuning_files(tmp_path)
    with pytest.raises(ConfigError, match=r"threshold: \"tune\" needs a validation split"):
        parse(tmp_path, type="multilabel", test="test.jsonl", label_names=["joy"], threshold="tune")


def test_jaccard_accuracy_counts_both_empty_as_one():
    pred = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 1], [0, 0, 0]])
    gold = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0]])
    assert metrics.jaccard_accuracy(pred, gold) == pytest.approx((0.5 + 1 + 0.5 + 0) / 4)
    assert metrics.jaccard_accuracy(torch.zeros(2, 3), torch.zeros(2, 3)) == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        metrics.jaccard_accuracy(pred, gold[:2])
    assert metrics.METRICS["jaccard"].higher_is_better and metrics.METRICS["jaccard"].fraction


def test_every_metric_a_task_type_offers_is_in_the_table():
    assert set(METRICS_BY_TYPE) == set(TASK_TYPES)
    for names in METRICS_BY_TYPE.values():
        assert all(name in metrics.METRICS for name in names)
    assert set(dataset.multilabel_scores(torch.eye(2), torch.eye(2))) == set(METRICS_BY_TYPE["multilabel"])


# --- perplexity -----------------------------------------------------------------------------------

def test_perplexity_on_a_tiny_llama(tmp_path):
    rng = random.Random(0)
    lines = [" ".join(rng.choice(["the", "movie", "was", "good", "bad", "and", "it"]) for _ in range(12))
             for _ in range(40)]
    write_jsonl(tmp_path / "held-out.jsonl", [{"body": line} for line in lines])
    task = parse(tmp_path, type="perplexity", test="held-out.jsonl", text="body", max_length=16, max_windows=5)
    assert task.kind == "lm" and task.metrics == ("perplexity",)
    runner = TorchRunner(tiny_llama(train_steps=5), tokenizer(), "cpu", "causal-lm")
    result = task.evaluate(runner)
    assert 1 < result.metrics["perplexity"] < math.inf
    assert result.details["n_windows"] == 5 and result.details["scored_tokens"] == 5 * 15
    assert task.latency_inputs(tokenizer(), seq_len=8, batch_size=2)["input_ids"].shape == (2, 8)
    with pytest.raises(MethodUnsupported, match="add train = "):
        task.calibration_texts(4)


# --- training data --------------------------------------------------------------------------------

def test_without_a_train_split_training_data_is_unsupported(tmp_path):
    task = parse(tmp_path, **emotion_files(tmp_path)[0])
    for call in (task.training_examples, task.calibration_texts):
        with pytest.raises(MethodUnsupported, match=r"task t has no train split.*add train = "):
            call(8)


def test_multilabel_training_examples_train_a_bce_head(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    records = [{"text": f"tweet {i} " + " ".join(sorted(gold)), "emotions": sorted(gold)}
               for i, gold in enumerate(GOLD * 10)]
    write_jsonl(tmp_path / "train.jsonl", records)
    table = emotion_files(tmp_path)[0]
    task = parse(tmp_path, **table, train="train.jsonl")
    examples = task.training_examples(16)
    assert len(examples) == 16 and all(len(e.label) == 3 and set(e.label) <= {0.0, 1.0} for e in examples)
    assert [e.text for e in examples] != [r["text"] for r in records[:16]]  # shuffled, seeded
    assert task.training_examples(16) == examples and task.calibration_texts(3) == [e.text for e in examples[:3]]
    batch = next(classifier_batches(tokenizer(), examples, FinetuneConfig(batch_size=8), random.Random(0)))
    assert batch["labels"].dtype == torch.float and batch["labels"].shape == (8, 3)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer().vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=3, problem_type="multi_label_classification"))
    out = model(**batch)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, batch["labels"]))


def test_classifier_batches_refuse_fewer_examples_than_a_batch(tmp_path):
    table = dict(type="classification", test=write_csv(tmp_path / "t.csv", ["text", "label"], [["a", 0], ["b", 1]]))
    task = parse(tmp_path, **table, train="t.csv")
    with pytest.raises(ValueError, match="2 training examples, fewer than one batch of 8"):
        next(classifier_batches(tokenizer(), task.training_examples(100), FinetuneConfig(batch_size=8),
                                random.Random(0)))


def test_fingerprint_follows_the_data_and_settings(tmp_path):
    table = emotion_files(tmp_path)[0]
    first = parse(tmp_path, **table).fingerprint()
    assert parse(tmp_path, **table).fingerprint() == first
    assert parse(tmp_path, **table, threshold=0.4).fingerprint() != first
    assert parse(tmp_path, **table, max_length=32).fingerprint() != first
    time.sleep(0.01)  # a later mtime: the edited file is read again
    write_jsonl(tmp_path / "test.jsonl", [{"text": f"tweet {i}", "emotions": ["joy"]} for i in range(4)])
    assert parse(tmp_path, **table).fingerprint()["data"] != first["data"]


# --- `datasets` sources, offline ------------------------------------------------------------------

def test_a_datasets_source_is_checked_lazily(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    task = parse(tmp_path, type="classification", test={"dataset": "someone/absent"})
    assert task.test == dataset.HubSource("someone/absent", None, "test")
    with pytest.raises(TaskDataUnavailable, match="someone/absent split test is not available"):
        task.check_available()


def test_a_datasets_source_reads_its_columns(tmp_path, monkeypatch):
    import datasets

    data = datasets.Dataset.from_dict({"sentence": [f"text {i}" for i in range(6)], "label": TARGET})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append(args) or data)
    hub = {"dataset": "someone/present", "config": "small", "split": "test"}
    task = parse(tmp_path, type="classification", test=hub, text="sentence")
    assert task.evaluate(class_runner()).metrics["accuracy"] == pytest.approx(4 / 6)
    assert calls == [("someone/present", "small")]
    wrong = parse(tmp_path, type="classification", test=hub, text="text")
    with pytest.raises(ConfigError, match=r"text: no column 'text' in the test dataset .*valid: 'sentence', 'label'"):
        wrong.check_available()


# --- invalid tables: one line naming the key and the valid values ---------------------------------

def bad_config_files(tmp_path):
    write_csv(tmp_path / "test.csv", ["text", "label"], [["a", 0], ["b", 2]])
    write_csv(tmp_path / "named.csv", ["text", "label"], [["a", "negative"], ["b", "positive"]])
    write_csv(tmp_path / "ec.csv", ["Tweet", "anger", "joy"], [["a", 1, 0]])
    (tmp_path / "test.txt").write_text("text,label\na,0\n")


CLASSIFICATION = {"type": "classification", "test": "test.csv"}
MULTILABEL = {"type": "multilabel", "test": "ec.csv", "text": "Tweet", "label_columns": ["anger", "joy"]}
BAD_TABLES = [
    ({**CLASSIFICATION, "colour": "red"}, "colour", "not a key of a classification task", "label_names"),
    ({**CLASSIFICATION, "threshold": 0.5}, "threshold", "a key of multilabel tasks", "label_names"),
    ({**CLASSIFICATION, "type": "regression"}, "type", "unknown type 'regression'", "classification, multilabel"),
    ({"test": "test.csv"}, "type", "missing", "perplexity"),
    ({"type": "classification"}, "test", "missing", ".csv"),
    ({**CLASSIFICATION, "metrics": ["bleu"]}, "metrics", "unknown metric 'bleu'", "accuracy, macro_f1"),
    ({**CLASSIFICATION, "metrics": ["jaccard"]}, "metrics", "'jaccard' is a metric of multilabel", "accuracy"),
    ({**CLASSIFICATION, "metrics": []}, "metrics", "not a list", "accuracy, macro_f1"),
    ({**CLASSIFICATION, "test": "absent.csv"}, "test", "file absent.csv does not exist", ".parquet"),
    ({**CLASSIFICATION, "test": "test.txt"}, "test", "unsupported file type '.txt'", ".csv, .jsonl, .json"),
    ({**CLASSIFICATION, "text": "tweet"}, "text", "no column 'tweet' in the test file test.csv", "'text', 'label'"),
    ({**CLASSIFICATION, "label": "y"}, "label", "no column 'y'", "'text', 'label'"),
    ({**CLASSIFICATION, "test": "named.csv"}, "label_names", "labels are names ('negative'", "model's output order"),
    ({**CLASSIFICATION, "test": "named.csv", "label_names": ["neg", "pos"]}, "label", "label 'negative'",
     "'neg', 'pos'"),
    ({**CLASSIFICATION, "label_names": ["a", "a"]}, "label_names", "not a list of distinct names", "distinct"),
    ({**CLASSIFICATION, "max_length": 0}, "max_length", "0 is not a positive integer", ">= 1"),
    ({**CLASSIFICATION, "test": {"dataset": "x/y", "revision": "main"}}, "test.revision", "not a key",
     "dataset, config, split"),
    ({**CLASSIFICATION, "train": {"split": "train"}}, "train.dataset", "missing", "dair-ai/emotion"),
    ({**MULTILABEL, "threshold": 1.5}, "threshold", "1.5 is not a threshold", "(0, 1)"),
    ({**MULTILABEL, "threshold": 0}, "threshold", "0 is not a threshold", "(0, 1)"),
    ({**MULTILABEL, "threshold": "auto"}, "threshold", "'auto' is not a threshold", "\"tune\""),
    ({**MULTILABEL, "label_columns": ["anger", "fear"]}, "label_columns", "no column 'fear'", "'Tweet', 'anger'"),
    ({**MULTILABEL, "labels": "emotions"}, "labels", "given with label_columns", "one of labels"),
    ({**MULTILABEL, "label_names": ["a"]}, "label_names", "1 names for 2 label_columns", "one name per"),
    ({"type": "multilabel", "test": "test.csv"}, "label_names", "missing", "model's output order"),
    ({"type": "perplexity", "test": "test.csv", "label": "label"}, "label", "not a key of a perplexity task",
     "max_windows"),
    ({"type": "perplexity", "test": "test.csv", "max_windows": -1}, "max_windows", "not a positive integer", ">= 1"),
]


@pytest.mark.parametrize("table, key, problem, valid", BAD_TABLES, ids=[f"{i}-{row[1]}" for i, row in
                                                                        enumerate(BAD_TABLES)])
def test_an_invalid_table_fails_with_one_line_naming_key_and_valid_values(tmp_path, table, key, problem, valid):
    bad_config_files(tmp_path)
    with pytest.raises(ConfigError) as err:
        parse(tmp_path, **table)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{WHERE} {key}: ")
    assert problem in message and valid in message.split("; valid: ", 1)[1]


def test_a_bad_label_further_down_fails_at_load_naming_the_record(tmp_path):
    test = write_csv(tmp_path / "test.csv", ["text", "label"], [["a", "neg"], ["b", "pos"], ["c", "postive"]])
    task = parse(tmp_path, type="classification", test=test, label_names=["neg", "pos"])  # record 1 is fine
    with pytest.raises(ConfigError, match=r"label: record 3 of test.csv has label 'postive'; valid: 'neg', 'pos'"):
        task.check_available()
    write_jsonl(tmp_path / "ml.jsonl", [{"text": "a", "labels": ["joy"]}, {"text": "b", "labels": ["fear"]}])
    task = parse(tmp_path, type="multilabel", test="ml.jsonl", label_names=["joy", "anger"])
    with pytest.raises(ConfigError, match=r"labels: record 2 of ml.jsonl has label 'fear', not in label_names"):
        task.check_available()


def test_a_parquet_source_without_pyarrow_is_a_config_error(tmp_path, monkeypatch):
    (tmp_path / "test.parquet").write_bytes(b"PAR1")
    monkeypatch.setattr(dataset, "_pyarrow_parquet", lambda: None)
    with pytest.raises(ConfigError, match=r"test: reading test.parquet needs pyarrow.*valid: pip install pyarrow"):
        parse(tmp_path, type="classification", test="test.parquet")


def test_multilabel_fidelity_compares_per_label_decisions():
    """The reference logits of a multi-label task make the fidelity tracker compare each label's
    sigmoid decision: flipping one label of one text out of 2 x 3 keeps 5/6 of the decisions."""
    from compresslab.tasks.dataset import label_pairs
    from compresslab.trackers.fidelity import compare_logits

    base = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, 4.0]])
    flipped = base.clone()
    flipped[0, 1] = 1.0  # label 1 of text 0: no -> yes
    same = compare_logits(label_pairs(base), label_pairs(base))
    assert same.top1_agreement == 1.0 and same.kl_div == pytest.approx(0.0, abs=1e-7)
    changed = compare_logits(label_pairs(base), label_pairs(flipped))
    assert changed.top1_agreement == pytest.approx(5 / 6) and changed.kl_div > 0
    assert torch.allclose(label_pairs(base).softmax(-1)[..., 1], torch.sigmoid(base))
