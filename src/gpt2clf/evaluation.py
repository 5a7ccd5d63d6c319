"""Metrics and reports: accuracy, macro-F1, cross-entropy, per-class table, confusion matrix.

Logits and gold labels become an :class:`EvaluationResult` (:func:`compute_metrics`);
:func:`evaluate_model` runs a model over tokenized documents first, and
:func:`evaluate_folder` scores a saved model folder on a split of the data it was trained on
(or any other). scikit-learn computes every metric, so the figures match what users get
from its own functions. Nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from gpt2clf.config import Config
from gpt2clf.corpora import splits_for
from gpt2clf.errors import DataError
from gpt2clf.files import atomic_write_json, atomic_write_text
from gpt2clf.model import GPT2Classifier
from gpt2clf.model_io import recorded_config
from gpt2clf.prediction import Predictor, batched_logits

__all__ = ["EvaluationResult", "compute_metrics", "evaluate_folder", "evaluate_model", "remap_labels",
           "score_probabilities"]

# The Config fields that name a dataset (evaluate takes them to point a model at other data).
DATA_FIELDS = ("data_dir", "strip", "train_file", "test_file", "text_column", "label_column")


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

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``metrics.json``, ``report.txt`` and ``confusion_matrix.png`` into ``folder``; return their paths."""
        from gpt2clf.plots import plot_confusion_matrix

        folder = Path(folder)
        paths = [folder / "metrics.json", folder / "report.txt", folder / "confusion_matrix.png"]
        atomic_write_json(paths[0], self.to_dict())
        atomic_write_text(paths[1], self.report() + "\n")
        plot_confusion_matrix(self, paths[2])
        return paths

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


def remap_labels(labels: Sequence[int], names: Sequence[str], model_names: Sequence[str]) -> list[int]:
    """Express dataset labels as indices into the model's label names (matched by name).

    Raises:
        DataError: the data has labels the model was not trained on.
    """
    if list(names) == list(model_names):
        return list(labels)
    index = {name: i for i, name in enumerate(model_names)}
    unknown = sorted({names[y] for y in labels} - set(index))
    if unknown:
        raise DataError(f"labels the model was not trained on: {', '.join(map(repr, unknown[:5]))}; "
                        f"the model knows {len(model_names)} labels")
    return [index[names[y]] for y in labels]


def evaluation_config(model_dir: str | Path, data_overrides: dict[str, Any] | None = None) -> Config:
    """The config that names the data to evaluate a model folder on: the recorded one, with overrides.

    20 Newsgroups options (``data_dir``, ``strip``) without ``train_file`` name 20 Newsgroups
    even for a model trained on a file. A recorded data file that is gone is refused with a
    message that says how to point evaluate at data.
    """
    overrides = dict(data_overrides or {})
    if "train_file" not in overrides and any(k in overrides for k in ("data_dir", "strip")):
        overrides["train_file"] = None
        overrides["test_file"] = None
    config = recorded_config(model_dir).updated(**overrides)
    if not any(k in overrides for k in ("train_file", "test_file")):
        for name in ("train_file", "test_file"):
            path = getattr(config, name)
            if path and not Path(path).is_file():
                raise DataError(f"the model was trained on {path}, which no longer exists; point evaluate at data "
                                "with --train-file/--test-file (or --data-dir for 20 Newsgroups)")
    return config


def evaluate_folder(model_dir: str | Path, *, split: str = "test", data_overrides: dict[str, Any] | None = None,
                    **predictor_options: Any) -> EvaluationResult:
    """Score a saved model folder on ``split`` (train, validation or test) of its recorded dataset.

    ``data_overrides`` (Config data fields, e.g. ``{"test_file": "holdout.csv"}``) point it at
    other data; ``predictor_options`` go to :class:`~gpt2clf.prediction.Predictor`
    (``device``, ``precision``, ``int8``, ``batch_size``). The validation and test sets are
    carved exactly as the training run did.

    Example::

        >>> evaluate_folder("runs/20ng/model").accuracy  # doctest: +SKIP
        0.87
    """
    predictor = Predictor.from_folder(model_dir, **{k: v for k, v in predictor_options.items() if v is not None})
    config = evaluation_config(model_dir, data_overrides)
    dataset = splits_for(config).split(split)
    labels = remap_labels(dataset.labels, dataset.label_names, predictor.label_names)
    return score_probabilities(predictor.component_probabilities(dataset.texts), labels, predictor.label_names)


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
