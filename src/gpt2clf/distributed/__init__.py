"""gpt2clf beyond one machine, on Ray: batch prediction with Ray Data, training with Ray Train.

Ray is an optional extra (``pip install "gpt2clf[ray]"``), imported lazily: nothing here is imported by
``import gpt2clf``, and ``--engine ray`` without Ray says in one line how to install it.

Batch prediction (:mod:`gpt2clf.distributed.predict`): :func:`predict_dataset` turns a Ray Dataset of
texts into a lazy Dataset of predictions; :func:`predict_files` runs a whole job from files to a folder
of Parquet files (``gpt2clf predict --engine ray``). Reading and the output folder live in
:mod:`gpt2clf.distributed.sources`, the cluster connection and pool size in :mod:`gpt2clf.distributed.cluster`.

Training (:mod:`gpt2clf.distributed.train`): :func:`train_on_ray` runs the same Lightning module and data as
``gpt2clf train`` on N Ray Train workers and writes the same run folder (``gpt2clf train --engine ray``);
:func:`plan_on_ray` is its ``--dry-run``. Where either runs is a :class:`ClusterSettings`.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it (imported on first use: Ray loads only when asked for)
_EXPORTS = {
    "ClusterSettings": "gpt2clf.distributed.settings",
    "PredictOptions": "gpt2clf.distributed.predict",
    "PredictSummary": "gpt2clf.distributed.predict",
    "predict_dataset": "gpt2clf.distributed.predict",
    "predict_files": "gpt2clf.distributed.predict",
    "plan_on_ray": "gpt2clf.distributed.train",
    "train_on_ray": "gpt2clf.distributed.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gpt2clf.distributed' has no attribute {name!r}")
