"""A run's report: one self-contained HTML page that opens from disk, with no network.

Data flow::

    RUN_DIR/config.yaml, metrics.json, logs/metrics.csv, model/
      -> the test split exactly as training saw it (training.load_split) and its
         probabilities (Predictor.predict_proba), unless the caller passes a ScoredSplit
      -> sections: config; data summary (documents per class, token lengths per split);
         learning curves per epoch; validation and test metrics; per-class precision,
         recall and F1; confusion matrix and the most-confused pairs; the most confident
         test errors with tokens shaded by integrated gradients (gpt2clf.report.explain); timings
         and the hardware of the machine that wrote the report
      -> templates/report.html.j2 (Jinja2, autoescaped) with every figure an inline PNG
      -> RUN_DIR/report.html, written atomically

Guarantees: the page references no URL (figures are ``data:`` URIs, CSS is inline); a
missing or incomplete run folder raises one :class:`~gpt2clf.errors.UserError` line naming
what is missing; a dataset that can no longer be loaded, or Captum not being installed,
leaves a note in the affected section instead of failing the report.

Example::

    >>> write_run_report("runs/20ng")          # doctest: +SKIP
    PosixPath('runs/20ng/report.html')
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2clf.errors import DataError, UserError
from gpt2clf.files import atomic_write_text

__all__ = ["ScoredSplit", "check_run_folder", "confident_errors", "confused_pairs", "score_run", "write_run_report"]

REPORT_NAME = "report.html"
ERROR_STEPS = 16
"""Integration steps for the highlighted errors: coarse but quick (a few seconds per error)."""
NUM_ERRORS = 10
NUM_CONFUSED_PAIRS = 10
SNIPPET_CHARS = 600


@dataclass
class ScoredSplit:
    """A scored labelled split: texts, gold label ids, probabilities (N, C) and the label names.

    Training already has these at its end and can pass them to :func:`write_run_report`
    instead of having the test split scored again.

    Example::

        >>> ScoredSplit(["a b", "c"], [0, 1], np.array([[0.9, 0.1], [0.3, 0.7]]), ["x", "y"]).predictions()
        array([0, 1])
    """

    texts: list[str]
    labels: list[int]
    probabilities: np.ndarray
    label_names: list[str]

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        self.labels = [int(y) for y in self.labels]
        self.label_names = [str(n) for n in self.label_names]
        probs = self.probabilities
        self.probabilities = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs,
                                        dtype=np.float64)
        n, c = len(self.texts), len(self.label_names)
        if self.probabilities.shape != (n, c) or len(self.labels) != n:
            raise DataError(f"a ScoredSplit needs {n} labels and probabilities of shape ({n}, {c}); got "
                            f"{len(self.labels)} labels and shape {self.probabilities.shape}")
        if any(not 0 <= y < c for y in self.labels):
            raise DataError(f"a ScoredSplit label id is outside 0..{c - 1}")

    def predictions(self) -> np.ndarray:
        """The predicted label id of each document."""
        return self.probabilities.argmax(axis=1)


# ------------------------------------------------------------------------------------------
# reading a run folder
# ------------------------------------------------------------------------------------------
REQUIRED = ("config.yaml", "metrics.json", "model/config.json", "model/model.safetensors")


def check_run_folder(run_dir: Path) -> None:
    """Raise :class:`UserError` unless ``run_dir`` holds a finished run (config, metrics, model)."""
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}; pass a folder written by 'gpt2clf train --output'")
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"{run_dir} is not a finished run: {', '.join(missing)} missing (did training finish? "
                        "resume it with 'gpt2clf train --output RUN_DIR --resume')")


def read_run_config(run_dir: Path) -> Any:
    """The run's :class:`~gpt2clf.config.Config` from its ``config.yaml``."""
    from gpt2clf.config import Config

    return Config.from_yaml(run_dir / "config.yaml")


def score_run(run_dir: str | Path, *, device: str | None = "cpu") -> ScoredSplit:
    """Score the run's test split (exactly as training carved it) with its saved model.

    Example::

        >>> scored = score_run("runs/20ng")   # doctest: +SKIP
    """
    from gpt2clf.data.splits import splits_for
    from gpt2clf.infer.predictor import Predictor

    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    dataset = splits_for(read_run_config(run_dir)).test
    predictor = Predictor.from_folder(run_dir / "model", device=device)
    probabilities = predictor.predict_proba(dataset.texts) if len(dataset) else torch.zeros(0, 0)
    names = predictor.label_names
    index = {name: i for i, name in enumerate(names)}
    try:
        labels = [index[dataset.label_names[y]] for y in dataset.labels]
    except KeyError as err:
        raise DataError(f"the test split has label {err.args[0]!r}, which the model was not trained on") from err
    return ScoredSplit(dataset.texts, labels, probabilities.reshape(len(dataset), len(names)), names)


def learning_curves(csv_path: Path) -> tuple[list[int], dict[str, list[float | None]]]:
    """Per-epoch series from Lightning's ``metrics.csv``.

    ``train_loss`` is the mean of the step values logged in that epoch (Lightning logs it
    every few steps); the validation figures are the epoch-end values.
    """
    per_epoch: dict[int, dict[str, list[float]]] = {}
    with csv_path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for name in ("train_loss", "val_loss", "val_acc", "val_macro_f1"):
                value = row.get(name)
                if value not in (None, ""):
                    per_epoch.setdefault(epoch, {}).setdefault(name, []).append(float(value))
    epochs = sorted(per_epoch)
    series: dict[str, list[float | None]] = {}
    for name in ("train_loss", "val_loss", "val_acc", "val_macro_f1"):
        values = [per_epoch[e].get(name) for e in epochs]
        series[name] = [float(np.mean(v)) if v else None for v in values]
    return epochs, series


# ------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------
def data_summary(config: Any, tokenizer: Any) -> dict[str, Any]:
    """Documents per class and untruncated token lengths of the run's train, validation and test splits.

    The same keys as :func:`gpt2clf.data.stats.dataset_stats`, with three splits (as carved by
    training) instead of the dataset's own two, so :func:`gpt2clf.report.plots.dataset_stats_png` draws it.
    """
    from gpt2clf.data.batching import token_lengths
    from gpt2clf.data.splits import splits_for
    from gpt2clf.data.stats import DatasetStats

    splits = splits_for(config)
    carved = {name: splits.split(name) for name in ("train", "validation", "test")}
    stats = DatasetStats(num_classes=len(splits.label_names), label_names=list(splits.label_names),
                         max_length=config.max_length, tokenizer=config.tokenizer_name, source=splits.source,
                         splits={})
    for name, ds in carved.items():
        lengths = token_lengths(ds.texts, tokenizer) if len(ds) else []
        stats.lengths[name] = lengths
        counts = np.bincount(np.asarray(ds.labels, dtype=np.int64), minlength=len(splits.label_names))
        array = np.asarray(lengths or [0])
        p50, p90, p99 = (float(v) for v in np.percentile(array, [50, 90, 99]))
        stats["splits"][name] = {
            "documents": len(ds),
            "per_class": {label: int(counts[i]) for i, label in enumerate(splits.label_names)},
            "tokens": {"mean": float(array.mean()), "min": int(array.min()), "p50": p50, "p90": p90, "p99": p99,
                       "max": int(array.max()), "over_max_length": float((array > config.max_length).mean())},
        }
    return stats


def confused_pairs(confusion: Sequence[Sequence[int]], names: Sequence[str],
                   k: int = NUM_CONFUSED_PAIRS) -> list[dict[str, Any]]:
    """The ``k`` largest off-diagonal cells: true label, predicted label, count, share of the true class."""
    matrix = np.asarray(confusion, dtype=np.int64)
    pairs = [(int(matrix[i, j]), i, j) for i in range(len(names)) for j in range(len(names))
             if i != j and matrix[i, j] > 0]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return [{"true": names[i], "predicted": names[j], "count": count,
             "share": count / max(1, int(matrix[i].sum()))} for count, i, j in pairs[:k]]


def confident_errors(scored: ScoredSplit, k: int = NUM_ERRORS) -> list[int]:
    """Indices of the ``k`` misclassified documents with the highest predicted probability."""
    predicted = scored.predictions()
    wrong = [i for i in range(len(scored.texts)) if predicted[i] != scored.labels[i]]
    wrong.sort(key=lambda i: -float(scored.probabilities[i, predicted[i]]))
    return wrong[:k]


def hardware_info() -> dict[str, Any]:
    """CPU model and cores, native bf16, GPUs, and the versions of Python, torch and transformers."""
    import transformers

    from gpt2clf.infer.runtime import cpu_has_native_bf16

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "cpu_native_bf16": cpu_has_native_bf16(),
            "gpus": ", ".join(gpus) or "none", "gpu_bf16": bool(gpus) and torch.cuda.is_bf16_supported(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform()}


def error_views(run_dir: Path, scored: ScoredSplit, indices: Sequence[int], *, steps: int = ERROR_STEPS
                ) -> tuple[list[dict[str, Any]], str | None]:
    """One entry per error: snippet with tokens shaded by integrated gradients towards the predicted label.

    Returns the entries and a note (None when every error was explained).
    """
    from gpt2clf.report.explain import explain, explanation_view

    predicted = scored.predictions()
    entries: list[dict[str, Any]] = []
    for i in indices:
        entries.append({"index": i, "true": scored.label_names[scored.labels[i]],
                        "predicted": scored.label_names[predicted[i]],
                        "probability": float(scored.probabilities[i, predicted[i]]),
                        "true_probability": float(scored.probabilities[i, scored.labels[i]]),
                        "snippet": scored.texts[i][:SNIPPET_CHARS], "view": None})
    if not entries:
        return entries, None
    try:
        import captum  # noqa: F401
    except ImportError:
        return entries, "Install Captum (pip install 'gpt2clf[explain]') to see which tokens led to each error."
    from gpt2clf.infer.predictor import Predictor

    predictor = Predictor.from_folder(run_dir / "model", device="cpu", precision="32-true")
    note = None
    for entry in entries:
        if entry["predicted"] not in predictor.label_names:
            note = "Some errors could not be explained: their labels are not the model's."
            continue
        exp = explain(predictor, scored.texts[entry["index"]], label=entry["predicted"], steps=steps,
                      internal_batch_size=4)
        entry["view"] = explanation_view(exp, top_k=5, heatmap=False, window=SNIPPET_CHARS)
    return entries, note


# ------------------------------------------------------------------------------------------
# the entry point
# ------------------------------------------------------------------------------------------
def build_context(run_dir: Path, scored: ScoredSplit | None = None) -> dict[str, Any]:
    """Everything the report template shows, figures as ``data:`` URIs."""
    from gpt2clf.data.batching import load_tokenizer
    from gpt2clf.infer.evaluation import compute_metrics
    from gpt2clf.report import plots
    from gpt2clf.report.explain import png_data_uri

    started = time.perf_counter()
    check_run_folder(run_dir)
    config = read_run_config(run_dir)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{run_dir / 'metrics.json'} is unreadable ({err}); the run did not finish cleanly") from err
    if scored is None:
        scored = score_run(run_dir)
    scoring_seconds = time.perf_counter() - started

    data, data_figure, data_note = None, None, None
    try:
        tokenizer = load_tokenizer(str(run_dir / "model"))
        data = data_summary(config, tokenizer)
        data_figure = png_data_uri(plots.dataset_stats_png(data))
    except UserError as err:
        data_note = f"The dataset could not be loaded again ({err}); only the scored test split is summarised."

    csv_path = run_dir / "logs" / "metrics.csv"
    curves, curves_note = None, None
    if csv_path.is_file():
        epochs, series = learning_curves(csv_path)
        if epochs:
            curves = {"figure": png_data_uri(plots.learning_curves_png(epochs, series)),
                      "rows": [{"epoch": e + 1, **{k: v[n] for k, v in series.items()}} for n, e in enumerate(epochs)]}
    if curves is None:
        curves_note = f"No per-epoch metrics in {csv_path}."

    evaluation = compute_metrics(torch.as_tensor(np.log(np.clip(scored.probabilities, 1e-12, None))),
                                 scored.labels, scored.label_names) if scored.texts else None
    confusion_figure = (png_data_uri(plots.confusion_matrix_png(evaluation))
                        if evaluation is not None else None)
    explain_started = time.perf_counter()
    errors, errors_note = error_views(run_dir, scored, confident_errors(scored))
    explain_seconds = time.perf_counter() - explain_started

    epochs_done = metrics.get("epochs_completed") or 0
    train_seconds = metrics.get("train_seconds")
    return {
        "title": f"gpt2clf run report: {run_dir.name}",
        "run_dir": str(run_dir),
        "written": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "config": config.to_dict(),
        "metrics": metrics,
        "data": data, "data_figure": data_figure, "data_note": data_note,
        "scored_documents": len(scored.texts),
        "curves": curves, "curves_note": curves_note,
        "evaluation": evaluation,
        "confusion_figure": confusion_figure,
        "confused": confused_pairs(evaluation.confusion_matrix, scored.label_names) if evaluation else [],
        "errors": errors, "errors_note": errors_note, "error_steps": ERROR_STEPS,
        "timings": {"train_seconds": train_seconds, "epochs": epochs_done,
                    "seconds_per_epoch": (train_seconds / epochs_done) if train_seconds and epochs_done else None,
                    "scoring_seconds": scoring_seconds, "explain_seconds": explain_seconds},
        "parameters": metrics.get("parameters", {}),
        "hardware": hardware_info(),
    }


def render_report(context: dict[str, Any]) -> str:
    """The report page for a :func:`build_context` result."""
    from gpt2clf.report.explain import template_environment

    return template_environment().get_template("report.html.j2").render(**context)


def write_run_report(run_dir: str | Path, output: str | Path | None = None, *,
                     scored: ScoredSplit | None = None) -> Path:
    """Write the run's HTML report (default ``RUN_DIR/report.html``) atomically; return its path.

    ``scored``: the test split's texts, gold labels and probabilities if the caller has
    them (training does), else they are computed from the run folder.

    Example::

        >>> write_run_report("runs/20ng", "/tmp/20ng.html")   # doctest: +SKIP
        PosixPath('/tmp/20ng.html')
    """
    run_dir = Path(run_dir)
    path = Path(output) if output is not None else run_dir / REPORT_NAME
    html = render_report(build_context(run_dir, scored))
    atomic_write_text(path, html)
    return path
