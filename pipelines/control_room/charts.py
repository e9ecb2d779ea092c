"""The control room's charts, drawn on the server with matplotlib as SVG text: no script, no
download, nothing from a CDN. Each function takes a record of :mod:`pipelines.control_room.state`
and returns one ``<svg>`` document ('' when there is nothing to draw)."""
from __future__ import annotations

import io

import pandas as pd

from pipelines.control_room.state import DriftDay, TrafficDay

WIDTH, HEIGHT = 7.5, 2.8           # inches at 96 dpi in the page


def _svg(draw) -> str:
    """A chart drawn by ``draw(figure, axes)`` as SVG text: a figure of its own, not pyplot's
    global state, so pages drawn at once do not share one."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.fonttype": "none",              # text stays text (searchable, readable by tests)
                                "svg.hashsalt": "control-room"}):    # the same chart gives the same ids
        figure = Figure(figsize=(WIDTH, HEIGHT), dpi=96)
        axes = figure.subplots()
        draw(figure, axes)
        figure.tight_layout()
        out = io.StringIO()
        figure.savefig(out, format="svg")
    text = out.getvalue()
    return text[text.index("<svg"):]


def drift_share(days: list[DriftDay]) -> str:
    """The share of drifted columns per monitored day, the threshold as a line, drifted days marked."""
    if not days:
        return ""

    def draw(figure, axes):
        labels = [d.ds for d in days]
        axes.plot(labels, [d.drift_share for d in days], marker="o", color="#1f77b4", label="drift share")
        axes.plot(labels, [d.threshold for d in days], linestyle="--", color="#d62728", label="threshold")
        drifted = [(d.ds, d.drift_share) for d in days if d.dataset_drift]
        if drifted:
            axes.scatter(*zip(*drifted), color="#d62728", zorder=3, label="over threshold")
        axes.set_ylim(0, max(1e-9, max(max(d.drift_share, d.threshold) for d in days)) * 1.15)
        axes.set_ylabel("share of columns")
        _date_axis(axes, labels)
        axes.legend(loc="upper left", fontsize=8)

    return _svg(draw)


def column_drift_map(ratios: pd.DataFrame) -> str:
    """Each column's drift score over its threshold per day (1 = at the threshold)."""
    if ratios.empty:
        return ""

    def draw(figure, axes):
        figure.set_size_inches(WIDTH, max(HEIGHT, 0.22 * len(ratios) + 1.2))
        image = axes.imshow(ratios.to_numpy(dtype=float), aspect="auto", cmap="RdYlGn_r", vmin=0, vmax=2,
                            interpolation="nearest")
        axes.set_yticks(range(len(ratios)), [str(c) for c in ratios.index], fontsize=7)
        _date_axis(axes, [str(c) for c in ratios.columns], positions=True)
        figure.colorbar(image, ax=axes, label="score / threshold")

    return _svg(draw)


def live_performance(frame: pd.DataFrame, metric: str) -> str:
    """The live metric per label date, one line per model version and source."""
    if frame.empty:
        return ""

    def draw(figure, axes):
        dates = sorted(frame["label_date"].astype(str).unique())
        for (source, version), part in frame.groupby(["source", "model_version"]):
            part = part.sort_values("label_date")
            axes.plot([dates.index(d) for d in part["label_date"].astype(str)], part[metric].astype(float),
                      marker="o", linestyle="-" if source == "batch" else ":", label=f"v{version} {source}")
        axes.set_ylabel(metric)
        _date_axis(axes, dates, positions=True)
        axes.legend(loc="best", fontsize=8)

    return _svg(draw)


def traffic(days: list[TrafficDay]) -> str:
    """Online requests per day (bars) and their p50 and p99 latency (lines, right axis)."""
    if not days:
        return ""

    def draw(figure, axes):
        labels = [d.ds for d in days]
        axes.bar(labels, [d.requests for d in days], color="#9ecae1", label="requests")
        axes.set_ylabel("requests")
        latency = axes.twinx()
        latency.plot(labels, [d.p50_ms for d in days], marker="o", color="#31a354", label="p50 ms")
        latency.plot(labels, [d.p99_ms for d in days], marker="o", color="#e6550d", label="p99 ms")
        latency.set_ylabel("latency (ms)")
        latency.legend(loc="upper right", fontsize=8)
        _date_axis(axes, labels)

    return _svg(draw)


def _date_axis(axes, labels: list[str], positions: bool = False) -> None:
    step = max(1, len(labels) // 10)
    ticks = list(range(0, len(labels), step))
    axes.set_xticks(ticks if positions else [labels[i] for i in ticks],
                    [labels[i][5:] for i in ticks], rotation=45, fontsize=7)
