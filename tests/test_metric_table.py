"""Single-sourced metadata: one metric table that floors, compare, the report and the Pareto plots
all read, and cache keys that name a device the same way for artifacts and evaluations."""

import re
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pytest
import torch

from compresslab import cases, compare, floors, pareto, registry, report, runs
from compresslab.floors import Floor, FloorsError
from compresslab.methods.base import StageContext
from compresslab.methods.dtype import DtypeCast
from compresslab.pipeline import Pipeline
from compresslab.tasks import metrics
from compresslab.results import CaseRecord, CaseResult
from compresslab.tasks.metrics import METRICS, Metric
from runfiles import edit, sidecar


def case(chain, latency_ms, size_mb, **values):
    """A timed, passing case of model "m" with the given metric values, as the report reads it."""
    return CaseRecord(f"test[m-{chain}]", "m", chain, "passed",
                      CaseResult(latency_p50_ms=latency_ms, size_bytes=int(size_mb * 1e6), metrics=values))


def test_every_metric_a_registered_task_declares_is_in_the_table():
    for task_id, task in registry.TASKS.items():
        missing = [name for name in task.metrics if name not in METRICS]
        assert not missing, f"task {task_id} declares {missing}, which the metric table does not know"
    indicators = torch.tensor([[1, 0], [0, 1]])
    assert set(metrics.multilabel_f1(indicators, indicators)) <= set(METRICS)  # multi-label tasks


def test_table_rows_are_consistent():
    for name, metric in METRICS.items():
        assert metric.name == name
        low, high = metric.value_range
        assert low < high and (metric.fraction == ((low, high) == (0.0, 1.0)))
    assert len({m.label for m in METRICS.values()}) == len(METRICS)  # a column label names one metric
    assert not METRICS["perplexity"].higher_is_better and not METRICS["perplexity"].fraction
    with pytest.raises(ValueError, match="value_range must be"):
        Metric("loss", False, "loss", "loss", value_range=(1.0, 0.0))


def test_an_unknown_metric_is_refused_where_its_direction_matters_and_shown_by_name_elsewhere(tmp_path):
    with pytest.raises(KeyError, match="unknown metric 'bleu'; known: accuracy, fewshot_accuracy") as err:
        metrics.lookup("bleu")
    assert "compresslab.tasks.metrics.METRICS" in str(err.value)
    with pytest.raises(KeyError, match="unknown metric 'bleu'"):
        floors.recovery("bleu", 0.5, 0.4)
    with pytest.raises(compare.RuleError, match="rule 'bleu:-1%': unknown metric 'bleu'"):
        compare.parse_rules(["bleu:-1%"], [*compare.valid_fields(), "bleu"])
    with pytest.raises(KeyError, match="unknown metric 'bleu'"):  # never ranked on a guessed direction
        pareto.plot_model("m", [case("fp32", 1.0, 1, bleu=0.3)], tmp_path / "m.png")
    assert metrics.label("bleu") == "bleu"
    assert "bleu 0.3" in report.row(case("x", 1.0, 1, bleu=0.3))[3]


# --- a lower-is-better metric registered in the table only: every reader must follow it ----------

@pytest.fixture
def error_rate(monkeypatch):
    """A 0..1 metric where lower is better, known to the table and nowhere else."""
    metric = Metric("error_rate", higher_is_better=False, label="err", title="error rate (lower is better)")
    monkeypatch.setitem(METRICS, "error_rate", metric)
    return metric


def test_floors_follow_the_table(error_rate, tmp_path):
    assert floors.recovery("error_rate", 0.2, 0.1) == pytest.approx(0.5)  # twice the errors: half as good
    floor = Floor(reference={"error_rate": 0.10}, reference_tolerance=0.1)
    assert floors.check_reference(floor, {"error_rate": 0.105}) == []
    assert [v.rule for v in floors.check_reference(floor, {"error_rate": 0.12})] == ["reference.error_rate"]
    path = tmp_path / "floors.toml"
    path.write_text("[family.int8]\nmax_increase = { error_rate = 0.1 }\nmax = { error_rate = 0.3 }\n")
    book = floors.load(path, registry.MODELS, registry.METHODS)
    assert book.families["int8"].max == {"error_rate": 0.3}
    path.write_text("[family.int8]\nmax = { error_rate = 1.5 }\n")
    with pytest.raises(FloorsError, match=r"max.error_rate = 1.5 is outside the values error_rate can take \[0, 1\]"):
        floors.load(path, registry.MODELS, registry.METHODS)


def test_compare_rules_labels_and_points_follow_the_table(error_rate):
    fields = compare.valid_fields()
    [rule] = compare.parse_rules(["error_rate:+1pt"], fields)
    assert rule.direction == 1 and rule.exceeded(0.10, 0.12) and not rule.exceeded(0.10, 0.05)
    with pytest.raises(compare.RuleError, match=r"rule 'error_rate:-1pt' fails on an improvement: lower error_rate "
                                                r"is better; write error_rate:\+1pt"):
        compare.parse_rules(["error_rate:-1pt"], fields)
    base = edit(sidecar(seed=1), "minilm-sentiment", "int8-dynamic", error_rate=0.10)
    head = edit(sidecar(seed=1), "minilm-sentiment", "int8-dynamic", error_rate=0.12)
    result = compare.compare(runs.from_document(base, "base.json"), runs.from_document(head, "head.json"), [rule])
    assert [message.split()[0] for _, message in result.regressions] == ["error_rate"]
    text = compare.render(result)
    header = next(line for line in text.splitlines() if "outcome" in line)
    assert re.search(r"\berr\b", header) and "0.1200 +2.00pt !" in text
    assert "err 0.12" in report.row(result.rows[1].head)[3]


def test_perplexity_rules_keep_to_its_direction_and_unit():
    fields = compare.valid_fields()
    with pytest.raises(compare.RuleError, match="fails on an improvement: lower perplexity is better"):
        compare.parse_rules(["perplexity:-2%"], fields)
    with pytest.raises(compare.RuleError, match="points [(]pt[)] are for 0..1 task metrics; use % for perplexity"):
        compare.parse_rules(["perplexity:+1pt"], fields)
    with pytest.raises(compare.RuleError, match="fails on an improvement: higher accuracy is better"):
        compare.parse_rules(["accuracy:+1pt"], fields)


def test_pareto_ranks_and_titles_by_the_table(error_rate, tmp_path, monkeypatch):
    records = [case("fp32", 10.0, 100, error_rate=0.10), case("fast", 5.0, 50, error_rate=0.15),
               case("worse", 6.0, 60, error_rate=0.30)]
    figures = []
    with monkeypatch.context() as patch:
        patch.setattr(plt, "close", figures.append)  # keep the figure to read what was drawn
        assert pareto.plot_model("m", records, tmp_path / "m.png").exists()
    [ax] = figures[0].axes
    plt.close(figures[0])
    assert ax.get_ylabel() == "error rate (lower is better)"
    front = ax.lines[0]  # fastest first; "worse" is slower than "fast" and makes more errors
    assert list(front.get_xdata()) == [5.0, 10.0] and list(front.get_ydata()) == [0.15, 0.10]


# --- cache keys: the device type, the same for artifacts and evaluations -------------------------

class KeyRecorder:
    """A cache that builds nothing: it hands back an entry named by the key it was asked for."""

    def __init__(self, payload):
        self.payload = payload

    def get_or_build(self, key, build, inputs, rebuild):
        return SimpleNamespace(key=key, payload=self.payload, build_s=0.0), False


def test_keys_name_the_device_type_so_every_gpu_finds_what_another_built_and_evaluated(tmp_path):
    def artifact_key(device):
        source = SimpleNamespace(key="base-key", payload=tmp_path)
        ctx = StageContext("tiny", "classifier", device, tmp_path)
        entry, _ = Pipeline(KeyRecorder(tmp_path), {})._apply(DtypeCast(), "bf16", source, ctx, None)
        return entry.key

    def evaluation_key(device):
        return cases.evaluation_key("artifact-key", [], device, 2)

    for key in (artifact_key, evaluation_key):
        assert key("cuda:0") == key("cuda:1") == key("cuda")
        assert key("cpu") != key("cuda:0")
