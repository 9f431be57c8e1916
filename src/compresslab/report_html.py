"""A run as documents: a Markdown table (also a CI job summary), a self-contained HTML page with
each model's Pareto plot embedded, and the plots as PNG files beside them."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from compresslab import pareto, report
from compresslab.results import CaseRecord

MARKDOWN, HTML = "report.md", "report.html"


@dataclass(frozen=True)
class Written:
    markdown: Path
    html: Path
    plots: dict[str, Path]


def _by_model(records: list[CaseRecord]) -> dict[str, list[CaseRecord]]:
    models: dict[str, list[CaseRecord]] = {}
    for record in report.by_model(records):
        models.setdefault(record.model, []).append(record)
    return models


def markdown_table(records: list[CaseRecord]) -> str:
    rows = [report.row(r) for r in _by_model(records).values() for r in r]
    escape = str.maketrans({"|": "\\|"})
    lines = ["| " + " | ".join(report.COLUMNS) + " |", "|" + "---|" * len(report.COLUMNS)]
    lines += ["| " + " | ".join(cell.translate(escape) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _run_line(source: str) -> str:
    return (f"run: {source}. size x and speedup: times smaller / faster than fp32 in the same run. % peak and "
            "decode % BW: shares of the GEMM peak (of the row's dtype) and of the memory bandwidth that the run "
            "measured on its machine before its first case.")


def render_markdown(records: list[CaseRecord], source: str, plots: dict[str, Path] | None = None) -> str:
    parts = ["# compresslab report", "", _run_line(source), "", markdown_table(records)]
    for model, path in (plots or {}).items():
        parts += ["", f"![{model}: task metric vs latency]({path.name})"]
    return "\n".join(parts) + "\n"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px}
table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}.failed{color:#b00}.skipped{color:#888}"""


def render_html(records: list[CaseRecord], source: str, plots: dict[str, Path]) -> str:
    body = [f"<h1>compresslab report</h1><p>{html.escape(_run_line(source))}</p>"]
    for model, rows in _by_model(records).items():
        body.append(f"<h2>{html.escape(model)}</h2>")
        if model in plots:
            data = base64.b64encode(plots[model].read_bytes()).decode()
            body.append(f'<img alt="{html.escape(model)}: task metric vs latency" src="data:image/png;base64,{data}">')
        else:
            body.append("<p>no plot: no case of this model was timed (e.g. a pytest-xdist or "
                        "--benchmark-disable run)</p>")
        header = "".join(f"<th>{html.escape(c)}</th>" for c in report.COLUMNS)
        cells = ["<tr class=\"{}\">{}</tr>".format(html.escape(r.outcome), "".join(
            f"<td>{html.escape(c)}</td>" for c in report.row(r))) for r in rows]
        body.append(f"<table><tr>{header}</tr>{''.join(cells)}</table>")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>compresslab report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def write(records: list[CaseRecord], out_dir: Path, source: str) -> Written:
    """Writes report.md, report.html and pareto-<model>.png into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {}
    for model, rows in _by_model(records).items():
        path = pareto.plot_model(model, rows, out_dir / f"pareto-{model}.png")
        if path is not None:
            plots[model] = path
    markdown, page = out_dir / MARKDOWN, out_dir / HTML
    markdown.write_text(render_markdown(records, source, plots))
    page.write_text(render_html(records, source, plots))
    return Written(markdown, page, plots)
