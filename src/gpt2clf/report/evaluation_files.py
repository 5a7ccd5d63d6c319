"""An evaluation written to a folder: ``metrics.json``, ``report.txt`` and the confusion matrix.

Data flow: an :class:`~gpt2clf.infer.evaluation.EvaluationResult` (computed in the infer stage, which draws
nothing) -> files in a folder, each written atomically. ``gpt2clf evaluate --output DIR`` calls it.
"""

from __future__ import annotations

from pathlib import Path

from gpt2clf.files import atomic_write_json, atomic_write_text
from gpt2clf.infer.evaluation import EvaluationResult

__all__ = ["save_evaluation"]


def save_evaluation(result: EvaluationResult, folder: str | Path) -> list[Path]:
    """Write ``metrics.json``, ``report.txt`` and (single-label) ``confusion_matrix.png`` into ``folder``;
    return their paths."""
    from gpt2clf.report.plots import plot_confusion_matrix

    folder = Path(folder)
    paths = [folder / "metrics.json", folder / "report.txt"]
    atomic_write_json(paths[0], result.to_dict())
    atomic_write_text(paths[1], result.report() + "\n")
    if not result.multi_label:
        paths.append(folder / "confusion_matrix.png")
        plot_confusion_matrix(result, paths[2])
    return paths
