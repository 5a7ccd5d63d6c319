"""A run's data and model, prepared: tokenized splits, the classifier, cached backbone states, scored splits.

Data flow for one run (:func:`gpt2clf.training.loop.fit` calls these in this order)::

    Config -> prepare_data: texts of train / validation / test (gpt2clf.data.corpora)
                            -> token ids under the run's windowing (gpt2clf.data.batching), and what it leaves unread
           -> build_model:  the pretrained backbone + our blocks, pooling and head, with the frozen part set
           -> attach_features (frozen backbone only): its states computed once into the feature cache
           -> score_split:  logits of one split (from the cache when the run used one)

This is also the public home for code that needs a run's data without training it (the benchmarks,
``--refit`` rescoring). Nothing here prints or exits; progress goes to an optional callback.
"""

from __future__ import annotations

import random
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gpt2clf.config import Config
from gpt2clf.data.batching import ReadingCoverage, TokenizedDataset, Windowing, encode_and_measure, load_tokenizer
from gpt2clf.data.corpora import DatasetSplits, DataWarning, SplitSets, splits_for
from gpt2clf.errors import ConfigError
from gpt2clf.infer.evaluation import EvaluationResult, compute_metrics, compute_multilabel_metrics
from gpt2clf.infer.frozen_pass import resolve_cache_precision
from gpt2clf.infer.predictor import batched_logits
from gpt2clf.model.backbone import load_backbone_config, use_fused_gelu
from gpt2clf.model.backbone import max_positions as backbone_max_positions
from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier
from gpt2clf.training.feature_cache import WindowedFeatures, cached_features, feature_logits

__all__ = [
    "PreparedData",
    "attach_features",
    "build_model",
    "cache_precision",
    "check_backbone",
    "compute_device",
    "data_split",
    "prepare_data",
    "score_split",
    "seed_all",
    "split_logits",
    "uses_feature_cache",
    "warn_about_unread_text",
]


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
    coverage: dict[str, ReadingCoverage] = field(default_factory=dict)
    """Per split, what the windowing leaves unread (documents read in part, unread tokens)."""


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
        with tqdm(desc=f"feature cache, {split}", unit="window" if config.long_documents == "chunks" else "document",
                  disable=not show_progress, leave=False,
                  mininterval=0.1 if sys.stderr.isatty() else 30) as bar:

            def progress(done: int, total: int, bar=bar) -> None:
                bar.total = total
                bar.update(done - bar.n)

            windowed = config.long_documents == "chunks"
            flat = [w for doc in tokens.input_ids for w in doc] if windowed else tokens.input_ids
            cached = cached_features(
                model, flat, None if windowed else tokens.labels, cache_root=config.cache_dir,
                tokenizer_name=config.tokenizer_name, batch_size=config.effective_eval_batch_size, device=device,
                precision=cache_precision(config, device), max_length=config.max_length,
                train_top_layers=config.train_top_layers,
                progress=progress, from_lower=config.feature_cache_from_lower)
            data.features[split] = (WindowedFeatures(cached, [len(doc) for doc in tokens.input_ids], tokens.labels)
                                    if windowed else cached)
    model.to("cpu")


def cache_precision(config: Config, device: torch.device) -> str:
    """The feature cache pass's precision on ``device`` (32-true, bf16-mixed or int8): ``config.cache_precision``
    with ``auto`` resolved against the run's precision (:func:`~gpt2clf.infer.frozen_pass.resolve_cache_precision`)."""
    return resolve_cache_precision(config.cache_precision, config.precision, device)


def prepare_data(config: Config, data: DatasetSplits | SplitSets | None = None, tokenizer: Any = None) -> PreparedData:
    """Tokenized train, validation and test sets of ``config``'s dataset, or of ``data`` (in memory).

    ``data`` as :class:`~gpt2clf.data.corpora.DatasetSplits` (train and test) gets the usual
    validation carve-out and sample limits; as :class:`~gpt2clf.data.corpora.SplitSets` it is used as is.
    """
    sets = data if isinstance(data, SplitSets) else splits_for(config, data)
    if tokenizer is None:
        tokenizer = load_tokenizer(config.tokenizer_name, padding_side=config.padding_side)

    windowing = Windowing.of(config)
    splits: dict[str, TokenizedDataset] = {}
    coverage: dict[str, ReadingCoverage] = {}
    for name in ("train", "validation", "test"):
        ds = sets.split(name)
        items, coverage[name] = encode_and_measure(ds.texts, tokenizer, windowing)
        splits[name] = TokenizedDataset(items, ds.labels)
    return PreparedData(sets.label_names, sets.source, tokenizer, splits["train"], splits["validation"],
                        splits["test"], texts={name: list(sets.split(name).texts) for name in splits},
                        coverage=coverage)


def warn_about_unread_text(config: Config, data: PreparedData) -> None:
    """One warning line when the windowing leaves part of the training documents unread."""
    coverage = data.coverage.get("train")
    if coverage is None or not coverage.unread_tokens:
        return
    windowing = Windowing.of(config)
    warnings.warn(DataWarning(
        f"--long-documents {config.long_documents} reads {windowing.describe()}: of the training split, "
        f"{coverage.describe()} ({windowing.how_to_read_more()})"), stacklevel=2)


def build_model(config: Config, label_names: list[str]) -> GPT2Classifier:
    """The classifier of ``config``: pretrained backbone, our blocks, pooling and head."""
    spec = ClassifierSpec(num_labels=len(label_names), label_names=list(label_names), n_embed=config.n_embed,
                          n_heads=config.n_heads, n_blocks=config.n_blocks, dropout=config.dropout,
                          pooling=config.pooling,
                          chunk_aggregation=config.chunk_aggregation if config.long_documents == "chunks" else None)
    model = GPT2Classifier.from_backbone(config.backbone, spec)
    _check_length(config, max_positions(model))
    model.set_trainable(config.freeze, config.train_top_layers)
    use_fused_gelu(model)  # the same function as GPT-2's Python GELU, one kernel, less memory
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def check_backbone(config: Config) -> None:
    """Refuse a backbone that cannot be found, or a ``max_length`` past its position embeddings, from
    its config alone: before any data is read, so a typo costs no tokenizing. (build_model checks the
    length again, exactly, less the position offset some architectures have.)"""
    _check_length(config, backbone_max_positions(load_backbone_config(config.backbone)))


def _check_length(config: Config, positions: int | None) -> None:
    if positions is not None and config.max_length > positions:
        raise ConfigError(f"max_length {config.max_length} is more than the backbone's {positions} positions; "
                          f"use --max-length {positions} or less")


def max_positions(model: GPT2Classifier) -> int | None:
    """How many positions the backbone has embeddings for (1024 for GPT-2), if it says."""
    return model.adapter.max_positions


def split_logits(model: GPT2Classifier, data: PreparedData, config: Config, split: str,
                 device: torch.device) -> torch.Tensor:
    """Float32 logits (documents, labels) of one prepared split, in split order (from cached features when
    the run used them)."""
    if data.features is not None:
        return feature_logits(model, data.features[split], batch_size=config.effective_eval_batch_size,
                              device=device, precision=config.precision)
    return batched_logits(model, getattr(data, split).input_ids, batch_size=config.effective_eval_batch_size,
                          pad_token_id=data.tokenizer.pad_token_id, padding_side=config.padding_side,
                          device=device, precision=config.precision)


def score_split(model: GPT2Classifier, data: PreparedData, config: Config, split: str,
                device: torch.device) -> tuple[EvaluationResult, torch.Tensor]:
    """The network's metrics on one prepared split, and its logits (:func:`split_logits`)."""
    logits = split_logits(model, data, config, split, device)
    labels = getattr(data, split).labels
    if config.multi_label:
        return compute_multilabel_metrics(torch.sigmoid(logits), labels, model.spec.label_names), logits
    return compute_metrics(logits, labels, model.spec.label_names), logits


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (splits, initialisation, dropout)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

