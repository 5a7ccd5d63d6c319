"""Figures: the only module that imports matplotlib.

Every function renders with matplotlib's object-oriented API on an Agg canvas (no pyplot
global state, no display needed) and either writes a PNG atomically or returns its bytes.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from gpt2clf.files import atomic_write_bytes

__all__ = ["plot_confusion_matrix", "plot_dataset_stats"]


_MAX_PLOTTED_CLASSES = 50


def plot_dataset_stats(stats: dict[str, Any], path: str | Path) -> None:
    """Write one PNG: documents per class (left) and token-length histograms (right).

    ``stats`` is what :func:`dataset_stats` returned; the histograms need its ``lengths``
    attribute (a :class:`DatasetStats`) and are replaced by a note without it. The length
    axis is logarithmic with a dashed line at ``max_length``. With more than 50 classes only
    the 50 largest are drawn. Rendering uses matplotlib's Agg canvas without touching
    pyplot's global state, and the file is written atomically.
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

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(Path(path), buffer.getvalue())


def plot_confusion_matrix(result: Any, path: str | Path, normalize: bool = True) -> None:
    """Write a confusion-matrix PNG with class names on both axes (rows: true, columns: predicted).

    ``result`` is an :class:`~gpt2clf.evaluation.EvaluationResult` (its ``confusion_matrix``,
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(Path(path), buffer.getvalue())
