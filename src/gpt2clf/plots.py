"""Figures, as PNG bytes: the only module that imports matplotlib.

Every function takes plain data (lists, dicts), draws on a fresh Agg ``Figure`` (never
pyplot's global state, so it is safe in threads and servers) and returns the PNG bytes;
callers embed them inline (``data:`` URIs) or write them atomically.

Example::

    >>> png = attention_heatmap_png(["Hi", " there"], [[[0.3, 0.7]]], None)
    >>> png[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

_MAX_LABELLED_TOKENS = 120


def _png(fig, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # glyphs (emoji) missing from the font
        fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def token_label(token: str, limit: int = 14) -> str:
    """A token as an axis label: visible whitespace, no mathtext, at most ``limit`` characters.

    Example::

        >>> token_label(" GPU")
        '␣GPU'
    """
    text = token.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    if text.startswith(" "):
        text = "␣" + text[1:]
    text = text.replace("$", r"\$")  # a $ pair would start matplotlib's mathtext
    return text if len(text) <= limit else text[:limit - 1] + "…"


def attention_heatmap_png(tokens: Sequence[str], head_weights: Sequence[Sequence[Sequence[float]]],
                          pooling_weights: Sequence[float] | None, *, title: str = "") -> bytes:
    """A heat map, one row per block and head (plus the learned pooling weights), one column per token.

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
    values = np.asarray(rows, dtype=float) if rows else np.zeros((1, len(tokens)))
    n = len(tokens)
    labelled = n <= _MAX_LABELLED_TOKENS
    width = min(18.0, max(6.0, 0.28 * n + 2.5)) if labelled else 14.0
    height = 1.6 + 0.35 * len(values) + (1.1 if labelled else 0.3)
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(float(values.max()), 1e-9),
                      interpolation="nearest")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    if labelled:
        ax.set_xticks(range(n), [token_label(t) for t in tokens], rotation=70, ha="right", fontsize=7)
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
