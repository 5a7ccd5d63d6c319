"""gpt2clf: fine-tune a pretrained GPT-2 with custom transformer blocks for text classification.

The main entry points, importable from the package (loaded lazily, so ``import gpt2clf`` and
``gpt2clf --help`` import no torch)::

    from gpt2clf import Config, GPT2Classifier, GPT2TextClassifier, Predictor, fit, train

Modules, in the order data flows (each imports only those to its left; a test checks it):
``errors``, ``files``, ``config``, ``synthetic`` -> ``corpora`` (text) -> ``batching`` (tokens,
windows, batches), ``json_tokenizer``, ``stats`` -> ``gpt2_body``, ``mpnet_body``, ``backbone``
(the Hugging Face adapter) -> ``model_io`` (the model-folder format), ``model`` -> ``inference``,
``fusion`` -> ``feature_cache``, ``prediction`` -> ``evaluation``, ``plots``, ``report``,
``explain``, ``onnx_runtime``, ``export`` -> ``prepared`` -> ``optimization``, ``preflight`` ->
``training`` -> ``estimator`` (the scikit-learn estimator), ``microbatch``, ``serving`` -> ``cli``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "Config": "gpt2clf.config",
    "GPT2Classifier": "gpt2clf.model",
    "GPT2TextClassifier": "gpt2clf.estimator",
    "ClassifierSpec": "gpt2clf.model",
    "Predictor": "gpt2clf.prediction",
    "evaluate_folder": "gpt2clf.evaluation",
    "fit": "gpt2clf.training",
    "train": "gpt2clf.training",
}

__all__ = ["ClassifierSpec", "Config", "GPT2Classifier", "GPT2TextClassifier", "Predictor", "evaluate_folder", "fit",
           "train"]

if TYPE_CHECKING:
    from gpt2clf.config import Config
    from gpt2clf.estimator import GPT2TextClassifier
    from gpt2clf.evaluation import evaluate_folder
    from gpt2clf.model import ClassifierSpec, GPT2Classifier
    from gpt2clf.prediction import Predictor
    from gpt2clf.training import fit, train


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'gpt2clf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
