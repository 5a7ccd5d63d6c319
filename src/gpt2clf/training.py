"""Training: the Lightning module, the data module, and the ``fit`` and ``train`` entry points.

The model (:mod:`gpt2clf.model`) knows nothing of training; this module wraps it in a
:class:`ClassificationModule` (loss, AdamW with two learning-rate groups, warmup + decay,
gradient clipping that works with the fused AdamW under autocast, metrics) and hands the
loop, precision, DDP, checkpoints, progress bar and loggers to Lightning.

* :func:`fit` trains from a Config and, optionally, texts in memory, and returns the model of
  the best validation epoch with its figures (:class:`FitResult`); it needs no run folder.
* :func:`train` writes a run folder on top of :func:`fit`.

Before anything runs, :func:`check_hardware` refuses in one line what this machine cannot
run (an absent GPU, an unknown strategy, float16 on a CPU, ...), and precision ``auto`` is
resolved for the device (:func:`gpt2clf.inference.resolve_precision`).

Reproducibility. Lightning alone does not give equal metrics after a resume (the RNG
state is not checkpointed and a sampler seeded from the global RNG replays epoch 0's order).
Here every epoch's shuffle is derived from ``(seed, epoch)`` by our own sampler, the RNGs are
reseeded from ``(seed, epoch, rank)`` at each epoch start, and the Python, NumPy and torch RNG
states also travel in every checkpoint. Checkpoints are written at epoch ends, so a run
killed at any moment resumes from the last finished epoch and replays the same batches.

Multi-label (``multi_label``): one sigmoid per label and binary cross-entropy on multi-hot
targets; checkpoints follow the validation micro-F1 at threshold 0.5 (``val_micro_f1``), and
after training each label's decision threshold is tuned on the validation split
(:func:`gpt2clf.evaluation.tune_thresholds`) and saved with the model.

Run folder layout::

    RUN_DIR/config.yaml          the full Config of the run
    RUN_DIR/checkpoints/         last.ckpt (resume) and best.ckpt (best validation accuracy)
    RUN_DIR/logs/metrics.csv     per-step and per-epoch metrics (TensorBoard too when installed)
    RUN_DIR/metrics.json         best validation and final test figures
    RUN_DIR/model/               the self-contained model folder (best weights)
    RUN_DIR/report.html          one self-contained page: config, data, curves, metrics, errors
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gpt2clf.backbone import use_fused_gelu
from gpt2clf.batching import (
    LengthGroupedSampler,
    PaddingCollator,
    TokenizedDataset,
    Windowing,
    encode_documents,
    load_tokenizer,
)
from gpt2clf.config import Config
from gpt2clf.corpora import DatasetSplits, SplitSets, splits_for
from gpt2clf.errors import ConfigError, PerformanceWarning, UserError
from gpt2clf.evaluation import EvaluationResult, compute_metrics, compute_multilabel_metrics, tune_thresholds
from gpt2clf.feature_cache import (
    FeatureCollator,
    WindowedFeatures,
    cached_features,
    feature_logits,
    logits_from_features,
)
from gpt2clf.files import atomic_write_json
from gpt2clf.fusion import MIN_VALIDATION_DOCUMENTS, Fusion, TfidfModel, choose_fusion, refit_fusion
from gpt2clf.inference import autocast_context, cpu_has_native_bf16, resolve_precision
from gpt2clf.model import ClassifierSpec, GPT2Classifier
from gpt2clf.prediction import batched_logits

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
    texts: dict[str, list[str]] = field(default_factory=dict)
    """Per split, the documents' texts (TF-IDF fusion and reports read them)."""


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
    """Where the run computes (and the feature cache's one-off backbone pass runs)."""
    if config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def warn_about_slow_settings(config: Config) -> None:
    """bf16 autocast on a CPU without bf16 hardware emulates it: ~30x slower than float32 (BENCHMARKS.md)."""
    if config.precision.startswith("bf16") and compute_device(config).type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(PerformanceWarning(
            f"--precision {config.precision} on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated and "
            "runs many times slower than --precision 32-true (or auto)"), stacklevel=2)


def attach_features(data: PreparedData, model: GPT2Classifier, config: Config, *,
                    show_progress: bool = False) -> None:
    """Run the frozen backbone over every split once (or load it from the disk cache)."""
    from tqdm.auto import tqdm

    device = compute_device(config)
    model.to(device)
    data.features = {}
    for split in ("train", "validation", "test"):
        tokens = getattr(data, split)
        if not len(tokens):
            continue
        with tqdm(desc=f"feature cache, {split}", unit="batch", disable=not show_progress, leave=False,
                  mininterval=0.1 if sys.stderr.isatty() else 30) as bar:

            def progress(done: int, total: int, bar=bar) -> None:
                bar.total = total
                bar.update(done - bar.n)

            windowed = config.long_documents == "chunks"
            flat = [w for doc in tokens.input_ids for w in doc] if windowed else tokens.input_ids
            cached = cached_features(
                model, flat, None if windowed else tokens.labels, cache_root=config.cache_dir,
                tokenizer_name=config.tokenizer_name, batch_size=config.effective_eval_batch_size, device=device,
                precision=config.precision, max_length=config.max_length, train_top_layers=config.train_top_layers,
                progress=progress)
            data.features[split] = (WindowedFeatures(cached, [len(doc) for doc in tokens.input_ids], tokens.labels)
                                    if windowed else cached)
    model.to("cpu")


def prepare_data(config: Config, data: DatasetSplits | SplitSets | None = None, tokenizer: Any = None) -> PreparedData:
    """Tokenized train, validation and test sets of ``config``'s dataset, or of ``data`` (in memory).

    ``data`` as :class:`~gpt2clf.corpora.DatasetSplits` (train and test) gets the usual
    validation carve-out and sample limits; as :class:`~gpt2clf.corpora.SplitSets` it is used as is.
    """
    sets = data if isinstance(data, SplitSets) else splits_for(config, data)
    if tokenizer is None:
        tokenizer = load_tokenizer(config.tokenizer_name, padding_side=config.padding_side)

    windowing = Windowing.of(config)

    def tokenized(ds) -> TokenizedDataset:
        return TokenizedDataset(encode_documents(ds.texts, tokenizer, windowing), ds.labels)

    return PreparedData(sets.label_names, sets.source, tokenizer, tokenized(sets.train), tokenized(sets.validation),
                        tokenized(sets.test), texts={name: list(sets.split(name).texts)
                                                     for name in ("train", "validation", "test")})


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
                          pooling=config.pooling,
                          chunk_aggregation=config.chunk_aggregation if config.long_documents == "chunks" else None)
    model = GPT2Classifier.from_backbone(config.backbone, spec)
    # transformers loads a backbone in eval mode; fine-tuning wants its dropout on, whether or not the
    # CLI's time estimate (which calls train()) ran first, so fit() and `gpt2clf train` train alike.
    model.train()
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
    return model.adapter.max_positions


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


def parameter_rates(model: GPT2Classifier, config: Config) -> list[tuple[list[torch.nn.Parameter], float]]:
    """(parameters, learning rate) pairs: the backbone's, by layer with ``layerwise_lr_decay``, then ours.

    With decay ``d`` and ``L`` layers, the top layer (and the final norm after it) keeps
    ``learning_rate``, layer ``i`` gets ``learning_rate * d ** (L - 1 - i)`` (0-based, counting
    from the bottom) and the embeddings ``learning_rate * d ** L``: lower layers hold more
    general features and move less.
    """
    pairs: list[tuple[list[torch.nn.Parameter], float]] = []
    decay = config.layerwise_lr_decay
    if decay is None or decay == 1.0:
        pairs.append((list(model.backbone_parameters()), config.learning_rate))
    else:
        depth = model.adapter.parameter_depths()
        top = max(depth.values(), default=0)
        by_depth: dict[int, list[torch.nn.Parameter]] = {}
        for param in model.backbone_parameters():
            by_depth.setdefault(depth.get(id(param), top), []).append(param)
        for level in sorted(by_depth):
            pairs.append((by_depth[level], config.learning_rate * decay ** (top - level)))
    pairs.append((list(model.head_parameters()), config.effective_head_learning_rate))
    return pairs


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
                                        self.feature_start_layer, batch.get("document_index"))
        return self.model(batch["input_ids"], batch["attention_mask"], batch.get("document_index"))

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
        "precision": config.precision,
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


def check_fusion_data(config: Config, data: PreparedData) -> None:
    """Refuse TF-IDF fusion before training when the validation split is too small to choose its weight."""
    if config.fusion == "tfidf" and len(data.validation) < MIN_VALIDATION_DOCUMENTS:
        raise ConfigError(f"--fusion tfidf chooses its weight on the validation split, which has "
                          f"{len(data.validation)} documents; it needs at least {MIN_VALIDATION_DOCUMENTS} (use more "
                          "data or a larger --validation-ratio, or --fusion none)")


def estimate_seconds(config: Config, model: GPT2Classifier, data: PreparedData) -> dict[str, Any]:
    """The run's wall time on this machine, from a short measured warm-up and the planned tokens.

    One small batch of median-length training documents runs forward and backward (and, when a
    feature cache will be computed, through the backbone alone) on the run's device and
    precision; seconds per token then scale to every epoch's training tokens, the evaluation
    passes and the cache pass. The model's weights do not change (no optimizer step) and its
    gradients are cleared afterwards. A rough figure: expect it within about a factor of 1.5.
    """
    device = compute_device(config)
    lengths = sorted(data.train.lengths)
    if not lengths:
        return {}
    # A chunked document's length counts all its windows, but the backbone reads one window at a time.
    median = min(lengths[len(lengths) // 2], config.max_length)
    rows = min(config.batch_size, 4)
    # Any ids the backbone has embeddings for (a small vocabulary may have fewer than 100).
    vocabulary = model.backbone.get_input_embeddings().num_embeddings
    ids = torch.randint(0, min(100, vocabulary), (rows, median), device=device)
    mask = torch.ones_like(ids)
    cached = uses_feature_cache(config, model)
    start_layer = None
    if cached and config.train_top_layers:
        start_layer = len(model.backbone_layers()) - config.train_top_layers
    model.to(device)
    was_training = model.training
    model.train()

    def step() -> None:
        with autocast_context(device, config.precision):
            if cached:
                with torch.no_grad():
                    hidden = model.backbone_hidden_states(ids, mask, num_layers=start_layer)
                if start_layer is not None:
                    hidden = model.backbone_from_layer(hidden, mask, start_layer)
                logits = model.classify_hidden_states(hidden, mask)
            else:
                logits = model(ids, mask)
        logits.float().sum().backward()

    def timed(fn) -> float:
        fn()  # warm-up: first-call allocations and kernel selection
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / (rows * median)

    try:
        train_per_token = timed(step)
        with torch.inference_mode(), autocast_context(device, config.precision):
            backbone_per_token = timed(lambda: model.backbone_hidden_states(ids, mask, num_layers=start_layer))
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        model.to("cpu")
    if cached:  # the step above included a backbone pass that cached training skips
        train_per_token = max(train_per_token - backbone_per_token, train_per_token * 0.05)
    train_tokens = sum(data.train.lengths)
    eval_tokens = sum(data.validation.lengths) * config.epochs + sum(data.test.lengths)
    all_tokens = train_tokens + sum(data.validation.lengths) + sum(data.test.lengths)
    estimate = {
        "training": config.epochs * train_tokens * train_per_token,
        "evaluation": eval_tokens * train_per_token / 3,  # forward only: about a third of a step
        "feature_cache": all_tokens * backbone_per_token if cached else 0.0,
        "device": device.type,
        "precision": config.precision,
    }
    estimate["total"] = estimate["training"] + estimate["evaluation"] + estimate["feature_cache"]
    return estimate


def describe_estimate(estimate: dict[str, Any]) -> str:
    """One line for an estimate, naming faster recipes when a CPU run would take over two hours."""
    if not estimate:
        return "estimated time: unknown (no training documents)"

    def clock(seconds: float) -> str:
        minutes = seconds / 60
        return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{max(minutes, 0.1):.1f} min"

    parts = [f"training {clock(estimate['training'])}", f"evaluation {clock(estimate['evaluation'])}"]
    if estimate["feature_cache"]:
        parts.append(f"feature cache {clock(estimate['feature_cache'])}")
    line = (f"estimated time on this {estimate['device'].upper()} ({estimate['precision']}): "
            f"~{clock(estimate['total'])} ({', '.join(parts)})")
    if estimate["device"] == "cpu" and estimate["total"] > 2 * 3600:
        line += ("; faster: --freeze backbone (one backbone pass into a feature cache), --preset cpu-quick, "
                 "or a GPU")
    return line


def check_hardware(config: Config) -> None:
    """Refuse, in one line, an accelerator, device count, strategy or precision this machine cannot run.

    Lightning would raise its own (multi-line) errors later, some only after the data is loaded.
    """
    from lightning.pytorch.strategies import StrategyRegistry

    accelerator = config.accelerator
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    known = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")
    if accelerator not in known:
        raise ConfigError(f"unknown accelerator {accelerator!r}; choose one of {', '.join(known)}")
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise ConfigError(f"--accelerator {accelerator} but no CUDA GPU is visible here; use --accelerator cpu "
                          "(or auto)")
    if accelerator == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--accelerator mps but this machine has no Apple GPU; use --accelerator cpu (or auto)")
    if accelerator in ("tpu", "hpu"):
        raise ConfigError(f"--accelerator {accelerator} is not available on this machine; use cpu"
                          f"{' or gpu' if gpus else ''} (or auto)")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)
    devices = str(config.devices).strip()
    if devices not in ("auto", "-1"):
        try:
            wanted = [int(d) for d in devices.strip("[]").split(",") if d.strip()]
        except ValueError:
            raise ConfigError(f"--devices must be auto, a count such as 2, or a list such as 0,1; "
                              f"got {devices!r}") from None
        if not wanted:
            raise ConfigError(f"--devices must name at least one device; got {devices!r}")
        if on_gpu:
            listed = "," in devices or devices.startswith("[")
            if listed and max(wanted) >= gpus:
                raise ConfigError(f"--devices {devices} names GPU {max(wanted)}, but this machine has {gpus} "
                                  f"(0 to {gpus - 1})")
            if not listed and wanted[0] > gpus:
                raise ConfigError(f"--devices {devices} asks for {wanted[0]} GPUs, but this machine has {gpus}")
        elif wanted[0] < 1 or "," in devices:
            raise ConfigError(f"--devices {devices}: on the CPU give a process count such as 1 or 2")
    strategies = sorted({"auto", *StrategyRegistry.available_strategies()})
    if config.strategy not in strategies:
        variants = ("deepspeed_", "fsdp_", "ddp_fork", "ddp_notebook")
        shown = ", ".join(s for s in strategies if not s.startswith(variants))
        raise ConfigError(f"unknown strategy {config.strategy!r}; choose one of: {shown}")
    if config.precision.startswith("16") and not on_gpu:
        raise ConfigError(f"precision {config.precision} (float16) needs a GPU; on a CPU use bf16-mixed "
                          "(fast with AVX512-BF16 or AMX), 32-true, or auto")


def resolved_config(config: Config) -> Config:
    """``config`` with what depends on this machine and folder settled: precision ``auto`` resolved
    for the device the run uses, and local paths made absolute (a run or model folder then reads
    the same files from anywhere)."""
    precision = resolve_precision(config.precision, compute_device(config))
    return config.with_absolute_paths().updated(precision=precision)


def monitored_metric(config: Config) -> str:
    """The validation figure that picks the best epoch (and early stopping): accuracy, or micro-F1
    at threshold 0.5 for multi-label runs."""
    return "val_micro_f1" if config.multi_label else "val_acc"


def build_trainer(config: Config, run_dir: Path | None, *, enable_progress_bar: bool = True) -> pl.Trainer:
    """The Lightning trainer; without ``run_dir`` (in-memory :func:`fit`), checkpoints go to a temporary folder
    that the caller removes, and nothing is logged."""
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
    return pl.Trainer(
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

    def save(self, folder: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write the model folder (weights, tokenizer, config, fusion, thresholds and where the data came
        from); ``extra`` adds JSON-able entries to the folder's metadata."""
        metadata: dict[str, Any] = {"config": self.config.to_dict(), "data_source": self.data.source,
                                    "test_metrics": self.metrics["test"]}
        if self.thresholds is not None:
            metadata["thresholds"] = dict(zip(self.model.label_names, self.thresholds, strict=True))
        self.model.save_pretrained(folder, tokenizer=self.tokenizer, extra={**metadata, **(extra or {})},
                                   write_more=self.fusion.save if self.fusion is not None else None)


def fit(config: Config, data: DatasetSplits | SplitSets | None = None, *, run_dir: str | Path | None = None,
        resume: bool = False, enable_progress_bar: bool = False,
        notify: Callable[[str], None] | None = None) -> FitResult:
    """Train per ``config`` and return the model of the best validation epoch with its figures.

    ``data`` gives the texts in memory (see :func:`gpt2clf.corpora.labelled_texts`); None reads
    the dataset ``config`` names. ``run_dir`` receives checkpoints and logs (None: a temporary
    folder, removed afterwards). Nothing else is written: :func:`train` writes the run folder.
    ``notify(line)``, when given, receives the estimated wall time before training starts.

    Example::

        >>> from gpt2clf import Config, fit
        >>> from gpt2clf.corpora import labelled_texts
        >>> data = labelled_texts(["good film", "bad film", ...], ["pos", "neg", ...])  # doctest: +SKIP
        >>> result = fit(Config(backbone="gpt2", epochs=1), data)                       # doctest: +SKIP
        >>> result.metrics["validation"]["accuracy"]                                    # doctest: +SKIP
    """
    check_hardware(config)
    config = resolved_config(config)
    warn_about_slow_settings(config)
    seed_all(config.seed)
    prepared = prepare_data(config, data)
    if not len(prepared.train):
        raise UserError("no training documents; give at least one labelled text per class")
    if not len(prepared.validation):
        raise UserError("the validation split is empty; use more data or a larger --validation-ratio")
    check_fusion_data(config, prepared)
    seed_all(config.seed)
    model = build_model(config, prepared.label_names)
    if notify is not None:
        notify(describe_estimate(estimate_seconds(config, model, prepared)))
        seed_all(config.seed)
    if config.compile:
        model.compile(dynamic=True)  # in place: parameter names (and saved folders) stay the same
    module = ClassificationModule(model, config)
    if uses_feature_cache(config, model):
        attach_features(prepared, model, config, show_progress=enable_progress_bar)
        module.feature_start_layer = prepared.features["train"].start_layer
    trainer = build_trainer(config, Path(run_dir) if run_dir is not None else None,
                            enable_progress_bar=enable_progress_bar)
    last = Path(run_dir or ".") / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    try:
        try:
            # weights_only: resuming never unpickles anything but tensors and plain containers.
            trainer.fit(module, datamodule=ClassificationDataModule(prepared, config),
                        ckpt_path=str(last) if resume else None, weights_only=True)
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
        return _best_model_result(config, model, prepared, trainer, train_seconds)
    finally:
        if run_dir is None:
            shutil.rmtree(trainer.default_root_dir, ignore_errors=True)


def train(config: Config, output_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
          dry_run: bool = False, enable_progress_bar: bool = True,
          notify: Callable[[str], None] | None = None, report: bool = True) -> dict[str, Any]:
    """Fine-tune per ``config`` and write the run folder; return the metrics (or the plan, dry run).

    The run folder gets ``config.yaml`` (the resolved config), ``checkpoints/``, ``logs/``,
    ``metrics.json``, ``model/`` and, unless ``report`` is False, ``report.html`` (single-label
    runs; see the module docstring). ``notify`` receives the estimated wall time before training starts
    (see :func:`fit`).
    """
    run_dir = Path(output_dir)
    if dry_run:
        return plan_run(config)
    worker = is_worker_process()
    if not worker:
        check_run_dir(run_dir, overwrite=overwrite, resume=resume)
    check_hardware(config)
    if not worker:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved_config(config).save(run_dir / RUN_MARKER)
    result = fit(config, run_dir=run_dir, resume=resume, enable_progress_bar=enable_progress_bar,
                 notify=None if worker else notify)
    if not result.metrics:  # a DDP worker process: rank 0 writes
        return {}
    result.save(run_dir / "model")
    atomic_write_json(run_dir / "metrics.json", result.metrics)
    if report and result.test_probabilities is not None and not result.config.multi_label:
        from gpt2clf.report import ScoredSplit, write_run_report

        scored = ScoredSplit(result.data.texts["test"], result.data.test.labels, result.test_probabilities,
                             result.data.label_names)
        write_run_report(run_dir, scored=scored)
    return result.metrics


def plan_run(config: Config) -> dict[str, Any]:
    """What a run would do (``--dry-run``): data sizes, model and parameter counts, the resolved config.

    A dataset or tokenizer that cannot be loaded is noted in the plan, and the model is still
    built (20 Newsgroups has 20 classes).
    """
    check_hardware(config)
    config = resolved_config(config)
    warn_about_slow_settings(config)
    seed_all(config.seed)
    try:
        data = prepare_data(config)
    except UserError as err:
        placeholder = [f"class_{i}" for i in range(20 if config.train_file is None else 2)]
        return make_plan(config, build_model(config, placeholder), None, str(err))
    check_fusion_data(config, data)
    model = build_model(config, data.label_names)
    plan = make_plan(config, model, data)
    plan["estimated_seconds"] = estimate_seconds(config, model, data)
    return plan


def score_split(model: GPT2Classifier, data: PreparedData, config: Config, split: str,
                device: torch.device) -> tuple[EvaluationResult, torch.Tensor]:
    """Evaluate ``model`` on one prepared split (from cached features when the run used them)."""
    dataset = getattr(data, split)
    if data.features is not None:
        logits = feature_logits(model, data.features[split], batch_size=config.effective_eval_batch_size,
                                device=device, precision=config.precision)
    else:
        logits = batched_logits(model, dataset.input_ids, batch_size=config.effective_eval_batch_size,
                                pad_token_id=data.tokenizer.pad_token_id, padding_side=config.padding_side,
                                device=device, precision=config.precision)
    if config.multi_label:
        return compute_multilabel_metrics(torch.sigmoid(logits), dataset.labels, model.spec.label_names), logits
    return compute_metrics(logits, dataset.labels, model.spec.label_names), logits


def _best_model_result(config: Config, model: GPT2Classifier, data: PreparedData, trainer: pl.Trainer,
                       train_seconds: float) -> FitResult:
    """Load the best epoch's weights and score the validation and test sets."""
    checkpoint_cb = trainer.checkpoint_callback
    best_path = checkpoint_cb.best_model_path if checkpoint_cb is not None else ""
    if best_path and Path(best_path).is_file():
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model = model.to(torch.device("cpu")).float()
    device = trainer.strategy.root_device
    model.to(device)
    validation, validation_logits = score_split(model, data, config, "validation", device)
    test, test_logits = score_split(model, data, config, "test", device) if len(data.test) else (None, None)
    model.to("cpu")
    best_score = checkpoint_cb.best_model_score if checkpoint_cb is not None else None

    def figures(result: EvaluationResult | None) -> dict[str, Any] | None:
        if result is None:
            return None
        values = {"accuracy": result.accuracy, "macro_f1": result.macro_f1, "loss": result.loss,
                  "documents": result.num_documents}
        if result.multi_label:
            values.update(micro_f1=result.micro_f1, subset_accuracy=result.subset_accuracy,
                          hamming_loss=result.hamming_loss)
        return values

    if config.multi_label:
        return _multilabel_result(config, model, data, figures, validation_logits, test_logits, best_score,
                                  trainer, train_seconds)

    fusion = None
    test_probabilities = None if test_logits is None else torch.softmax(test_logits, dim=-1)
    components: dict[str, Any] = {}
    if config.fusion == "tfidf":
        tfidf = TfidfModel.fit(data.texts["train"], data.train.labels, len(data.label_names), seed=config.seed)
        fusion = choose_fusion(tfidf, torch.softmax(validation_logits, dim=-1).numpy(), data.texts["validation"],
                               data.validation.labels)
        components["validation"] = {"network": figures(validation)}
        validation = compute_metrics(torch.log(torch.from_numpy(
            fusion.mix(torch.softmax(validation_logits, dim=-1).numpy(), data.texts["validation"])).clamp_min(1e-12)),
            data.validation.labels, data.label_names)
        if config.fusion_refit:  # after the choice, so the validation figures above stay honest
            fusion = refit_fusion(fusion, [*data.texts["train"], *data.texts["validation"]],
                                  [*data.train.labels, *data.validation.labels], len(data.label_names),
                                  seed=config.seed)
        else:
            fusion.tfidf_documents = len(data.texts["train"])
        if test is not None and test_probabilities is not None:
            tfidf_test = torch.from_numpy(fusion.tfidf.predict_proba(data.texts["test"]))
            components["test"] = {"network": figures(test),
                                  "tfidf": figures(compute_metrics(torch.log(tfidf_test.clamp_min(1e-12)),
                                                                   data.test.labels, data.label_names))}
            test_probabilities = torch.from_numpy(
                fusion.mix(test_probabilities.numpy(), data.texts["test"])).float()
            test = compute_metrics(torch.log(test_probabilities.clamp_min(1e-12)), data.test.labels,
                                   data.label_names)
    metrics = {
        "validation": figures(validation),
        "test": figures(test),
        "best_val_acc": float(best_score) if best_score is not None else None,
        "epochs_completed": trainer.current_epoch,
        "train_seconds": round(train_seconds, 2),
        "parameters": model.parameter_counts(),
        "precision": config.precision,
    }
    if fusion is not None:
        metrics["fusion"] = {"weight": fusion.weight, "mode": fusion.mode, "validation": fusion.validation,
                             "tfidf_splits": list(fusion.tfidf_splits), "tfidf_documents": fusion.tfidf_documents,
                             "components": components}
    return FitResult(model=model, tokenizer=data.tokenizer, config=config, metrics=metrics, data=data,
                     test_probabilities=test_probabilities, fusion=fusion)


def _multilabel_result(config: Config, model: GPT2Classifier, data: PreparedData, figures: Callable[..., Any],
                       validation_logits: torch.Tensor, test_logits: torch.Tensor | None, best_score: Any,
                       trainer: pl.Trainer, train_seconds: float) -> FitResult:
    """Tune each label's threshold on the validation split, then score validation and test with them."""
    names = data.label_names
    validation_probs = torch.sigmoid(validation_logits)
    thresholds = tune_thresholds(validation_probs.numpy(), data.validation.labels)
    validation = compute_multilabel_metrics(validation_probs, data.validation.labels, names, thresholds)
    test_probabilities = None if test_logits is None else torch.sigmoid(test_logits)
    test = (None if test_probabilities is None
            else compute_multilabel_metrics(test_probabilities, data.test.labels, names, thresholds))
    metrics = {
        "validation": figures(validation),
        "test": figures(test),
        f"best_{monitored_metric(config)}": float(best_score) if best_score is not None else None,
        "epochs_completed": trainer.current_epoch,
        "train_seconds": round(train_seconds, 2),
        "parameters": model.parameter_counts(),
        "precision": config.precision,
        "thresholds": dict(zip(names, thresholds, strict=True)),
    }
    return FitResult(model=model, tokenizer=data.tokenizer, config=config, metrics=metrics, data=data,
                     test_probabilities=test_probabilities, thresholds=thresholds)
