"""Figures: the only module that imports matplotlib.

Every renderer takes plain data (lists, dicts, an evaluation result), draws on a fresh Agg
``Figure`` (never pyplot's global state, so it is safe in threads and servers, and needs no
display) and returns PNG bytes; callers embed them inline (``data:`` URIs in the HTML reports)
or write them with the ``plot_*`` functions, which write atomically.

Example::

    >>> png = attention_heatmap_png(["Hi", " there"], [[[0.3, 0.7]]], None)
    >>> png[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpt2clf.files import atomic_write_bytes

__all__ = [
    "attention_heatmap_png",
    "confusion_matrix_png",
    "dataset_stats_png",
    "learning_curves_png",
    "plot_confusion_matrix",
    "plot_dataset_stats",
]

_MAX_LABELLED_TOKENS = 120


def _png(fig, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # glyphs (emoji) missing from the font
        fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def attention_heatmap_png(labels: Sequence[str], head_weights: Sequence[Sequence[Sequence[float]]],
                          pooling_weights: Sequence[float] | None, *, title: str = "") -> bytes:
    """A heat map, one row per block and head (plus the learned pooling weights), one column per token.

    ``labels``: one axis label per token, drawn verbatim (no mathtext: a ``$`` is a dollar);
    callers pass :func:`gpt2clf.report.explain.display_token` strings, as the other views show.
    ``head_weights[b][h][t]``: how much head ``h`` of block ``b`` routes token ``t`` into the
    pooled position. Each row is a distribution (sums to 1), drawn on one shared 0..max scale.

    Example::

        >>> png = attention_heatmap_png(["a", "b"], [[[0.5, 0.5], [0.9, 0.1]]], [0.2, 0.8])
    """
    from matplotlib.figure import Figure

    rows, names = [], []
    for b, block in enumerate(head_weights):
        for h, weights in enumerate(block):
            rows.append(list(weights))
            names.append(f"block {b} head {h}")
    if pooling_weights is not None:
        rows.append(list(pooling_weights))
        names.append("pooling weights")
    values = np.asarray(rows, dtype=float) if rows else np.zeros((1, len(labels)))
    n = len(labels)
    labelled = n <= _MAX_LABELLED_TOKENS
    width = min(18.0, max(6.0, 0.28 * n + 2.5)) if labelled else 14.0
    height = 1.6 + 0.35 * len(values) + (1.1 if labelled else 0.3)
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(float(values.max()), 1e-9),
                      interpolation="nearest")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    if labelled:
        ax.set_xticks(range(n), list(labels), rotation=70, ha="right", fontsize=7, parse_math=False)
    else:
        ax.set_xlabel("token position")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01, label="weight")
    return _png(fig)


def learning_curves_png(epochs: Sequence[int], series: Mapping[str, Sequence[float | None]]) -> bytes:
    """Per-epoch learning curves: losses on the left, accuracy and macro-F1 on the right.

    ``series`` maps a name (``train_loss``, ``val_loss``, ``val_acc``, ``val_macro_f1``) to
    one value per epoch (None where not logged). Names containing ``loss`` go left.

    Example::

        >>> png = learning_curves_png([0, 1], {"train_loss": [1.0, 0.5], "val_acc": [0.6, 0.8]})
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    losses, scores = fig.subplots(1, 2)
    x = np.asarray(list(epochs), dtype=float) + 1  # epochs counted from 1 on the axis
    for name, values in series.items():
        y = np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)
        if np.isnan(y).all():
            continue
        ax = losses if "loss" in name else scores
        ax.plot(x, y, marker="o", label=name.replace("_", " "))
    for ax, ylabel, heading in ((losses, "cross-entropy", "Loss"), (scores, "score", "Validation accuracy and F1")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(heading)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        if len(x):
            ax.set_xticks(x)
    scores.set_ylim(0, 1.02)
    return _png(fig)


_MAX_PLOTTED_CLASSES = 50


def plot_dataset_stats(stats: dict[str, Any], path: str | Path) -> None:
    """Write :func:`dataset_stats_png` to ``path`` atomically."""
    atomic_write_bytes(Path(path), dataset_stats_png(stats))


def dataset_stats_png(stats: dict[str, Any]) -> bytes:
    """One PNG: documents per class (left) and token-length histograms (right).

    ``stats`` is what :func:`dataset_stats` returned; the histograms need its ``lengths``
    attribute (a :class:`DatasetStats`) and are replaced by a note without it. The length
    axis is logarithmic with a dashed line at ``max_length``. With more than 50 classes only
    the 50 largest are drawn. Rendering uses matplotlib's Agg canvas without touching
    pyplot's global state.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    split_names = list(stats["splits"])
    names = list(stats["label_names"])
    totals = {label: sum(stats["splits"][s]["per_class"].get(label, 0) for s in split_names)
              for label in names}
    shown = names
    if len(names) > _MAX_PLOTTED_CLASSES:
        largest = set(sorted(names, key=lambda x: -totals[x])[:_MAX_PLOTTED_CLASSES])
        shown = [label for label in names if label in largest]
    height = max(5.0, 0.32 * len(shown) + 2.0)
    fig = Figure(figsize=(16, height), layout="constrained")
    bars, hist = fig.subplots(1, 2, width_ratios=[1.15, 1])
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]

    y = np.arange(len(shown))
    width = 0.8 / max(1, len(split_names))
    for k, split in enumerate(split_names):
        info = stats["splits"][split]
        counts = [info["per_class"].get(label, 0) for label in shown]
        bars.barh(y - 0.4 + width * (k + 0.5), counts, height=width, color=colors[k % len(colors)],
                  label=f"{split} ({info['documents']:,} docs)")
    bars.set_yticks(y, shown, fontsize=9)
    bars.set_ylim(len(shown) - 0.5, -0.5)  # first class on top
    bars.set_xlabel("documents")
    extra = f" (largest {len(shown)} of {len(names)})" if len(shown) < len(names) else ""
    bars.set_title(f"Documents per class{extra}")
    bars.legend(loc="lower right")
    bars.grid(axis="x", alpha=0.3)

    max_length = int(stats["max_length"])
    lengths = getattr(stats, "lengths", {}) or {}
    if lengths:
        present = [v for v in lengths.values() if v]
        low = max(1, min([min(v) for v in present] + [max_length]))
        peak = max([max(v) for v in present] + [max_length, low + 1])
        bins = np.geomspace(low / 1.1, peak * 1.1, 60)
        for k, split in enumerate(split_names):
            values = np.maximum(np.asarray(lengths.get(split, []), dtype=np.int64), 1)
            if not len(values):
                continue
            over = stats["splits"][split]["tokens"]["over_max_length"]
            median = stats["splits"][split]["tokens"]["p50"]
            hist.hist(values, bins=bins, histtype="stepfilled", alpha=0.45, color=colors[k % len(colors)],
                      edgecolor=colors[k % len(colors)],
                      label=f"{split}: median {median:,.0f}, {over:.1%} > {max_length}")
        hist.axvline(max_length, color="black", linestyle="--", linewidth=1.2,
                     label=f"max_length = {max_length}")
        hist.set_xscale("log")
        hist.xaxis.set_major_formatter(ScalarFormatter())
        hist.set_xlabel("tokens per document (untruncated, log scale)")
        hist.set_ylabel("documents")
        hist.legend(loc="upper right")
        hist.grid(alpha=0.3)
    else:
        hist.text(0.5, 0.5, "token lengths not available", ha="center", va="center", transform=hist.transAxes)
        hist.set_axis_off()
    tokenizer_name = Path(str(stats.get("tokenizer", ""))).name or "tokenizer"
    hist.set_title(f"Tokens per document ({tokenizer_name})")

    return _png(fig)


def plot_confusion_matrix(result: Any, path: str | Path, normalize: bool = True) -> None:
    """Write :func:`confusion_matrix_png` to ``path`` atomically."""
    atomic_write_bytes(Path(path), confusion_matrix_png(result, normalize))


def confusion_matrix_png(result: Any, normalize: bool = True) -> bytes:
    """A confusion-matrix PNG with class names on both axes (rows: true, columns: predicted).

    ``result`` is an :class:`~gpt2clf.infer.evaluation.EvaluationResult` (its ``confusion_matrix``,
    ``label_names`` and ``accuracy`` are used).
    """
    from matplotlib.figure import Figure

    counts = np.asarray(result.confusion_matrix, dtype=float)
    values = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    n = len(result.label_names)
    size = max(6.0, 0.45 * n + 3)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(n), result.label_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), result.label_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix (row-normalised)   accuracy {result.accuracy:.3f}"
                 if normalize else f"Confusion matrix   accuracy {result.accuracy:.3f}")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=6,
                            color="white" if values[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _png(fig, dpi=120)
