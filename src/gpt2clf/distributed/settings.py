"""Where ``predict --input`` and ``train`` run: the ``--engine`` flags, declared once (their docstrings are
the ``--help`` text, as for :class:`gpt2clf.config.InferenceSettings`). Imports no Ray."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpt2clf.errors import ConfigError

__all__ = ["ENGINES", "ClusterSettings"]

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class ClusterSettings:
    """Where ``predict --input`` and ``train`` run: in this process, or on a Ray cluster (the ``--engine`` flags).

    Example::

        >>> ClusterSettings(engine="ray", workers=2).workers
        2
    """

    engine: str = "local"
    """local (this process) or ray (a Ray cluster: the one at --address, else a new one on this machine)."""
    workers: int | None = None
    """With --engine ray: model actors (predict) or training workers (train); None: as many as the cluster's
    CPUs allow (predict leaves one for reading the data; train takes one per CPU, or per --gpus-per-worker
    of its GPUs)."""
    gpus_per_worker: float = 0.0
    """With --engine ray: GPUs each worker takes (0: CPU only; a fraction shares a GPU between workers)."""
    address: str | None = None
    """With --engine ray: the cluster to join (host:6379, ray://host:10001 or auto); None: start one here."""
    storage_path: str | None = None
    """With train --engine ray: where checkpoints go, a folder every node sees or a URI (s3://, gs://);
    None: the run folder."""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ConfigError(f"--workers must be a whole number of at least 1, got {self.workers!r}")
        if not (self.gpus_per_worker >= 0 and math.isfinite(self.gpus_per_worker)):
            raise ConfigError(f"--gpus-per-worker must be 0 or more, got {self.gpus_per_worker!r}")
