"""compresslab report: Markdown table, self-contained HTML with embedded Pareto plots, PNG files."""

import base64
import re

from compresslab import cli, pareto, report_html, runs
from runfiles import edit, sidecar, write


def records(document):
    return list(runs.from_document(document, "run.json").records.values())


def test_dominated_points():
    # (latency, -accuracy, size): the second is slower, worse and larger than the first
    points = [(1.0, -0.9, 10.0), (2.0, -0.8, 20.0), (0.5, -0.7, 30.0), (1.0, -0.9, 10.0)]
    assert pareto.dominated(points) == [False, True, False, False]  # equal points do not dominate each other


def test_front_2d_respects_metric_direction():
    xs, ys = [1, 2, 3, 4], [0.8, 0.9, 0.85, 0.95]
    assert pareto.front_2d(xs, ys, higher_is_better=True) == [0, 1, 3]
    assert pareto.front_2d(xs, [30, 20, 25, 10], higher_is_better=False) == [0, 1, 3]


def test_report_writes_markdown_html_and_pngs(tmp_path, capsys):
    document = edit(sidecar(seed=1), "minilm-sentiment", "int8-dynamic", outcome="failed")
    run = write(tmp_path / "run.json", document)
    out = tmp_path / "report"
    assert cli.main(["report", str(run), "--out", str(out)]) == cli.EXIT_OK
    printed = capsys.readouterr().out
    assert "minilm-sentiment  int8-dynamic  failed" in printed and f"wrote {out / 'report.md'}" in printed
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["pareto-minilm-sentiment.png", "pareto-smollm2-135m.png"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    page = (out / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 2 and base64.b64decode(embedded[0])[:4] == b"\x89PNG"
    assert "src=\"pareto-" not in page  # nothing outside the page: it can be mailed or uploaded alone
    assert page.count("<table>") == 2 and "<h2>smollm2-135m</h2>" in page
    markdown = (out / "report.md").read_text()
    assert "| model | method | result |" in markdown and "![smollm2-135m: task metric vs latency]" in markdown
    assert "| minilm-sentiment | int8-dynamic | failed |" in markdown


def test_markdown_to_stdout_for_a_job_summary(tmp_path, capsys):
    run = write(tmp_path / "run.json", sidecar(seed=1))
    assert cli.main(["report", str(run), "--out", str(tmp_path / "r"), "--format", "markdown"]) == cli.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# compresslab report"
    assert sum(line.startswith("| ") for line in lines) == 5  # header + 4 cases


def test_untimed_run_gets_tables_without_plots(tmp_path):
    document = sidecar(seed=1)
    for record in document["benchmarks"]:  # a pytest-xdist build phase: nothing timed
        for key in ("latency_p50_ms", "latency_samples_ms", "speedup_vs_baseline"):
            del record["extra_info"][key]
    written = report_html.write(records(document), tmp_path, "xdist run")
    assert written.plots == {}
    assert "no plot: no case of this model was timed" in written.html.read_text()
