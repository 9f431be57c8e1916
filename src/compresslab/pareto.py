"""Pareto fronts of a run and their plots: task metric vs latency, marker area = size on disk."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from compresslab.results import CaseRecord
from compresslab.tasks.metrics import Metric, lookup

MAX_PANELS = 2


def dominated(points: Sequence[Sequence[float]]) -> list[bool]:
    """For points whose coordinates are all to be minimized: is another point at least as good in
    every coordinate and better in one?"""
    def beats(q, p):
        return all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p))

    return [any(beats(q, p) for q in points) for p in points]


def front_2d(xs: Sequence[float], ys: Sequence[float], higher_is_better: bool) -> list[int]:
    """Indices of the latency-metric front, fastest first."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], -ys[i] if higher_is_better else ys[i]))
    front, best = [], None
    for i in order:
        if best is None or (ys[i] > best if higher_is_better else ys[i] < best):
            front.append(i)
            best = ys[i]
    return front


# outcomes of a measured case: it met its floors, or fell below them (a known failure included)
MEETS_FLOORS, BELOW_FLOORS = ("passed", "xpassed"), ("failed", "xfailed")


def plottable(records: list[CaseRecord]) -> list[CaseRecord]:
    """Cases with a latency, a size and metrics (a timed run; not skipped, not errored)."""
    return [r for r in records if r.outcome in (*MEETS_FLOORS, *BELOW_FLOORS) and
            None not in (r.result.latency_p50_ms, r.result.size_bytes, r.result.metrics)]


def panel_metrics(records: list[CaseRecord]) -> list[str]:
    names = dict.fromkeys(m for r in records for m in r.metrics)
    return list(names)[:MAX_PANELS]


def _marker_area(size_mb: float, largest_mb: float) -> float:
    return 30 + 600 * size_mb / largest_mb


def plot_model(model: str, records: list[CaseRecord], out: Path) -> Path | None:
    """One PNG per model, one panel per task metric (at most two); None when nothing was timed.
    A metric the metric table does not know is a KeyError: it would be ranked on a guessed direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = plottable(records)
    if not cases:
        return None
    metrics = [lookup(name) for name in panel_metrics(cases)]  # before a figure opens
    fig, axes = plt.subplots(1, len(metrics), figsize=(7.5 * len(metrics), 7.0), squeeze=False)
    largest = max(r.result.size_bytes for r in cases) / 1e6
    shape = cases[0].result.latency_input_shape
    for ax, metric in zip(axes[0], metrics):
        _panel(ax, [r for r in cases if metric.name in r.metrics], metric, largest, shape)
    fig.suptitle(f"{model}: task metric vs latency (marker area = size on disk)", fontsize=13)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    _legend(fig, axes[0][0], largest)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _panel(ax, cases: list[CaseRecord], metric: Metric, largest_mb: float, shape) -> None:
    xs = [r.result.latency_p50_ms for r in cases]
    ys = [r.metrics[metric.name] for r in cases]
    sizes = [r.result.size_bytes / 1e6 for r in cases]
    higher = metric.higher_is_better
    passed = [r.outcome in MEETS_FLOORS for r in cases]
    # dominated in all three: another configuration is as fast, as good and as small, and better in one
    points = [(x, -y if higher else y, s) for x, y, s in zip(xs, ys, sizes)]
    ranked = [i for i, ok in enumerate(passed) if ok]  # a case below its floor is not an option
    flags = [True] * len(cases)
    for i, flag in zip(ranked, dominated([points[i] for i in ranked])):
        flags[i] = flag
    front = [i for i in front_2d(xs, ys, higher) if passed[i]]
    ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="tab:blue", alpha=0.5,
            linestyle="--", linewidth=1.2, zorder=1)
    for i, (x, y, s) in enumerate(zip(xs, ys, sizes)):
        area = _marker_area(s, largest_mb)
        if not passed[i]:
            ax.scatter(x, y, s=area, facecolors="none", edgecolors="tab:red", linewidths=1.5, zorder=2)
        elif flags[i]:
            ax.scatter(x, y, s=area, facecolors="none", edgecolors="grey", linewidths=1.2, zorder=2)
        else:
            ax.scatter(x, y, s=area, color="tab:blue", alpha=0.75, edgecolors="black", linewidths=0.6, zorder=3)
    labels = [r.chain + ("" if ok else " (below floor)") for r, ok in zip(cases, passed)]
    _log_if_wide(ax.xaxis, xs, ax.set_xscale)
    if not higher:  # perplexities of broken configurations run into the thousands
        _log_if_wide(ax.yaxis, ys, ax.set_yscale)
    ax.margins(x=0.12, y=0.12)
    batch = f"batch {shape[0]} x {shape[1]} tokens" if shape and len(shape) == 2 else "batch 1"
    ax.set_xlabel(f"p50 latency (ms, {batch})")
    ax.set_ylabel(metric.title)
    ax.grid(True, alpha=0.3)
    _place_labels(ax, xs, ys, labels, [not f for f in flags], [_marker_area(s, largest_mb) for s in sizes])


def _log_if_wide(axis, values, set_scale) -> None:
    from matplotlib.ticker import FuncFormatter

    if max(values) / max(min(values), 1e-9) > 8:
        set_scale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)


# label spots around a point (points): a near ring without leader lines, then farther ones with
DIRECTIONS = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1),
              (0.5, 1), (0.5, -1), (-0.5, 1), (-0.5, -1)]
OFFSETS = [(round(r * dx), round(r * dy)) for r in (10, 24, 40, 58, 78) for dx, dy in DIRECTIONS]
LEADER_FROM = len(DIRECTIONS)


def _overlap(box, others) -> float:
    total = 0.0
    for other in others:
        width = min(box.x1, other.x1) - max(box.x0, other.x0)
        height = min(box.y1, other.y1) - max(box.y0, other.y0)
        total += max(width, 0) * max(height, 0)
    return total


def _place_labels(ax, xs, ys, labels, emphasize, areas) -> None:
    """Greedy: each label takes the first nearby spot inside the axes that overlaps no placed label
    and no marker (front labels first); when none is free, the spot that overlaps least."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    markers = []
    for x, y, area in zip(xs, ys, areas):  # scatter area is in points^2: radius in pixels
        cx, cy = ax.transData.transform((x, y))
        radius = (area ** 0.5) / 2 * fig.dpi / 72
        markers.append(Bbox.from_extents(cx - radius, cy - radius, cx + radius, cy + radius))
    placed = []
    for i in sorted(range(len(xs)), key=lambda i: (not emphasize[i], xs[i])):
        best = None
        for n, (dx, dy) in enumerate(OFFSETS):
            text = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                               ha="left" if dx > 0 else "right" if dx < 0 else "center", va="center", fontsize=8,
                               fontweight="bold" if emphasize[i] else "normal",
                               color="black" if emphasize[i] else "#333333",
                               arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5}
                               if n >= LEADER_FROM else None)
            box = text.get_window_extent(renderer).expanded(1.08, 1.3)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            cost = _overlap(box, placed) + 0.5 * _overlap(box, markers) + (0 if inside else 1e9)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        placed.append(best[2])


def _legend(fig, ax, largest_mb: float) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", markersize=9, markerfacecolor="tab:blue",
                      markeredgecolor="black", label="on the front (latency, metric, size)"),
               Line2D([], [], marker="o", linestyle="", markersize=9, markerfacecolor="none",
                      markeredgecolor="grey", label="dominated"),
               Line2D([], [], marker="o", linestyle="", markersize=9, markerfacecolor="none",
                      markeredgecolor="tab:red", label="below its floor"),
               Line2D([], [], color="tab:blue", linestyle="--", alpha=0.5, label="latency-metric front")]
    for mb in _reference_sizes(largest_mb):
        handles.append(ax.scatter([], [], s=_marker_area(mb, largest_mb), color="tab:blue", alpha=0.35,
                                  label=f"{mb:g} MB"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9,
               scatterpoints=1, handletextpad=0.9, columnspacing=1.5)


def _reference_sizes(largest_mb: float) -> list[float]:
    import math

    top = 10 ** math.floor(math.log10(largest_mb)) if largest_mb > 0 else 1
    candidates = [top * f for f in (0.1, 0.25, 0.5, 1, 2.5, 5)]
    picks = [c for c in candidates if c <= largest_mb]
    return [picks[0], picks[len(picks) // 2], picks[-1]] if len(picks) >= 3 else picks
