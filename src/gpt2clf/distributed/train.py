"""Training on a Ray cluster: the same Lightning module and data as ``gpt2clf train``, on N Ray Train workers.

Data flow (``gpt2clf train ... --engine ray``, or :func:`train_on_ray`)::

    driver:  Config -> set_up_run (tokenized splits, seeded model, input pipeline; gpt2clf.training.plan)
             -> ray.put(data), ray.put(model) -> TorchTrainer(N workers) -> Result
    worker:  ray.get(data, model) -> attach_inputs (token ids, or the feature cache) -> ClassificationModule
             -> pl.Trainer(trainer_arguments + RayDDPStrategy, RayLightningEnvironment)
             -> fit, resumed from ray.train.get_checkpoint() when there is one
             -> at each epoch end (after validation) a Lightning checkpoint and the metrics so far
                are reported to Ray (RayTrainReportCallback) into STORAGE/NAME/checkpoint_*/
    driver:  the best checkpoint (validation accuracy, or micro-F1) -> scored_result -> the run folder

Guarantees:

* The run folder is the one a local ``gpt2clf train`` writes (``config.yaml``, ``model/``,
  ``metrics.json``, ``logs/metrics.csv``, ``report.html``), written by the driver after training
  through :mod:`gpt2clf.files` (atomic), so ``evaluate``, ``predict`` and ``serve`` read it.
  ``checkpoints/`` holds Ray's checkpoints instead of ``last.ckpt``/``best.ckpt`` when the storage
  path is the run folder (the default).
* Checkpoints are written at epoch ends into the storage path (``--storage-path``, a folder every
  node sees or a URI such as s3://bucket/runs; default ``RUN_DIR/checkpoints``) under a name made
  from the run folder's path. Ray keeps the latest and the best. A worker that dies (a crash, an
  out-of-memory kill, a lost node) makes Ray restart the whole worker group from the latest
  checkpoint it has registered, up to :data:`MAX_FAILURES` times (Ray registers a report at its
  next poll of the workers, every 2 s: a worker that dies within that window restarts from the
  checkpoint before); ``--resume`` after the driver itself stopped continues from the same checkpoints.
* Ray Train's current API generation (``RAY_TRAIN_V2_ENABLED``, on by default in Ray 2.60) is the
  one used; the older one is refused in one line. The cluster connection (a new local cluster, or
  ``--address`` with this machine's token) is :func:`gpt2clf.distributed.cluster.ray_cluster`'s.
* The frozen-backbone feature cache works: each worker reads it from the cache folder
  (``--cache-dir`` or ``GPT2CLF_CACHE``, passed on to the workers); the first worker on a machine
  computes it under the cache's lock while the others wait, then they read it.
* On a cluster of several machines the workers get the data and the model from the driver through
  Ray's object store; only the feature cache folder and the storage path must be reachable from
  them (each machine computes its own cache otherwise).

Ray is imported lazily (the ``ray`` extra); without it ``--engine ray`` says in one line how to install it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2clf.config import Config
from gpt2clf.distributed.cluster import import_ray, ray_cluster
from gpt2clf.distributed.settings import ClusterSettings
from gpt2clf.errors import ConfigError, UserError
from gpt2clf.files import atomic_write_text

if TYPE_CHECKING:
    from gpt2clf.training.plan import RunSetup

__all__ = ["MAX_FAILURES", "import_ray_train", "plan_on_ray", "ray_run_config", "train_on_ray"]

MAX_FAILURES = 3
"""How many times a run restarts its workers from the latest checkpoint after one of them fails."""

CHECKPOINT_FILE = "checkpoint.ckpt"  # RayTrainReportCallback.CHECKPOINT_NAME: the Lightning checkpoint
METRICS_FILE = "metrics.csv"  # beside it in each Ray checkpoint: the run's logged metrics so far

# Passed on to the workers so they read the same feature cache and hub settings as the driver.
WORKER_ENV_VARS = ("GPT2CLF_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")


def import_ray_train() -> Any:
    """The ``ray`` module with Ray Train's current API, or a one-line error saying how to get it."""
    ray = import_ray()  # the install hint when Ray is missing
    try:
        import ray.train
        from ray.train.v2._internal.constants import is_v2_enabled
    except ImportError:
        raise UserError('train --engine ray needs Ray Train: pip install "gpt2clf[ray]"') from None
    if not is_v2_enabled():
        raise ConfigError("--engine ray uses Ray Train's current API; unset RAY_TRAIN_V2_ENABLED=0")
    return ray


def ray_run_config(config: Config, cluster: ClusterSettings) -> Config:
    """``config`` as the Ray workers run it: Ray places the processes (refused: --devices, --strategy,
    --num-nodes), and the accelerator follows ``--gpus-per-worker`` (refused: a contradicting --accelerator)."""
    if cluster.engine != "ray":
        raise ConfigError("train_on_ray needs ClusterSettings(engine='ray')")
    placed = [flag for flag, value, default in (("--devices", str(config.devices), "auto"),
                                                 ("--strategy", config.strategy, "auto"),
                                                 ("--num-nodes", config.num_nodes, 1)) if value != default]
    if placed:
        raise ConfigError(f"with --engine ray, Ray places the training processes: drop {', '.join(placed)} and "
                          "use --workers (and --gpus-per-worker)")
    accelerator = "gpu" if cluster.gpus_per_worker > 0 else "cpu"
    if config.accelerator not in ("auto", accelerator, "cuda" if accelerator == "gpu" else accelerator):
        raise ConfigError(f"--accelerator {config.accelerator} with --engine ray: the workers use "
                          f"{'GPUs' if accelerator == 'gpu' else 'CPUs'} because --gpus-per-worker is "
                          f"{cluster.gpus_per_worker:g}; set --gpus-per-worker (or drop --accelerator)")
    return config.updated(accelerator=accelerator)


def experiment_name(run_dir: Path) -> str:
    """The name of a run's checkpoints in the storage path: the run folder's name and a hash of its absolute
    path (two runs that share a storage path never mix their checkpoints; --resume finds them again)."""
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:10]
    return f"gpt2clf-{run_dir.name or 'run'}-{digest}"


def storage_location(cluster: ClusterSettings, run_dir: Path) -> str:
    """Where checkpoints go: ``--storage-path`` (a local folder made absolute, or a URI), else
    ``RUN_DIR/checkpoints``."""
    if cluster.storage_path is None:
        return str(run_dir.resolve() / "checkpoints")
    if "://" in cluster.storage_path:
        return cluster.storage_path
    return str(Path(cluster.storage_path).expanduser().resolve())


def plan_on_ray(config: Config, cluster: ClusterSettings, *, output_dir: str | Path | None = None,
                report: bool = True) -> dict[str, Any]:
    """``--dry-run --engine ray``: the usual plan and estimate (one process on this machine), and what would run
    where under ``"cluster"`` (workers, CPUs and GPUs each, address, storage path). Starts no cluster."""
    import torch

    from gpt2clf.training.plan import plan_run

    config = ray_run_config(config, cluster)
    # The estimate is measured here; GPU workers need not share the driver's machine (nor its lack of GPUs).
    here = config if config.accelerator == "cpu" or torch.cuda.is_available() else config.updated(accelerator="cpu")
    plan = plan_run(here, report=report)
    workers: int | str = cluster.workers if cluster.workers is not None else (
        "one per CPU of the cluster" if cluster.gpus_per_worker == 0 else "one per --gpus-per-worker of its GPUs")
    plan["cluster"] = {
        "engine": "ray",
        "accelerator": config.accelerator,
        "workers": workers,
        "cpus_per_worker": 1,
        "gpus_per_worker": cluster.gpus_per_worker,
        "address": cluster.address or "a new Ray cluster on this machine",
        "storage_path": (storage_location(cluster, Path(output_dir)) if output_dir is not None
                         else cluster.storage_path or "RUN_DIR/checkpoints"),
        "max_failures": MAX_FAILURES,
        "estimate_note": "the estimate is for one process on this machine; N workers share each epoch's batches",
    }
    return plan


def train_on_ray(config: Config, output_dir: str | Path, cluster: ClusterSettings, *, overwrite: bool = False,
                 resume: bool = False, notify: Callable[[str], None] | None = None, report: bool = True,
                 callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train ``config`` on a Ray cluster and write the run folder ``output_dir``; return its metrics.

    ``cluster`` says where (:class:`gpt2clf.config.ClusterSettings`: workers, GPUs each, address, storage
    path). ``overwrite`` and ``resume`` work as in :func:`gpt2clf.training.loop.train`; ``resume`` also picks
    up the checkpoints a stopped driver left in the storage path. ``notify`` receives one line saying how many
    workers run and where the checkpoints go. ``callbacks``: extra Lightning callbacks every worker runs
    (they must pickle). The metrics are those of a local run, plus ``ray`` (workers, storage, checkpoint).

    Example::

        >>> from gpt2clf import Config
        >>> from gpt2clf.distributed import ClusterSettings
        >>> from gpt2clf.distributed.train import train_on_ray
        >>> train_on_ray(Config(backbone="gpt2", epochs=1), "runs/ray",
        ...              ClusterSettings(engine="ray", workers=2))  # doctest: +SKIP
    """
    from gpt2clf.training.plan import (
        RUN_MARKER,
        check_run_dir,
        checked_config,
        resolved_config,
        resumed_config,
        set_up_run,
    )

    import_ray_train()
    say = notify or (lambda line: None)
    config = ray_run_config(config, cluster)
    run_dir = Path(output_dir).resolve()
    check_run_dir(run_dir, overwrite=overwrite, resume=resume)
    if resume:
        config = resumed_config(run_dir, config)
    # GPU workers need not share the driver's machine (or its GPUs): only CPU runs are checked here.
    config = checked_config(config) if config.accelerator == "cpu" else resolved_config(config)
    storage, name = storage_location(cluster, run_dir), experiment_name(run_dir)
    _check_storage(storage, name, overwrite=overwrite, resume=resume)
    env_vars = {k: os.environ[k] for k in WORKER_ENV_VARS if k in os.environ}
    with ray_cluster(cluster.address, env_vars=env_vars) as ray:
        # Before the data is read and config.yaml written: a refusal leaves no run folder behind.
        workers = _worker_count(ray, cluster, can_grow=cluster.address is not None)
        setup = set_up_run(config)  # data tokenized and model built once, here; sent to the workers
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / RUN_MARKER)
        say(f"training on Ray: {workers} worker(s), {cluster.gpus_per_worker:g} GPU(s) each, checkpoints in "
            f"{storage}/{name}")
        started = time.perf_counter()
        result = _fit_on_workers(ray, setup, workers, cluster, storage, name, callbacks)
        train_seconds = time.perf_counter() - started
    return _write_run(run_dir, setup, result, train_seconds=train_seconds, report=report,
                      ray_facts={"workers": workers, "gpus_per_worker": cluster.gpus_per_worker,
                                 "storage_path": f"{storage}/{name}", "address": cluster.address})


def _check_storage(storage: str, name: str, *, overwrite: bool, resume: bool) -> None:
    """A new run (not ``resume``) must not silently continue checkpoints left in the storage path by an earlier
    run of the same folder: refused, or with ``overwrite`` deleted first."""
    import pyarrow.fs

    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
    except (pyarrow.ArrowInvalid, OSError) as err:
        raise ConfigError(f"--storage-path {storage}: {str(err).splitlines()[0]}") from None
    path = f"{root.rstrip('/')}/{name}"
    if resume or filesystem.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return
    if not overwrite:
        raise UserError(f"{storage}/{name} holds checkpoints of an earlier run of this folder; pass --resume to "
                        "continue it or --overwrite to start again")
    filesystem.delete_dir(path)


def _worker_count(ray: Any, cluster: ClusterSettings, *, can_grow: bool) -> int:
    """``--workers``, or as many as the cluster's CPUs (GPUs, with --gpus-per-worker) allow; refused when the
    cluster cannot place them (Ray would wait for them for ever), unless it ``can_grow`` (one at --address may
    autoscale)."""
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    fits = int(gpus // cluster.gpus_per_worker) if cluster.gpus_per_worker else cpus
    workers = cluster.workers or max(1, min(fits, cpus))
    if not can_grow and (workers > cpus or (cluster.gpus_per_worker and workers * cluster.gpus_per_worker > gpus)):
        raise ConfigError(f"--workers {workers} with {cluster.gpus_per_worker:g} GPU(s) each needs {workers} CPUs "
                          f"and {workers * cluster.gpus_per_worker:g} GPUs, but this machine's Ray cluster has "
                          f"{cpus} CPUs and {gpus:g} GPUs; use fewer --workers")
    return workers


def _fit_on_workers(ray: Any, setup: RunSetup, workers: int, cluster: ClusterSettings, storage: str, name: str,
                    callbacks: Sequence[Any]) -> Any:
    """Run :func:`_train_worker` on ``workers`` Ray Train workers; the Ray Result (its error raised, if any)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from gpt2clf.training.loop import monitored_metric

    config = setup.config
    use_gpu = cluster.gpus_per_worker > 0
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": config, "data": ray.put(setup.data), "model": ray.put(setup.model),
                           "callbacks": list(callbacks)},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 1, **({"GPU": cluster.gpus_per_worker}
                                                                        if use_gpu else {})}),
        run_config=RunConfig(name=name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=MAX_FAILURES),
                             # The latest checkpoint is always kept too (resuming needs it).
                             checkpoint_config=CheckpointConfig(num_to_keep=1,
                                                                checkpoint_score_attribute=monitored_metric(config),
                                                                checkpoint_score_order="max")),
    )
    return trainer.fit()


def _train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the local run's module, data and trainer settings under Ray's DDP strategy."""
    import lightning.pytorch as pl
    import ray
    import ray.train
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

    from gpt2clf.training.inputs import attach_inputs, seed_all
    from gpt2clf.training.loop import ClassificationDataModule, ClassificationModule, trainer_arguments

    config: Config = loop_config["config"]
    data, model = ray.get(loop_config["data"]), ray.get(loop_config["model"])
    seed_all(config.seed)
    if config.compile:
        model.compile(dynamic=True)
    # Chosen again for this worker's device; with a feature cache, read from the cache folder (computed once per
    # machine under its lock).
    inputs = attach_inputs(data, model, config)
    module = ClassificationModule(model, config, inputs)
    arguments = trainer_arguments(config, None, enable_progress_bar=False)
    root = Path(arguments["default_root_dir"])
    checkpoint = ray.train.get_checkpoint()
    try:
        with checkpoint.as_directory() if checkpoint else contextlib.nullcontext(None) as restored:
            history = _read_rows(Path(restored) / METRICS_FILE) if restored else []
            arguments.update(
                accelerator=config.accelerator, devices="auto", num_nodes=1, strategy=RayDDPStrategy(),
                plugins=[RayLightningEnvironment()], enable_checkpointing=False,
                logger=CSVLogger(save_dir=root, name="logs", version=""),
                callbacks=[*(c for c in arguments["callbacks"] if not isinstance(c, ModelCheckpoint)),
                           _report_callback(history), *loop_config["callbacks"]])
            trainer = prepare_trainer(pl.Trainer(**arguments))
            trainer.fit(module, datamodule=ClassificationDataModule(data, config),
                        ckpt_path=str(Path(restored) / CHECKPOINT_FILE) if restored else None, weights_only=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _report_callback(history: list[dict[str, str]]) -> Any:
    """Ray's epoch-end report callback (its class is defined here: ray is imported only on the workers)."""
    from ray.train.lightning import RayTrainReportCallback

    class ReportWithMetrics(RayTrainReportCallback):
        """Ray's epoch-end checkpoint report, with the run's ``metrics.csv`` so far beside the Lightning checkpoint
        (rows of the attempts before a restart included), so the driver can write ``logs/metrics.csv``."""

        def __init__(self, history: list[dict[str, str]]) -> None:
            super().__init__()
            self.history = history

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            # The parent writes its checkpoint into this folder and reports the whole folder.
            folder = Path(self.tmpdir_prefix, str(trainer.current_epoch))
            folder.mkdir(parents=True, exist_ok=True)
            if trainer.is_global_zero and trainer.logger is not None:
                trainer.logger.save()
                logged = _read_rows(Path(trainer.logger.experiment.metrics_file_path))
                (folder / METRICS_FILE).write_text(_rows_csv([*self.history, *logged]))
            super().on_train_epoch_end(trainer, pl_module)

    return ReportWithMetrics(history)


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _rows_csv(rows: list[dict[str, str]]) -> str:
    """Rows as CSV with the union of their columns (Lightning's order: first seen first)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _write_run(run_dir: Path, setup: RunSetup, result: Any, *, train_seconds: float, report: bool,
               ray_facts: dict[str, Any]) -> dict[str, Any]:
    """The run folder from Ray's result: the best checkpoint's weights scored on the driver, like a local run."""
    import torch

    from gpt2clf.training.loop import monitored_metric, scored_result, write_run_results

    config, prepared, model = setup.config, setup.data, setup.model
    metric = monitored_metric(config)
    best = result.get_best_checkpoint(metric, "max") or result.checkpoint
    if best is None:
        raise UserError("the Ray run finished without a checkpoint; nothing to write")
    best_metrics = next((m for c, m in result.best_checkpoints or [] if c.path == best.path), {})
    setup.inputs.prepare(prepared, model)  # the feature cache, if any: read from the cache folder
    device = torch.device("cuda" if config.accelerator == "gpu" and torch.cuda.is_available() else "cpu")
    with best.as_directory() as folder:
        fit_result = scored_result(config, model, prepared, best_checkpoint=Path(folder) / CHECKPOINT_FILE,
                                   best_score=best_metrics.get(metric), train_seconds=train_seconds,
                                   epochs_completed=int(result.metrics.get("epoch", -1)) + 1, device=device)
    with result.checkpoint.as_directory() as latest:
        logged = Path(latest) / METRICS_FILE
        if logged.is_file():
            atomic_write_text(run_dir / "logs" / METRICS_FILE, logged.read_text())
    fit_result.metrics["ray"] = {**ray_facts, "best_checkpoint": best.path}
    write_run_results(run_dir, fit_result, report=report)
    return fit_result.metrics
