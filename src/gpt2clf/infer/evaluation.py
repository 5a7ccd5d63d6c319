"""Metrics: accuracy, macro-F1, cross-entropy, per-class table, confusion matrix (as numbers; drawn in report).

Logits and gold labels become an :class:`EvaluationResult` (:func:`compute_metrics`; for
multi-label data :func:`compute_multilabel_metrics`, with per-label decision thresholds that
:func:`tune_thresholds` chooses on the validation split);
:func:`evaluate_folder` scores a saved model folder on a split of the data it was trained on
(or any other). scikit-learn computes every metric, so the figures match what users get
from its own functions. Nothing here imports Lightning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from gpt2clf.config import Config
from gpt2clf.data.splits import splits_for
from gpt2clf.data.text_dataset import DataWarning
from gpt2clf.errors import DataError
from gpt2clf.infer.predictor import Predictor
from gpt2clf.infer.runtime import Progress
from gpt2clf.model.folder import recorded_config

__all__ = ["EvaluationResult", "compute_metrics", "compute_multilabel_metrics", "evaluate_folder",
           "remap_labels", "score_probabilities", "tune_thresholds"]

# Decision thresholds tried per label: 0.05, 0.10, ..., 0.95.
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))
# Keys of EvaluationResult that only multi-label results have (left out of single-label output).
MULTI_LABEL_KEYS = ("multi_label", "micro_f1", "subset_accuracy", "hamming_loss", "thresholds")

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
    components: dict[str, dict[str, float]] = field(default_factory=dict)
    """With TF-IDF fusion: accuracy, macro_f1 and loss of each part alone (``network``, ``tfidf``);
    the figures above are the fused model's."""
    multi_label: bool = False
    """Multi-label results: ``accuracy`` is the subset accuracy (every label of a document right),
    ``macro_f1`` averages the per-label F1, ``loss`` is the binary cross-entropy, and there is no
    confusion matrix."""
    micro_f1: float | None = None
    """Multi-label: F1 over all (document, label) decisions pooled."""
    subset_accuracy: float | None = None
    """Multi-label: share of documents whose predicted label set is exactly the true one."""
    hamming_loss: float | None = None
    """Multi-label: share of (document, label) decisions that are wrong."""
    thresholds: dict[str, float] | None = None
    """Multi-label: the decision threshold of each label's probability."""

    def to_dict(self) -> dict[str, object]:
        values = asdict(self)
        if not self.multi_label:  # single-label output stays as it always was
            for key in MULTI_LABEL_KEYS:
                values.pop(key)
        return values

    def report(self) -> str:
        """A plain-text per-class table followed by the headline figures."""
        width = max(12, *(len(n) for n in self.label_names))
        lines = [f"{'class':<{width}}  precision  recall     f1  support"]
        for name in self.label_names:
            row = self.per_class[name]
            lines.append(f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}"
                         f"  {int(row['support']):7d}")
        lines.append("")
        if self.multi_label:
            lines.append(f"micro-F1 {self.micro_f1:.4f}   macro-F1 {self.macro_f1:.4f}   subset accuracy "
                         f"{self.subset_accuracy:.4f}   hamming loss {self.hamming_loss:.4f}   loss {self.loss:.4f}"
                         f"   documents {self.num_documents}")
            return "\n".join(lines)
        lines.append(f"accuracy {self.accuracy:.4f}   macro-F1 {self.macro_f1:.4f}   loss {self.loss:.4f}"
                     f"   documents {self.num_documents}")
        for name, figures in self.components.items():
            lines.append(f"  {name + ' alone':<14} accuracy {figures['accuracy']:.4f}   macro-F1 "
                         f"{figures['macro_f1']:.4f}   loss {figures['loss']:.4f}")
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


def compute_multilabel_metrics(probabilities: torch.Tensor | np.ndarray, targets: Sequence[Sequence[int]],
                               label_names: Sequence[str],
                               thresholds: Sequence[float] | None = None) -> EvaluationResult:
    """Multi-label metrics of per-label probabilities (N, C) against multi-hot ``targets`` (N, C).

    A label is predicted when its probability reaches its threshold (default 0.5 for every
    label). ``accuracy`` is the subset accuracy; see :class:`EvaluationResult`.

    Example::

        >>> r = compute_multilabel_metrics(np.array([[0.9, 0.2], [0.6, 0.7]]), [(1, 0), (1, 1)], ["a", "b"])
        >>> r.subset_accuracy, r.micro_f1
        (1.0, 1.0)
    """
    from sklearn.metrics import hamming_loss

    probs = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(label_names))
    gold = np.asarray([list(row) for row in targets], dtype=np.int64).reshape(-1, len(label_names))
    cut = np.asarray(thresholds if thresholds is not None else [0.5] * len(label_names), dtype=np.float64)
    predicted = (probs >= cut).astype(np.int64)
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    loss = float(-(gold * np.log(clipped) + (1 - gold) * np.log(1 - clipped)).mean()) if len(gold) else float("nan")
    precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, zero_division=0)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(label_names)
    }
    subset = float(accuracy_score(gold, predicted)) if len(gold) else float("nan")
    return EvaluationResult(
        accuracy=subset,
        macro_f1=float(f1_score(gold, predicted, average="macro", zero_division=0)),
        loss=loss,
        num_documents=len(gold),
        label_names=list(label_names),
        per_class=per_class,
        multi_label=True,
        micro_f1=float(f1_score(gold, predicted, average="micro", zero_division=0)),
        subset_accuracy=subset,
        hamming_loss=float(hamming_loss(gold, predicted)) if len(gold) else float("nan"),
        thresholds={name: float(t) for name, t in zip(label_names, cut.tolist(), strict=True)},
    )


def tune_thresholds(probabilities: torch.Tensor | np.ndarray, targets: Sequence[Sequence[int]]) -> list[float]:
    """Per label, the threshold on :data:`THRESHOLD_GRID` that maximises that label's F1 on these documents.

    Ties go to the threshold nearest 0.5; a label with no positive document keeps 0.5 (F1 says
    nothing there). Meant for the validation split.

    Example::

        >>> tune_thresholds(np.array([[0.3, 0.9], [0.1, 0.8], [0.35, 0.2]]), [(1, 1), (0, 1), (1, 0)])
        [0.3, 0.5]
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    gold = np.asarray([list(row) for row in targets], dtype=np.int64).reshape(probs.shape)
    chosen = []
    for j in range(probs.shape[1]):
        positives = gold[:, j] == 1
        if not positives.any():
            chosen.append(0.5)
            continue
        best, best_key = 0.5, None
        for t in THRESHOLD_GRID:
            predicted = probs[:, j] >= t
            tp = int((predicted & positives).sum())
            f1 = 2 * tp / (int(predicted.sum()) + int(positives.sum()))
            key = (round(f1, 12), -abs(t - 0.5))
            if best_key is None or key > best_key:
                best, best_key = t, key
        chosen.append(float(best))
    return chosen


def remap_labels(labels: Sequence[int], names: Sequence[str], model_names: Sequence[str]) -> list[int]:
    """Express dataset labels as indices into the model's label names (matched by name).

    Raises:
        DataError: the data has labels the model was not trained on.
    """
    if list(names) == list(model_names):
        return list(labels)
    index = {name: i for i, name in enumerate(model_names)}
    multi = bool(labels) and isinstance(labels[0], tuple)
    used = {names[j] for row in labels for j, v in enumerate(row) if v} if multi else {names[y] for y in labels}
    unknown = sorted(used - set(index))
    if unknown:
        raise DataError(f"labels the model was not trained on: {', '.join(map(repr, unknown[:5]))}; "
                        f"the model knows {len(model_names)} labels")
    if multi:  # multi-hot rows re-ordered to the model's label order
        rows = []
        for row in labels:
            out = [0] * len(model_names)
            for j, v in enumerate(row):
                if v:
                    out[index[names[j]]] = 1
            rows.append(tuple(out))
        return rows
    return [index[names[y]] for y in labels]


def evaluation_config(model_dir: str | Path, data_overrides: dict[str, Any] | None = None) -> Config:
    """The config that names the data to evaluate a model folder on: the recorded one, with overrides.

    20 Newsgroups options (``data_dir``, ``strip``) without ``train_file`` name 20 Newsgroups
    even for a model trained on a file. A recorded data file that is gone is refused with a
    message that says how to point evaluate at data.
    """
    overrides = dict(data_overrides or {})
    if "train_file" not in overrides and any(k in overrides for k in ("data_dir", "strip", "dataset")):
        overrides["train_file"] = None
        overrides["test_file"] = None
    if "dataset" not in overrides and any(k in overrides for k in ("train_file", "data_dir", "strip")):
        overrides["dataset"] = None
    config = recorded_config(model_dir).updated(**overrides)
    if not any(k in overrides for k in ("train_file", "test_file")):
        for name in ("train_file", "test_file"):
            path = getattr(config, name)
            if path and not Path(path).is_file():
                raise DataError(f"the model was trained on {path}, which no longer exists; point evaluate at data "
                                "with --train-file/--test-file (or --data-dir for 20 Newsgroups)")
    return config


def evaluate_folder(model_dir: str | Path, *, split: str = "test", data_overrides: dict[str, Any] | None = None,
                    progress: Progress | None = None, **predictor_options: Any) -> EvaluationResult:
    """Score a saved model folder on ``split`` (train, validation or test) of its recorded dataset.

    ``data_overrides`` (Config data fields, e.g. ``{"test_file": "holdout.csv"}``) point it at
    other data; ``predictor_options`` go to :class:`~gpt2clf.infer.predictor.Predictor`
    (``device``, ``precision``, ``int8``, ``batch_size``). The validation and test sets are
    carved exactly as the training run did. ``progress(done, N)`` hears of the documents the
    model has read, after each batch (:data:`gpt2clf.infer.runtime.Progress`).

    Example::

        >>> evaluate_folder("runs/20ng/model").accuracy  # doctest: +SKIP
        0.87
    """
    predictor = Predictor.from_folder(model_dir, **{k: v for k, v in predictor_options.items() if v is not None})
    config = evaluation_config(model_dir, data_overrides)
    if predictor.fusion is not None and split in predictor.fusion.tfidf_splits:
        warnings.warn(DataWarning(f"this model's TF-IDF part was fit on the {split} split (the fusion refit), so "
                                  f"its {split} figures are optimistic; the test split gives an honest estimate"),
                      stacklevel=2)
    dataset = splits_for(config).split(split)
    labels = remap_labels(dataset.labels, dataset.label_names, predictor.label_names)
    if predictor.multi_label:
        return compute_multilabel_metrics(predictor.predict_proba(dataset.texts, progress), labels,
                                          predictor.label_names, predictor.thresholds)
    return score_probabilities(predictor.component_probabilities(dataset.texts, progress), labels,
                               predictor.label_names)


def score_probabilities(parts: dict[str, torch.Tensor], labels: Sequence[int],
                        label_names: Sequence[str]) -> EvaluationResult:
    """Metrics of a model's probabilities; with fusion (``fused`` among ``parts``) of the fused ones,
    with each part's headline figures in :attr:`EvaluationResult.components`."""
    main = parts.get("fused", parts["network"])
    result = compute_metrics(torch.log(main.clamp_min(1e-12)), labels, label_names)
    if "fused" in parts:
        for name in ("network", "tfidf"):
            alone = compute_metrics(torch.log(parts[name].clamp_min(1e-12)), labels, label_names)
            result.components[name] = {"accuracy": alone.accuracy, "macro_f1": alone.macro_f1, "loss": alone.loss}
    return result
