"""Training: the Lightning module, the data module, and the ``fit`` and ``train`` entry points.

The model (:mod:`gpt2clf.model.classifier`) knows nothing of training; this module wraps it in a
:class:`ClassificationModule` (loss, AdamW with two learning-rate groups, warmup + decay,
gradient clipping that works with the fused AdamW under autocast, metrics) and hands the
loop, precision, DDP, checkpoints, progress bar and loggers to Lightning.

* :func:`fit` trains from a Config and, optionally, texts in memory, and returns the model of
  the best validation epoch with its figures (:class:`FitResult`); it needs no run folder.
* :func:`train` writes a run folder on top of :func:`fit`.

Before anything runs, :mod:`gpt2clf.training.plan` refuses in one line what this machine cannot
run (an absent GPU, an unknown strategy, float16 on a CPU, ...), an output folder that holds
a run, or a resumed run whose config changed, and resolves precision ``auto`` for the device;
:mod:`gpt2clf.training.inputs` tokenizes the data, builds the model and fills the feature cache.

Reproducibility. Lightning alone does not give equal metrics after a resume (the RNG
state is not checkpointed and a sampler seeded from the global RNG replays epoch 0's order).
Here every epoch's shuffle is derived from ``(seed, epoch)`` by our own sampler, the RNGs are
reseeded from ``(seed, epoch, rank)`` at each epoch start, and the Python, NumPy and torch RNG
states also travel in every checkpoint. Checkpoints are written at epoch ends, so a run
killed at any moment resumes from the last finished epoch and replays the same batches.

Multi-label (``multi_label``): one sigmoid per label and binary cross-entropy on multi-hot
targets; checkpoints follow the validation micro-F1 at threshold 0.5 (``val_micro_f1``), and
after training each label's decision threshold is tuned on the validation split
(:func:`gpt2clf.infer.evaluation.tune_thresholds`) and saved with the model.

Run folder layout::

    RUN_DIR/config.yaml          the full Config of the run
    RUN_DIR/checkpoints/         last.ckpt (resume) and best.ckpt (best validation accuracy)
    RUN_DIR/logs/metrics.csv     per-step and per-epoch metrics (TensorBoard too when installed)
    RUN_DIR/metrics.json         best validation and final test figures
    RUN_DIR/model/               the self-contained model folder (best weights)
    RUN_DIR/report.html          one self-contained page: config, data, curves, metrics, errors
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gpt2clf.config import Config
from gpt2clf.data.batching import (
    LengthGroupedSampler,
)
from gpt2clf.data.splits import SplitSets
from gpt2clf.data.text_dataset import DatasetSplits
from gpt2clf.errors import UserError
from gpt2clf.files import atomic_write_json
from gpt2clf.infer.evaluation import (
    EvaluationResult,
    compute_metrics,
    compute_multilabel_metrics,
    score_probabilities,
    tune_thresholds,
)
from gpt2clf.model.classifier import GPT2Classifier
from gpt2clf.model.folder import TrainingRecord, save_model
from gpt2clf.model.fusion import Fusion, TfidfModel, choose_fusion, refit_fusion
from gpt2clf.training.inputs import (
    InputPipeline,
    PreparedData,
    TokenInputs,
    compute_device,
    seed_all,
    split_logits,
)
from gpt2clf.training.optimization import fused_adamw_supported, lr_lambda, parameter_rates, rng_states, set_rng_states
from gpt2clf.training.plan import (
    RUN_MARKER,
    RunSetup,
    check_run_dir,
    checked_config,
    describe_estimate,
    estimate_seconds,
    is_worker_process,
    plan_run,
    resumed_config,
    set_up_run,
)

__all__ = ["ClassificationDataModule", "ClassificationModule", "FitResult", "build_trainer", "fit", "fit_run",
           "monitored_metric", "scored_result", "train", "trainer_arguments", "write_run_results"]

# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------


class ClassificationDataModule(pl.LightningDataModule):
    """Dataloaders with dynamic padding; training batches are length-grouped and rank-aware.

    Datasets and collator come from the data's input pipeline (``data.inputs``: token ids or cached
    states). The sampler shards the data across DDP ranks itself (Lightning's automatic
    DistributedSampler is switched off), so length grouping survives multi-GPU training.
    """

    def __init__(self, data: PreparedData, config: Config) -> None:
        super().__init__()
        self.data = data
        self.config = config
        self.collate = data.inputs.collator(data, config.padding_side)

    def _dataset(self, split: str):
        return self.data.inputs.dataset(self.data, split)

    def _loader(self, dataset, *, train: bool) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        batch_size = self.config.batch_size if train else self.config.effective_eval_batch_size
        sampler = LengthGroupedSampler(
            dataset.lengths, batch_size, shuffle=train, group_by_length=self.config.group_by_length or not train,
            seed=self.config.seed, num_replicas=world, rank=rank,
        )
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=self.collate,
                          num_workers=self.config.num_workers, persistent_workers=self.config.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("validation"), train=False)


# ---------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------


class ClassificationModule(pl.LightningModule):
    """Cross-entropy fine-tuning of a :class:`GPT2Classifier` with AdamW.

    ``inputs`` is the run's input pipeline (the data's ``inputs``), which turns a collated batch into
    logits: token ids through the whole model (the default), or cached states through the part above them.
    """

    def __init__(self, model: GPT2Classifier, config: Config, inputs: InputPipeline | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.inputs: InputPipeline = inputs if inputs is not None else TokenInputs()
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._val_index: list[torch.Tensor] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.inputs.logits(self.model, batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        if self.config.multi_label:  # one sigmoid per label against the multi-hot target
            loss = F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float())
        else:
            loss = F.cross_entropy(logits.float(), batch["labels"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        if self.global_step % self.trainer.log_every_n_steps == 0:  # only the steps the logger writes
            self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=False)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch).float()
        self._val_logits.append(logits)
        self._val_labels.append(batch["labels"])
        self._val_index.append(batch["index"])

    def on_validation_epoch_end(self) -> None:
        if not self._val_logits:
            return
        logits, labels, index = (torch.cat(parts) for parts in (self._val_logits, self._val_labels, self._val_index))
        for parts in (self._val_logits, self._val_labels, self._val_index):
            parts.clear()
        if self.trainer.world_size > 1:  # score every rank's share together, each document once
            logits, labels, index = (self.all_gather(part).flatten(0, 1) for part in (logits, labels, index))
            once = first_occurrences(index)  # the sampler pads the ranks' shares by repeating documents
            logits, labels = logits[once], labels[once]
        if self.config.multi_label:
            loss = float(F.binary_cross_entropy_with_logits(logits.cpu(), labels.cpu().float()))
            result = compute_multilabel_metrics(torch.sigmoid(logits.cpu()), labels.cpu().long().tolist(),
                                                self.model.spec.label_names)
            self.log_dict({"val_micro_f1": result.micro_f1, "val_macro_f1": result.macro_f1,
                           "val_subset_accuracy": result.subset_accuracy, "val_loss": loss},
                          prog_bar=True, rank_zero_only=False, sync_dist=False)
            return
        result = compute_metrics(logits.cpu(), labels.cpu().tolist(), self.model.spec.label_names)
        self.log_dict({"val_acc": result.accuracy, "val_macro_f1": result.macro_f1, "val_loss": result.loss},
                      prog_bar=True, rank_zero_only=False, sync_dist=False)

    def on_fit_start(self) -> None:
        # from_pretrained returns the backbone in eval mode and Lightning 2.x keeps each module's
        # mode: put every trainable part in train mode (dropout on), the frozen part in eval mode.
        self.model.train()

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Dropout masks depend only on (seed, epoch, rank), never on what ran before, so a
        # resumed run draws exactly what an uninterrupted one would. (Not on_train_epoch_start:
        # Lightning skips that hook for the first epoch after resuming from an epoch-end checkpoint.)
        if batch_idx == 0:
            seed_all(self.config.seed * 1_000_003 + self.current_epoch * 101 + self.global_rank)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gpt2clf_rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "gpt2clf_rng_states" in checkpoint:
            set_rng_states(checkpoint["gpt2clf_rng_states"])

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip the gradient norm to ``gradient_clip``, also for the fused AdamW under bf16 autocast.

        Lightning's mixed-precision plugin refuses to clip for an optimizer that could unscale
        gradients itself (fused AdamW), even under bf16, where nothing is scaled. Here nothing
        is scaled whenever the optimizer is fused (16-mixed with clipping uses the foreach one,
        see :meth:`configure_optimizers`), so the gradients are clipped directly.
        """
        if not gradient_clip_val:
            return
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                                gradient_clip_algorithm=gradient_clip_algorithm)

    def configure_optimizers(self):
        cfg = self.config
        groups = []
        for params, lr in parameter_rates(self.model, cfg):
            params = [p for p in params if p.requires_grad]
            # No weight decay on biases and LayerNorm gains: they are 1-D.
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]
            groups += [{"params": decay, "lr": lr, "weight_decay": cfg.weight_decay},
                       {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        # Fused AdamW unscales fp16 gradients inside its step, so clipping them first would clip
        # scaled values: under 16-mixed with clipping, take the foreach AdamW that Lightning unscales.
        scaled_clipping = cfg.precision.startswith("16") and cfg.gradient_clip is not None
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate,
                                      fused=fused_adamw_supported(groups) and not scaled_clipping)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(cfg.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.lr_schedule, warmup, total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def first_occurrences(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value of ``index``, in order of the values.

    >>> first_occurrences(torch.tensor([3, 1, 3, 0, 1])).tolist()
    [3, 1, 0]
    """
    values, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(len(index), device=index.device)
    first = torch.full((len(values),), len(index), dtype=positions.dtype, device=index.device)
    return first.scatter_reduce(0, inverse, positions, reduce="amin")


# ---------------------------------------------------------------------------------------
# the whole job
# ---------------------------------------------------------------------------------------


def monitored_metric(config: Config) -> str:
    """The validation figure that picks the best epoch (and early stopping): accuracy, or micro-F1
    at threshold 0.5 for multi-label runs."""
    return "val_micro_f1" if config.multi_label else "val_acc"


def build_trainer(config: Config, run_dir: Path | None, *, enable_progress_bar: bool = True) -> pl.Trainer:
    """The Lightning trainer; without ``run_dir`` (in-memory :func:`fit`), checkpoints go to a temporary folder
    that the caller removes, and nothing is logged."""
    return pl.Trainer(**trainer_arguments(config, run_dir, enable_progress_bar=enable_progress_bar))


def trainer_arguments(config: Config, run_dir: Path | None, *, enable_progress_bar: bool = True) -> dict[str, Any]:
    """The keyword arguments of :func:`build_trainer`'s ``pl.Trainer`` (callbacks, loggers, loop settings), for
    callers that run the same training elsewhere (:mod:`gpt2clf.distributed.train` swaps in Ray's strategy)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    root = run_dir if run_dir is not None else Path(tempfile.mkdtemp(prefix="gpt2clf-fit-"))
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=root / "checkpoints", filename="best", monitor=monitored_metric(config), mode="max",
                        save_top_k=1, save_last=run_dir is not None, enable_version_counter=False),
    ]
    if enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1 if sys.stderr.isatty() else 50))
    if config.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=monitored_metric(config), mode="max",
                                       patience=config.early_stopping_patience))
    loggers: list[Any] | bool = False
    if run_dir is not None:
        loggers = [CSVLogger(save_dir=run_dir, name="logs", version="")]
        try:
            import tensorboard  # noqa: F401
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(save_dir=run_dir, name="logs", version="tensorboard"))
        except ImportError:
            pass
    devices: Any = config.devices
    return dict(
        accelerator=config.accelerator, devices=devices, strategy=config.strategy, num_nodes=config.num_nodes,
        precision=config.precision, max_epochs=config.epochs, gradient_clip_val=config.gradient_clip,
        accumulate_grad_batches=config.accumulate_grad_batches, callbacks=callbacks, logger=loggers,
        default_root_dir=root, use_distributed_sampler=False, num_sanity_val_steps=0,
        enable_progress_bar=enable_progress_bar, enable_model_summary=False, log_every_n_steps=10,
    )


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model (best validation epoch) and its figures."""

    model: GPT2Classifier
    tokenizer: Any
    config: Config
    """The run's config with precision and paths resolved (what a run folder records)."""
    metrics: dict[str, Any]
    """``validation`` and ``test`` figures (accuracy, macro_f1, loss, documents), ``best_val_acc``,
    ``epochs_completed``, ``train_seconds`` and ``parameters``; ``test`` is None without a test set."""
    data: PreparedData
    test_probabilities: torch.Tensor | None = None
    """The model's class probabilities on the test set (fused with TF-IDF when it has fusion), in
    test order (None without a test set)."""
    fusion: Fusion | None = None
    """The TF-IDF model and its mixing weight, with ``fusion: tfidf``."""
    thresholds: list[float] | None = None
    """Multi-label: each label's decision threshold, tuned on the validation split (None otherwise)."""

    def save(self, folder: str | Path) -> None:
        """Write the model folder (weights, tokenizer, config, fusion, thresholds and where the data came
        from) with :func:`gpt2clf.model.folder.save_model`."""
        save_model(folder, self.model, self.tokenizer, self.record(), fusion=self.fusion)

    def record(self) -> TrainingRecord:
        """What the model folder records about this training run."""
        thresholds = (None if self.thresholds is None
                      else dict(zip(self.model.label_names, self.thresholds, strict=True)))
        return TrainingRecord(config=self.config.to_dict(), data_source=self.data.source,
                              test_metrics=self.metrics.get("test"), thresholds=thresholds)


def fit(config: Config, data: DatasetSplits | SplitSets | None = None, *, run_dir: str | Path | None = None,
        resume: bool = False, enable_progress_bar: bool = False,
        notify: Callable[[str], None] | None = None, estimate_report: bool = False) -> FitResult:
    """Train per ``config`` and return the model of the best validation epoch with its figures.

    ``data`` gives the texts in memory (see :func:`gpt2clf.data.splits.labelled_texts`); None reads
    the dataset ``config`` names. ``run_dir`` receives checkpoints and logs (None: a temporary
    folder, removed afterwards). Nothing else is written: :func:`train` writes the run folder.
    ``resume`` continues from ``run_dir``'s ``checkpoints/last.ckpt`` (from the first epoch if there is none yet).
    ``notify(line)``, when given, receives the estimated wall time before training starts (with
    ``estimate_report``, including the report that :func:`train` writes afterwards).

    Example::

        >>> from gpt2clf import Config, fit
        >>> from gpt2clf.data.splits import labelled_texts
        >>> data = labelled_texts(["good film", "bad film", ...], ["pos", "neg", ...])  # doctest: +SKIP
        >>> result = fit(Config(backbone="gpt2", epochs=1), data)                       # doctest: +SKIP
        >>> result.metrics["validation"]["accuracy"]                                    # doctest: +SKIP
    """
    setup = set_up_run(checked_config(config), data, report=estimate_report)
    return fit_run(setup, run_dir=run_dir, resume=resume, enable_progress_bar=enable_progress_bar, notify=notify)


def fit_run(setup: RunSetup, *, run_dir: str | Path | None = None, resume: bool = False,
            enable_progress_bar: bool = False, notify: Callable[[str], None] | None = None) -> FitResult:
    """:func:`fit` from its run setup (:func:`gpt2clf.training.plan.set_up_run`): announce the estimate, fill
    the input pipeline (the feature cache pass, if any), train, and score the best epoch."""
    config, prepared, model = setup.config, setup.data, setup.model
    last = Path(run_dir or ".") / "checkpoints" / "last.ckpt"
    resume_from = last if resume and last.is_file() else None
    estimate = _announce_estimate(setup, notify, resume_from)
    if config.compile:
        model.compile(dynamic=True)  # in place: parameter names (and saved folders) stay the same
    module = ClassificationModule(model, config, setup.inputs)
    setup.inputs.prepare(prepared, model, show_progress=enable_progress_bar)
    trainer = build_trainer(config, Path(run_dir) if run_dir is not None else None,
                            enable_progress_bar=enable_progress_bar)
    started = time.perf_counter()
    try:
        try:
            # weights_only: resuming never unpickles anything but tensors and plain containers.
            with warnings.catch_warnings():
                if model.adapter.trained_modules() != [model.backbone]:
                    # The frozen part of the backbone is in eval mode by design (ClassificationModule.on_fit_start).
                    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
                trainer.fit(module, datamodule=ClassificationDataModule(prepared, config),
                            ckpt_path=str(resume_from) if resume_from else None, weights_only=True)
        except SystemExit:
            # Lightning turns Ctrl-C into a graceful shutdown and SystemExit(1); the last
            # epoch's checkpoint is complete and resumable, so report it as an interruption.
            if trainer.interrupted:
                raise KeyboardInterrupt from None
            raise
        except torch.OutOfMemoryError as err:
            raise UserError(f"out of memory on {compute_device(config)} ({str(err).splitlines()[0][:120]}); lower "
                            "--batch-size (with --accumulate-grad-batches to keep the effective batch), "
                            "--max-length, or pass --gradient-checkpointing") from err
        train_seconds = time.perf_counter() - started
        if trainer.interrupted:
            raise KeyboardInterrupt
        if not trainer.is_global_zero:
            return FitResult(model, prepared.tokenizer, config, {}, prepared)
        result = _best_model_result(config, model, prepared, trainer, train_seconds)
        if estimate is not None:  # beside the measured time, so a run folder shows how good the estimate was
            result.metrics["estimated_seconds"] = {k: round(v, 1) if isinstance(v, float) else v
                                                   for k, v in estimate.items()}
        return result
    finally:
        if run_dir is None:
            shutil.rmtree(trainer.default_root_dir, ignore_errors=True)


def _announce_estimate(setup: RunSetup, notify: Callable[[str], None] | None,
                       resume_from: Path | None) -> dict[str, Any] | None:
    """The run's time estimate, passed to ``notify`` as one line (None: no ``notify``, nothing measured)."""
    if notify is None:
        return None
    estimate = estimate_seconds(setup, epochs_done=finished_epochs(resume_from) if resume_from else 0)
    notify(describe_estimate(estimate))
    seed_all(setup.config.seed)  # the measurement drew random numbers: training starts from the seed as without it
    return estimate


def finished_epochs(checkpoint: Path) -> int:
    """How many epochs a Lightning checkpoint saved at the end of an epoch has behind it (read lazily)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return int(state.get("epoch", -1)) + 1


def train(config: Config, output_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
          dry_run: bool = False, enable_progress_bar: bool = True,
          notify: Callable[[str], None] | None = None, report: bool = True) -> dict[str, Any]:
    """Fine-tune per ``config`` and write the run folder; return the metrics (or the plan, dry run).

    The run folder gets ``config.yaml`` (the resolved config), ``checkpoints/``, ``logs/``,
    ``metrics.json``, ``model/`` and, unless ``report`` is False, ``report.html`` (single-label
    runs; see the module docstring). ``notify`` receives the estimated wall time before training starts
    (see :func:`fit`). An ``output_dir`` that holds a run is refused unless ``overwrite`` or ``resume``;
    ``resume`` continues its saved ``config.yaml`` and refuses a ``config`` that differs from it in
    anything but where the run runs (:func:`gpt2clf.training.plan.resumed_config`).
    """
    run_dir = Path(output_dir)
    if dry_run:
        return plan_run(config, report=report)
    worker = is_worker_process()
    if not worker:
        check_run_dir(run_dir, overwrite=overwrite, resume=resume)
    if resume:  # the saved config, with only where the run runs taken from ``config``
        config = resumed_config(run_dir, config)
    config = checked_config(config)
    if not worker:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / RUN_MARKER)
    setup = set_up_run(config, report=report and not config.multi_label)
    result = fit_run(setup, run_dir=run_dir, resume=resume, enable_progress_bar=enable_progress_bar,
                     notify=None if worker else notify)
    if not result.metrics:  # a DDP worker process: rank 0 writes
        return {}
    write_run_results(run_dir, result, report=report)
    return result.metrics


def write_run_results(run_dir: Path, result: FitResult, *, report: bool = True) -> None:
    """What a finished run adds to its run folder: ``model/``, ``metrics.json`` and (single-label runs with a
    test set, unless ``report`` is False) ``report.html``."""
    result.save(run_dir / "model")
    atomic_write_json(run_dir / "metrics.json", result.metrics)
    if report and result.test_probabilities is not None and not result.config.multi_label:
        from gpt2clf.report.run_report import ScoredSplit, write_run_report

        scored = ScoredSplit(result.data.texts["test"], result.data.test.labels, result.test_probabilities,
                             result.data.label_names)
        write_run_report(run_dir, scored=scored)


def _best_model_result(config: Config, model: GPT2Classifier, data: PreparedData, trainer: pl.Trainer,
                       train_seconds: float) -> FitResult:
    """Load the best epoch's weights, score validation and test (fused with TF-IDF, or with tuned thresholds)."""
    checkpoint_cb = trainer.checkpoint_callback
    best_path = checkpoint_cb.best_model_path if checkpoint_cb is not None else ""
    best_score = checkpoint_cb.best_model_score if checkpoint_cb is not None else None
    return scored_result(config, model, data, best_checkpoint=Path(best_path) if best_path else None,
                         best_score=float(best_score) if best_score is not None else None,
                         epochs_completed=trainer.current_epoch, train_seconds=train_seconds,
                         device=trainer.strategy.root_device)


def scored_result(config: Config, model: GPT2Classifier, data: PreparedData, *, best_checkpoint: Path | None,
                  best_score: float | None, epochs_completed: int, train_seconds: float,
                  device: torch.device) -> FitResult:
    """The :class:`FitResult` of a finished training: the weights of the Lightning checkpoint ``best_checkpoint``
    (when it is a file) loaded into ``model``, validation and test scored on ``device`` (fused with TF-IDF, or
    with tuned thresholds), and the run's figures."""
    if best_checkpoint is not None and best_checkpoint.is_file():
        state = torch.load(best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model = model.to(torch.device("cpu")).float()
    model.to(device)
    logits = {split: split_logits(model, data, config, split, device)
              for split in ("validation", "test") if len(getattr(data, split))}
    model.to("cpu")
    scored = _multilabel_scores(data, logits) if config.multi_label else _single_label_scores(config, data, logits)
    metrics: dict[str, Any] = {
        "validation": _figures(scored.validation),
        "test": _figures(scored.test),
        f"best_{monitored_metric(config)}": best_score,
        "epochs_completed": epochs_completed,
        "train_seconds": round(train_seconds, 2),
        "parameters": model.parameter_counts(),
        "precision": config.precision,
    }
    if scored.thresholds is not None:
        metrics["thresholds"] = dict(zip(data.label_names, scored.thresholds, strict=True))
    if scored.fusion is not None:
        fusion = scored.fusion
        components = {split: {name: {**figures, "documents": result.num_documents}
                              for name, figures in result.components.items()}
                      for split, result in (("validation", scored.validation), ("test", scored.test))
                      if result is not None}
        metrics["fusion"] = {"weight": fusion.weight, "mode": fusion.mode, "validation": fusion.validation,
                             "tfidf_splits": list(fusion.tfidf_splits), "tfidf_documents": fusion.tfidf_documents,
                             "components": components}
    return FitResult(model=model, tokenizer=data.tokenizer, config=config, metrics=metrics, data=data,
                     test_probabilities=scored.test_probabilities, fusion=scored.fusion, thresholds=scored.thresholds)


@dataclass
class _Scores:
    """Validation and test results of the best model, as the run reports them."""

    validation: EvaluationResult
    test: EvaluationResult | None
    test_probabilities: torch.Tensor | None
    fusion: Fusion | None = None
    thresholds: list[float] | None = None


def _figures(result: EvaluationResult | None) -> dict[str, Any] | None:
    """The headline figures of a result, as metrics.json records them."""
    if result is None:
        return None
    values = {"accuracy": result.accuracy, "macro_f1": result.macro_f1, "loss": result.loss,
              "documents": result.num_documents}
    if result.multi_label:
        values.update(micro_f1=result.micro_f1, subset_accuracy=result.subset_accuracy,
                      hamming_loss=result.hamming_loss)
    return values


def _single_label_scores(config: Config, data: PreparedData, logits: dict[str, torch.Tensor]) -> _Scores:
    """Softmax probabilities, and with ``fusion: tfidf`` the TF-IDF model chosen (and refit) on validation and
    mixed in; scored by :func:`gpt2clf.infer.evaluation.score_probabilities` (with each part's figures)."""
    network = {split: torch.softmax(values, dim=-1) for split, values in logits.items()}
    fusion = None
    parts = {split: {"network": probabilities} for split, probabilities in network.items()}
    if config.fusion == "tfidf":
        tfidf = TfidfModel.fit(data.texts["train"], data.train.labels, len(data.label_names), seed=config.seed)
        fusion = choose_fusion(tfidf, network["validation"].numpy(), data.texts["validation"], data.validation.labels)
        parts["validation"] = fusion.component_probabilities(network["validation"], data.texts["validation"])
        if config.fusion_refit:  # after the choice, so the validation figures above stay honest
            fusion = refit_fusion(fusion, [*data.texts["train"], *data.texts["validation"]],
                                  [*data.train.labels, *data.validation.labels], len(data.label_names),
                                  seed=config.seed)
        else:
            fusion.tfidf_documents = len(data.texts["train"])
        if "test" in network:
            parts["test"] = fusion.component_probabilities(network["test"], data.texts["test"])
    scored = {split: score_probabilities(parts[split], getattr(data, split).labels, data.label_names)
              for split in parts}
    test = parts.get("test")
    return _Scores(scored["validation"], scored.get("test"),
                   None if test is None else test.get("fused", test["network"]), fusion)


def _multilabel_scores(data: PreparedData, logits: dict[str, torch.Tensor]) -> _Scores:
    """Tune each label's threshold on the validation split, then score validation and test with them."""
    names = data.label_names
    probabilities = {split: torch.sigmoid(values) for split, values in logits.items()}
    thresholds = tune_thresholds(probabilities["validation"].numpy(), data.validation.labels)
    scored = {split: compute_multilabel_metrics(probs, getattr(data, split).labels, names, thresholds)
              for split, probs in probabilities.items()}
    return _Scores(scored["validation"], scored.get("test"), probabilities.get("test"), thresholds=thresholds)
