"""Metrics and reports: accuracy, macro-F1, cross-entropy, per-class table, confusion matrix.

:func:`compute_metrics` turns logits and gold labels into an :class:`EvaluationResult`;
:func:`evaluate_model` runs a model over tokenized documents first. scikit-learn computes
every metric so the figures match what users get from its own functions.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from gpt2clf.files import atomic_write_bytes
from gpt2clf.model import GPT2Classifier
from gpt2clf.prediction import batched_logits


@dataclass
class EvaluationResult:
    """The figures of one evaluation. ``per_class`` maps label -> precision/recall/f1/support."""

    accuracy: float
    macro_f1: float
    loss: float
    num_documents: int
    label_names: list[str]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion_matrix: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def report(self) -> str:
        """A plain-text per-class table followed by the headline figures."""
        width = max(12, *(len(n) for n in self.label_names))
        lines = [f"{'class':<{width}}  precision  recall     f1  support"]
        for name in self.label_names:
            row = self.per_class[name]
            lines.append(f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}"
                         f"  {int(row['support']):7d}")
        lines.append("")
        lines.append(f"accuracy {self.accuracy:.4f}   macro-F1 {self.macro_f1:.4f}   loss {self.loss:.4f}"
                     f"   documents {self.num_documents}")
        return "\n".join(lines)


def compute_metrics(logits: torch.Tensor, labels: Sequence[int], label_names: Sequence[str]) -> EvaluationResult:
    """Metrics of ``logits`` (N, C) against gold ``labels`` (N,)."""
    gold = torch.as_tensor(list(labels), dtype=torch.long)
    loss = float(F.cross_entropy(logits.float(), gold)) if len(gold) else float("nan")
    predicted = logits.argmax(dim=-1).numpy()
    gold_np = gold.numpy()
    classes = np.arange(len(label_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        gold_np, predicted, labels=classes, zero_division=0
    )
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(label_names)
    }
    return EvaluationResult(
        accuracy=float(accuracy_score(gold_np, predicted)),
        macro_f1=float(f1_score(gold_np, predicted, labels=classes, average="macro", zero_division=0)),
        loss=loss,
        num_documents=len(gold_np),
        label_names=list(label_names),
        per_class=per_class,
        confusion_matrix=confusion_matrix(gold_np, predicted, labels=classes).tolist(),
    )


def evaluate_model(
    model: GPT2Classifier,
    token_lists: Sequence[list[int]],
    labels: Sequence[int],
    *,
    batch_size: int,
    pad_token_id: int,
    padding_side: str = "right",
    device: torch.device | str = "cpu",
    precision: str = "32-true",
) -> EvaluationResult:
    """Run ``model`` over tokenized documents and score it against ``labels``."""
    logits = batched_logits(model, token_lists, batch_size=batch_size, pad_token_id=pad_token_id,
                            padding_side=padding_side, device=device, precision=precision)
    return compute_metrics(logits, labels, model.spec.label_names)


def plot_confusion_matrix(result: EvaluationResult, path: str | Path, normalize: bool = True) -> None:
    """Write a confusion-matrix PNG with class names on both axes (rows: true, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(result.confusion_matrix, dtype=float)
    values = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    n = len(result.label_names)
    size = max(6.0, 0.45 * n + 3)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
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
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
