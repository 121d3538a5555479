"""PNG plots for training and eval reports: loss curves, metric bars, length histograms."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from slmkit.errors import SlmError
from slmkit.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGSIZE = (8.0, 5.0)  # inches
DPI = 100  # so every PNG is 800x500 pixels


def loss_curve(
    series: dict[str, list[tuple[int, float]]], path: str | Path, title: str = "Training loss", ylabel: str = "loss"
) -> Path:
    """One line per named series of (step, loss) points."""
    drawn = {name: sorted(points) for name, points in series.items() if points}
    if not drawn:
        raise SlmError("no loss values to plot", "train for at least one logging step first")
    fig, ax = _new_figure(title)
    for name, points in drawn.items():
        steps, losses = zip(*points)
        ax.plot(steps, losses, label=name, marker="o" if len(points) < 20 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def metric_bars(
    metrics: dict[str, dict[str, float]],
    path: str | Path,
    keys: list[str] | None = None,
    title: str = "Evaluation metrics",
) -> Path:
    """Grouped bars: one group per metric, one bar per model, each bar labelled with its value.

    Keys missing from any model are skipped. Without explicit `keys`, only metrics that lie in
    [0, 1] for every model are drawn, so a 0-100 score like bleu does not flatten the rest.
    """
    if not metrics:
        raise SlmError("no models to compare", "pass {model_name: {metric: value}}")
    models = list(metrics)
    candidates = keys if keys is not None else [k for k in metrics[models[0]] if k != "n"]
    shown = [k for k in candidates if all(k in metrics[m] for m in models)]
    if keys is None:
        shown = [k for k in shown if all(0.0 <= metrics[m][k] <= 1.0 for m in models)]
    if not shown:
        raise SlmError(
            f"no metric is shared by all models ({', '.join(models)})",
            "evaluate every model on the same task, or pass keys explicitly",
        )
    fig, ax = _new_figure(title)
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(shown))]
        bars = ax.bar(xs, [metrics[model][k] for k in shown], width, label=model)
        ax.bar_label(bars, fmt="%.3g", padding=2, fontsize=8)
    ax.set_xticks(range(len(shown)), shown)
    values = [metrics[m][k] for m in models for k in shown]
    top = max(values)
    # Headroom above the tallest bar for its value label.
    ax.set_ylim(min(0.0, min(values) * 1.1), 1.1 if top <= 1.0 else top * 1.1)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def length_histogram(lengths: list[int], path: str | Path, title: str = "Tokens per example") -> Path:
    """Histogram of example lengths, with the mean marked."""
    if not lengths:
        raise SlmError("no lengths to plot", "the dataset appears to be empty")
    fig, ax = _new_figure(title)
    ax.hist(lengths, bins=min(50, len(set(lengths))), color="tab:blue", edgecolor="white")
    mean = sum(lengths) / len(lengths)
    ax.axvline(mean, color="tab:red", linestyle="--", label=f"mean {mean:.1f}, max {max(lengths)}")
    ax.set_xlabel("tokens")
    ax.set_ylabel("examples")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _new_figure(title: str):
    """A fresh Agg-backed figure, built without pyplot so no global state or GUI is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    return fig, ax


def _save(fig: Figure, path: str | Path) -> Path:
    """Render to PNG in memory, then write atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    # No bbox_inches="tight": it would crop the canvas and make the pixel size unpredictable.
    fig.savefig(buf, format="png", dpi=DPI)
    return atomic_write_bytes(path, buf.getvalue())
