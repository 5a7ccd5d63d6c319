"""gpt2clf: fine-tune a pretrained GPT-2 with custom transformer blocks for text classification.

The main entry points, importable from the package (loaded lazily, so ``import gpt2clf`` and
``gpt2clf --help`` import no torch)::

    from gpt2clf import Config, GPT2Classifier, GPT2TextClassifier, Predictor, fit, train

Sub-packages, in the order data flows (each imports only those before it; a test checks it)::

    errors, files, config       the foundation: user errors, atomic writes, every setting
    data/       text -> tokens, windows and batches (text_dataset; newsgroups, labelled_files, hub: one
                module per source; splits; batching, json_tokenizer, stats)
    model/      token ids -> logits (gpt2_body, mpnet_body, backbone, folder, classifier, fusion)
    infer/      logits -> probabilities and metrics (runtime, predictor, evaluation, onnx_runtime, export)
    report/     what people read (plots, explain, evaluation_files, run_report, templates/)
    training/   run setup and estimate, feature cache, optimisation, the Lightning loop (plan,
                feature_cache, inputs, optimization, loop)
    serve/      HTTP and the page (microbatch, app, web/);  distributed/  Ray: batch prediction, training
    estimator, cli   the scikit-learn estimator and the command line
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "Config": "gpt2clf.config",
    "GPT2Classifier": "gpt2clf.model.classifier",
    "GPT2TextClassifier": "gpt2clf.estimator",
    "ClassifierSpec": "gpt2clf.model.classifier",
    "Predictor": "gpt2clf.infer.predictor",
    "evaluate_folder": "gpt2clf.infer.evaluation",
    "labelled_texts": "gpt2clf.data.splits",
    "fit": "gpt2clf.training.loop",
    "train": "gpt2clf.training.loop",
}

__all__ = ["ClassifierSpec", "Config", "GPT2Classifier", "GPT2TextClassifier", "Predictor", "evaluate_folder", "fit",
           "labelled_texts", "train"]

if TYPE_CHECKING:
    from gpt2clf.config import Config
    from gpt2clf.data.splits import labelled_texts
    from gpt2clf.estimator import GPT2TextClassifier
    from gpt2clf.infer.evaluation import evaluate_folder
    from gpt2clf.infer.predictor import Predictor
    from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier
    from gpt2clf.training.loop import fit, train


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'gpt2clf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
