"""Joining a Ray cluster, and sizing an actor pool so that it cannot starve the tasks that feed it.

Data flow: :func:`ray_cluster` yields the ``ray`` module with a live connection (the one this process
already holds, the cluster at ``address``, or a new local one it shuts down again);
:func:`choose_pool_size` turns ``--workers`` and the cluster's CPUs and GPUs into an actor count and a
sentence saying why.

Guarantees:

* without Ray installed, :func:`import_ray` raises a :class:`~gpt2clf.errors.UserError` whose one line
  says ``pip install "gpt2clf[ray]"``;
* a pool never takes every CPU of the cluster: Ray Data's read and write tasks need one, and without it
  the job waits forever (ray-project/ray#44687). A pool that would is shrunk, and the choice is said;
  a cluster with a single CPU is refused;
* Ray 2.59+ turns on token authentication for a new local cluster and, in 2.60, writes a token to
  ``~/.ray/auth_token`` itself, so a local cluster starts without user action. Joining a cluster
  (``address``) sends this machine's token when there is one and RAY_AUTH_MODE is unset (a cluster from
  ``ray start`` wants it; without it the connection is refused after a long wait); a cluster that wants
  a token this machine lacks is one line naming ``RAY_AUTH_TOKEN`` and ``~/.ray/auth_token``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any

from gpt2clf.errors import ConfigError, UserError, first_line

__all__ = ["RAY_MISSING", "choose_pool_size", "import_ray", "ray_cluster"]

RAY_MISSING = '--engine ray needs Ray: pip install "gpt2clf[ray]"'
# CPUs a pool leaves to Ray Data's read and write tasks.
CPUS_FOR_READING = 1


def import_ray() -> Any:
    """The ``ray`` module with ``ray.data`` loaded; a one-line UserError when Ray is not installed."""
    try:
        import ray
        import ray.data  # the data extra (pandas, pyarrow) is there too
    except ImportError:
        raise UserError(RAY_MISSING) from None
    return ray


@contextlib.contextmanager
def ray_cluster(address: str | None = None, *, num_cpus: int | None = None,
                env_vars: dict[str, str] | None = None) -> Iterator[Any]:
    """Yield ``ray``, connected: to the cluster this process already joined, else to ``address``
    (``host:6379``, ``ray://host:10001`` or ``auto``), else to a new local cluster of ``num_cpus`` CPUs
    (default: this machine's). ``env_vars`` are set in this job's workers (a remote cluster's workers do not
    inherit this process's environment). Only a connection made here is shut down on exit."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        _use_token_if_available()
    try:
        # log_to_driver=False: the terminal keeps Ray Data's progress and our summary, not worker logs.
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": env_vars} if env_vars else None)
    except Exception as err:  # Ray raises ConnectionError, AuthenticationError, RuntimeError, ValueError
        raise UserError(_init_failure(address, err)) from err
    try:
        yield ray
    finally:
        ray.shutdown()


def _use_token_if_available() -> None:
    """Send this machine's Ray token when joining a cluster: ``ray start`` (2.59+) turns token authentication
    on, but a driver whose RAY_AUTH_MODE is unset connects without a token and is refused. As Ray does for a
    new local cluster: token mode when RAY_AUTH_MODE is unset and a token exists; an explicit mode wins."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:  # Ray's own rule (2.59+); private, hence the fallback
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _init_failure(address: str | None, err: Exception) -> str:
    where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
    if type(err).__name__ == "AuthenticationError":
        return (f"{where} wants a token this machine lacks: copy the cluster's token to ~/.ray/auth_token or set "
                "RAY_AUTH_TOKEN (Ray's token authentication)")
    return f"cannot start or reach {where}: {first_line(err)}"


def choose_pool_size(requested: int | None, resources: dict[str, float], gpus_per_worker: float = 0.0,
                     cpus_per_worker: float = 1.0) -> tuple[int, str]:
    """How many model actors to start on a cluster with ``resources`` (``ray.cluster_resources()``), and a
    sentence saying why.

    The pool leaves :data:`CPUS_FOR_READING` CPU for reading and writing (a pool holding every CPU hangs);
    ``requested`` above that is lowered, None takes what is left; GPUs bound the count too.

    Example::

        >>> choose_pool_size(None, {"CPU": 4.0})
        (3, '3 model actors of 1 CPU each on a cluster of 4 CPUs, leaving 1 for reading and writing')
    """
    cpus = float(resources.get("CPU", 0.0))
    fits = math.floor((cpus - CPUS_FOR_READING) / cpus_per_worker + 1e-9)
    if fits < 1:
        raise ConfigError(f"the Ray cluster has {cpus:g} CPU(s); a model actor of {cpus_per_worker:g} CPU and the "
                          f"tasks that read its input need at least {cpus_per_worker + CPUS_FOR_READING:g} (start "
                          "it with more --num-cpus, or add a node)")
    size, why = fits, ""
    if requested is not None and requested > fits:
        why = f" (--workers {requested} would leave no CPU to read the input, and the job would wait forever)"
    elif requested is not None:
        size = requested
    if gpus_per_worker > 0:
        gpus = float(resources.get("GPU", 0.0))
        by_gpu = math.floor(gpus / gpus_per_worker + 1e-9)
        if by_gpu < 1:
            raise ConfigError(f"--gpus-per-worker {gpus_per_worker:g}, but the Ray cluster has {gpus:g} GPU(s)")
        if by_gpu < size:
            size, why = by_gpu, f" (its {gpus:g} GPU(s) hold {by_gpu} actors of {gpus_per_worker:g} GPU)"
    return size, (f"{size} model actor{'s' if size > 1 else ''} of {cpus_per_worker:g} CPU each on a cluster of "
                  f"{cpus:g} CPUs, leaving {cpus - size * cpus_per_worker:g} for reading and writing{why}")
