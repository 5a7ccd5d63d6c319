"""Training: the Lightning module, the data module, and the ``train`` entry point.

The model (:mod:`gpt2clf.model`) knows nothing of training; this module wraps it in a
:class:`ClassificationModule` (loss, AdamW with two learning-rate groups, warmup + decay,
metrics) and hands the loop, precision, DDP, checkpoints, progress bar and loggers to
Lightning.

Reproducibility. Lightning alone does not give equal metrics after a resume (the RNG
state is not checkpointed and a sampler seeded from the global RNG replays epoch 0's order).
Here every epoch's shuffle is derived from ``(seed, epoch)`` by our own sampler, the RNGs are
reseeded from ``(seed, epoch, rank)`` at each epoch start, and the Python, NumPy and torch RNG
states also travel in every checkpoint. Checkpoints are written at epoch ends, so a run
killed at any moment resumes from the last finished epoch and replays the same batches.

Run folder layout::

    RUN_DIR/config.yaml          the full Config of the run
    RUN_DIR/checkpoints/         last.ckpt (resume) and best.ckpt (best validation accuracy)
    RUN_DIR/logs/metrics.csv     per-step and per-epoch metrics (TensorBoard too when installed)
    RUN_DIR/metrics.json         best validation and final test figures
    RUN_DIR/model/               the self-contained model folder (best weights)
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gpt2clf.config import Config
from gpt2clf.data import (
    DatasetSplits,
    LengthGroupedSampler,
    PaddingCollator,
    TextDataset,
    TokenizedDataset,
    load_dataset_splits,
    load_tokenizer,
    stratified_split,
    stratified_subset,
    tokenize_texts,
)
from gpt2clf.errors import ConfigError, PerformanceWarning, UserError
from gpt2clf.evaluation import EvaluationResult, compute_metrics, evaluate_model
from gpt2clf.features import FeatureCollator, cached_features, feature_logits, logits_from_features, use_fused_gelu
from gpt2clf.files import atomic_write_json
from gpt2clf.model import ClassifierSpec, GPT2Classifier

RUN_MARKER = "config.yaml"


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    """Tokenized train / validation / test sets and what is needed to rebuild them."""

    label_names: list[str]
    source: dict[str, Any]
    tokenizer: Any
    train: TokenizedDataset
    validation: TokenizedDataset
    test: TokenizedDataset
    features: dict[str, Any] | None = None
    """Per split, the frozen backbone's cached hidden states (a FeatureDataset), when used."""


def data_split(data: PreparedData, split: str):
    """The dataset a split trains or evaluates on: cached features when present, else tokens."""
    if data.features is not None:
        return data.features[split]
    return getattr(data, split)


def uses_feature_cache(config: Config, model: GPT2Classifier) -> bool:
    """Whether the frozen part of the backbone runs once into a disk cache instead of every step.

    It gives the same hidden states every epoch: the whole backbone with ``freeze=backbone``,
    the layers below the top ``K`` with ``train_top_layers=K`` (when at least one layer is frozen).
    """
    if not config.feature_cache:
        return False
    if config.train_top_layers:
        return config.train_top_layers < len(model.backbone_layers())
    return config.freeze == "backbone" or config.train_top_layers == 0


def compute_device(config: Config) -> torch.device:
    """Where to run the one-off backbone pass of the feature cache."""
    if config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); True when unknown."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def warn_about_slow_settings(config: Config) -> None:
    """bf16 autocast on a CPU without bf16 hardware emulates it: ~30x slower than float32 (BENCHMARKS.md)."""
    if config.precision.startswith("bf16") and compute_device(config).type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(PerformanceWarning(
            f"--precision {config.precision} on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated and "
            "runs many times slower than --precision 32-true"), stacklevel=2)


def attach_features(data: PreparedData, model: GPT2Classifier, config: Config, *,
                    show_progress: bool = False) -> None:
    """Run the frozen backbone over every split once (or load it from the disk cache)."""
    from tqdm.auto import tqdm

    device = compute_device(config)
    model.to(device)
    data.features = {}
    for split in ("train", "validation", "test"):
        with tqdm(desc=f"feature cache, {split}", unit="batch", disable=not show_progress, leave=False,
                  mininterval=0.1 if sys.stderr.isatty() else 30) as bar:

            def progress(done: int, total: int, bar=bar) -> None:
                bar.total = total
                bar.update(done - bar.n)

            data.features[split] = cached_features(
                model, getattr(data, split).input_ids, getattr(data, split).labels, cache_root=config.cache_dir,
                tokenizer_name=config.tokenizer_name, batch_size=config.effective_eval_batch_size, device=device,
                precision=config.precision, max_length=config.max_length, train_top_layers=config.train_top_layers,
                progress=progress)
    model.to("cpu")


def load_splits(config: Config) -> DatasetSplits:
    """The dataset's own train and test splits, as ``config`` names them."""
    return load_dataset_splits(
        train_file=config.train_file, test_file=config.test_file, text_column=config.text_column,
        label_column=config.label_column, data_dir=config.data_dir, strip=config.strip,
        test_ratio=config.test_ratio, seed=config.seed,
    )


def carve_splits(config: Config, splits: DatasetSplits) -> tuple[TextDataset, TextDataset, TextDataset]:
    """Train, validation and test sets: the seeded validation carve-out, then the sample limits."""
    train, validation = stratified_split(splits.train, config.validation_ratio, config.seed)
    return (stratified_subset(train, config.max_train_samples, config.seed),
            stratified_subset(validation, config.max_eval_samples, config.seed),
            stratified_subset(splits.test, config.max_eval_samples, config.seed))


def load_split(config: Config, split: str) -> TextDataset:
    """One of ``train``, ``validation`` or ``test``, exactly as a training run with ``config`` saw it."""
    train, validation, test = carve_splits(config, load_splits(config))
    return {"train": train, "validation": validation, "test": test}[split]


def prepare_data(config: Config, tokenizer=None) -> PreparedData:
    """Load the dataset named by ``config``, carve the validation split, subsample, tokenize."""
    splits = load_splits(config)
    train, validation, test = carve_splits(config, splits)
    if tokenizer is None:
        tokenizer = load_tokenizer(config.tokenizer_name, padding_side=config.padding_side)

    def tokenized(ds) -> TokenizedDataset:
        return TokenizedDataset(tokenize_texts(ds.texts, tokenizer, config.max_length), ds.labels)

    return PreparedData(splits.label_names, splits.source, tokenizer, tokenized(train), tokenized(validation),
                        tokenized(test))


class ClassificationDataModule(pl.LightningDataModule):
    """Dataloaders with dynamic padding; training batches are length-grouped and rank-aware.

    The sampler shards the data across DDP ranks itself (Lightning's automatic
    DistributedSampler is switched off), so length grouping survives multi-GPU training.
    """

    def __init__(self, data: PreparedData, config: Config) -> None:
        super().__init__()
        self.data = data
        self.config = config
        if data.features is not None:
            self.collate = FeatureCollator(config.padding_side)
        else:
            self.collate = PaddingCollator(data.tokenizer.pad_token_id, config.padding_side)

    def _dataset(self, split: str):
        return data_split(self.data, split)

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
def build_model(config: Config, label_names: list[str]) -> GPT2Classifier:
    """The classifier of ``config``: pretrained backbone, our blocks, pooling and head."""
    spec = ClassifierSpec(num_labels=len(label_names), label_names=list(label_names), n_embed=config.n_embed,
                          n_heads=config.n_heads, n_blocks=config.n_blocks, dropout=config.dropout,
                          pooling=config.pooling)
    model = GPT2Classifier.from_backbone(config.backbone, spec)
    positions = max_positions(model)
    if positions is not None and config.max_length > positions:
        raise ConfigError(f"max_length {config.max_length} is more than the backbone's {positions} positions; "
                          f"use --max-length {positions} or less")
    model.set_trainable(config.freeze, config.train_top_layers)
    use_fused_gelu(model)  # the same function as GPT-2's Python GELU, one kernel, less memory
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def max_positions(model: GPT2Classifier) -> int | None:
    """How many positions the backbone has embeddings for (1024 for GPT-2), if it says."""
    cfg = model.backbone.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """Multiplier of the base learning rate at each optimiser step: linear warmup, then decay."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states, in types that ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss], "numpy": [torch.from_numpy(keys.astype(np.int64)), pos,
                                                                   has_gauss, cached],
            "torch": torch.get_rng_state()}


def set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])


def fused_adamw_supported(groups: list[dict[str, Any]]) -> bool:
    """Whether ``AdamW(fused=True)`` takes these parameters: one kernel per step instead of a loop
    over tensors (on CPU the optimiser step took 0.15 s instead of 0.55-3.8 s for GPT-2 small)."""
    params = [p for group in groups for p in group["params"]]
    cpu_fused = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 4)
    return bool(params) and all(
        p.is_floating_point() and (p.device.type == "cuda" or (p.device.type == "cpu" and cpu_fused))
        for p in params)


class ClassificationModule(pl.LightningModule):
    """Cross-entropy fine-tuning of a :class:`GPT2Classifier` with AdamW."""

    def __init__(self, model: GPT2Classifier, config: Config) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self.feature_start_layer: int | None = None
        """With a feature cache of the layers below the top K: the first backbone layer to run."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "hidden_states" in batch:  # feature cache: the frozen (part of the) backbone already ran
            return logits_from_features(self.model, batch["hidden_states"], batch["attention_mask"],
                                        self.feature_start_layer)
        return self.model(batch["input_ids"], batch["attention_mask"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=False)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch).float()
        self._val_logits.append(logits)
        self._val_labels.append(batch["labels"])

    def on_validation_epoch_end(self) -> None:
        if not self._val_logits:
            return
        logits = torch.cat(self._val_logits)
        labels = torch.cat(self._val_labels)
        self._val_logits.clear()
        self._val_labels.clear()
        if self.trainer.world_size > 1:  # score every rank's share together
            logits = self.all_gather(logits).flatten(0, 1)
            labels = self.all_gather(labels).flatten(0, 1)
        result = compute_metrics(logits.cpu(), labels.cpu().tolist(), self.model.spec.label_names)
        self.log_dict({"val_acc": result.accuracy, "val_macro_f1": result.macro_f1, "val_loss": result.loss},
                      prog_bar=True, rank_zero_only=False, sync_dist=False)

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

    def configure_optimizers(self):
        cfg = self.config
        head_lr = cfg.effective_head_learning_rate
        groups = []
        for params, lr in ((self.model.backbone_parameters(), cfg.learning_rate),
                           (self.model.head_parameters(), head_lr)):
            params = [p for p in params if p.requires_grad]
            # No weight decay on biases and LayerNorm gains: they are 1-D.
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]
            groups += [{"params": decay, "lr": lr, "weight_decay": cfg.weight_decay},
                       {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused_adamw_supported(groups))
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(cfg.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.lr_schedule, warmup, total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# ---------------------------------------------------------------------------------------
# the whole job
# ---------------------------------------------------------------------------------------
def is_worker_process() -> bool:
    """True in the extra processes that Lightning's DDP launcher starts (ranks other than 0)."""
    return int(os.environ.get("LOCAL_RANK", 0)) > 0 or int(os.environ.get("NODE_RANK", 0)) > 0


def check_run_dir(run_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse to clobber an existing run unless asked to resume it or overwrite it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output {run_dir} exists and is not a folder; choose another --output")
    holds_run = (run_dir / RUN_MARKER).exists() or (run_dir / "model").exists()
    if resume:
        if not (run_dir / "checkpoints" / "last.ckpt").is_file():
            raise UserError(f"nothing to resume in {run_dir}: no checkpoints/last.ckpt; start it without --resume")
    elif holds_run and not overwrite:
        raise UserError(f"output folder {run_dir} already holds a run; pass --overwrite to replace it, "
                        "--resume to continue it, or choose another --output")
    elif run_dir.is_dir() and any(run_dir.iterdir()) and not holds_run and not overwrite:
        raise UserError(f"output folder {run_dir} is not empty; pass --overwrite or choose another --output")


def make_plan(config: Config, model: GPT2Classifier, data: PreparedData | None,
              data_error: str | None = None) -> dict[str, Any]:
    """A JSON-able summary of what a run will do (printed by ``--dry-run``)."""
    plan: dict[str, Any] = {
        "backbone": config.backbone,
        "model": {"n_embed": model.spec.n_embed, "n_heads": model.spec.n_heads, "n_blocks": config.n_blocks,
                  "pooling": config.pooling, "dropout": config.dropout, "freeze": config.freeze,
                  "train_top_layers": config.train_top_layers},
        "feature_cache": uses_feature_cache(config, model),
        "parameters": model.parameter_counts(),
    }
    if data is not None:
        steps = math.ceil(len(data.train) / config.batch_size / config.accumulate_grad_batches)
        plan["data"] = {"source": data.source, "num_classes": len(data.label_names),
                        "train": len(data.train), "validation": len(data.validation), "test": len(data.test),
                        "train_tokens": int(sum(data.train.lengths))}
        plan["optimizer_steps"] = {"per_epoch": steps, "total": steps * config.epochs}
    else:
        plan["data"] = {"error": data_error}
    plan["config"] = config.to_dict()
    return plan


def build_trainer(config: Config, run_dir: Path, *, enable_progress_bar: bool = True) -> pl.Trainer:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val_acc", mode="max",
                        save_top_k=1, save_last=True, enable_version_counter=False),
    ]
    if enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1 if sys.stderr.isatty() else 50))
    if config.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val_acc", mode="max", patience=config.early_stopping_patience))
    loggers: list[Any] = [CSVLogger(save_dir=run_dir, name="logs", version="")]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=run_dir, name="logs", version="tensorboard"))
    except ImportError:
        pass
    devices: Any = config.devices
    return pl.Trainer(
        accelerator=config.accelerator, devices=devices, strategy=config.strategy, num_nodes=config.num_nodes,
        precision=config.precision, max_epochs=config.epochs, gradient_clip_val=config.gradient_clip,
        accumulate_grad_batches=config.accumulate_grad_batches, callbacks=callbacks, logger=loggers,
        default_root_dir=run_dir, use_distributed_sampler=False, num_sanity_val_steps=0,
        enable_progress_bar=enable_progress_bar, enable_model_summary=False, log_every_n_steps=10,
    )


def train(config: Config, output_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
          dry_run: bool = False, enable_progress_bar: bool = True) -> dict[str, Any]:
    """Fine-tune per ``config``; write the run folder; return the plan (dry run) or the metrics."""
    run_dir = Path(output_dir)
    worker = is_worker_process()
    if not dry_run and not worker:
        check_run_dir(run_dir, overwrite=overwrite, resume=resume)
    seed_all(config.seed)
    warn_about_slow_settings(config)
    if dry_run:
        # A dry run reports what it can: a dataset or tokenizer that cannot be loaded is
        # noted in the plan, and the model is still built (20 Newsgroups has 20 classes).
        try:
            data = prepare_data(config)
        except UserError as err:
            placeholder = [f"class_{i}" for i in range(20 if config.train_file is None else 2)]
            return make_plan(config, build_model(config, placeholder), None, str(err))
        return make_plan(config, build_model(config, data.label_names), data)

    data = prepare_data(config)
    seed_all(config.seed)
    model = build_model(config, data.label_names)
    if not worker:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "config.yaml")
    module = ClassificationModule(model, config)
    if uses_feature_cache(config, model):
        attach_features(data, model, config, show_progress=enable_progress_bar)
        module.feature_start_layer = data.features["train"].start_layer
    trainer = build_trainer(config, run_dir, enable_progress_bar=enable_progress_bar)
    last = run_dir / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    try:
        # weights_only: resuming never unpickles anything but tensors and plain containers.
        trainer.fit(module, datamodule=ClassificationDataModule(data, config),
                    ckpt_path=str(last) if resume else None, weights_only=True)
    except SystemExit:
        # Lightning turns Ctrl-C into a graceful shutdown and SystemExit(1); the last
        # epoch's checkpoint is complete and resumable, so report it as an interruption.
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    train_seconds = time.perf_counter() - started
    if trainer.interrupted:
        raise KeyboardInterrupt
    if not trainer.is_global_zero:
        return {}
    return finish_run(config, run_dir, model, data, trainer, train_seconds)


def score_split(model: GPT2Classifier, data: PreparedData, config: Config, split: str,
                device: torch.device) -> EvaluationResult:
    """Evaluate ``model`` on one prepared split (from cached features when the run used them)."""
    dataset = getattr(data, split)
    if data.features is not None:
        logits = feature_logits(model, data.features[split], batch_size=config.effective_eval_batch_size,
                                device=device, precision=config.precision)
        return compute_metrics(logits, dataset.labels, model.spec.label_names)
    return evaluate_model(model, dataset.input_ids, dataset.labels, batch_size=config.effective_eval_batch_size,
                          pad_token_id=data.tokenizer.pad_token_id, padding_side=config.padding_side,
                          device=device, precision=config.precision)


def finish_run(config: Config, run_dir: Path, model: GPT2Classifier, data: PreparedData, trainer: pl.Trainer,
               train_seconds: float) -> dict[str, Any]:
    """Load the best weights, score the test split, save the model folder and metrics.json."""
    checkpoint_cb = trainer.checkpoint_callback
    best_path = checkpoint_cb.best_model_path if checkpoint_cb is not None else ""
    if best_path and Path(best_path).is_file():
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model = model.to(torch.device("cpu")).float()
    device = trainer.strategy.root_device
    model.to(device)
    validation, test = (score_split(model, data, config, split, device) for split in ("validation", "test"))
    model.to("cpu")
    best_score = checkpoint_cb.best_model_score if checkpoint_cb is not None else None
    metrics = {
        "validation": {"accuracy": validation.accuracy, "macro_f1": validation.macro_f1, "loss": validation.loss,
                       "documents": validation.num_documents},
        "test": {"accuracy": test.accuracy, "macro_f1": test.macro_f1, "loss": test.loss,
                 "documents": test.num_documents},
        "best_val_acc": float(best_score) if best_score is not None else None,
        "epochs_completed": trainer.current_epoch,
        "train_seconds": round(train_seconds, 2),
        "parameters": model.parameter_counts(),
    }
    model.save_pretrained(run_dir / "model", tokenizer=data.tokenizer,
                          extra={"config": config.to_dict(), "data_source": data.source,
                                 "test_metrics": metrics["test"]})
    atomic_write_json(run_dir / "metrics.json", metrics)
    return metrics
