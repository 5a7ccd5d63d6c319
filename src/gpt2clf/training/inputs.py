"""A run's data and model, prepared: tokenized splits, the classifier, cached backbone states, scored splits.

Data flow for one run (:func:`gpt2clf.training.plan.set_up_run` and :func:`gpt2clf.training.loop.fit` call
these in this order)::

    Config -> prepare_data: texts of train / validation / test (gpt2clf.data.splits)
                            -> token ids under the run's windowing (gpt2clf.data.batching), and what it leaves unread
           -> build_model:  the pretrained backbone + our blocks, pooling and head, with the frozen part set
           -> choose_inputs: how batches reach the model, chosen once: TokenInputs (token ids through the whole
                            model) or CachedStates (a frozen part's states, computed once into the feature cache
                            by its prepare, through the layers above it and ours); the data carries it
           -> score_split:  logits of one split (through the data's inputs)

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
from gpt2clf.data.batching import (
    PaddingCollator,
    ReadingCoverage,
    TokenizedDataset,
    Windowing,
    encode_and_measure,
    load_tokenizer,
)
from gpt2clf.data.splits import SplitSets, splits_for
from gpt2clf.data.text_dataset import DatasetSplits, DataWarning
from gpt2clf.errors import ConfigError
from gpt2clf.infer.evaluation import EvaluationResult, compute_metrics, compute_multilabel_metrics
from gpt2clf.infer.frozen_pass import resolve_cache_precision
from gpt2clf.infer.predictor import batched_logits
from gpt2clf.model.backbone import load_backbone_config, use_fused_gelu
from gpt2clf.model.backbone import max_positions as backbone_max_positions
from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier
from gpt2clf.training.feature_cache import (
    FeatureCacheSpec,
    FeatureCollator,
    FeatureDataset,
    WindowedFeatures,
    cached_features,
    feature_logits,
    logits_from_features,
)

__all__ = [
    "CachedStates",
    "InputPipeline",
    "PreparedData",
    "TokenInputs",
    "attach_inputs",
    "build_model",
    "check_backbone",
    "choose_inputs",
    "compute_device",
    "feature_cache_spec",
    "prepare_data",
    "score_split",
    "seed_all",
    "split_logits",
    "warn_about_unread_text",
]


class TokenInputs:
    """Batches of token ids through the whole model (the default pipeline): nothing is computed ahead."""

    cache: FeatureCacheSpec | None = None
    """No feature cache."""

    def prepare(self, data: PreparedData, model: GPT2Classifier, *, show_progress: bool = False) -> None:
        """Nothing to compute before training."""

    def dataset(self, data: PreparedData, split: str) -> TokenizedDataset:
        """The dataset a split trains or evaluates on."""
        return getattr(data, split)

    def collator(self, data: PreparedData, padding_side: str) -> PaddingCollator:
        return PaddingCollator(data.tokenizer.pad_token_id, padding_side)

    def logits(self, model: GPT2Classifier, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits of one collated batch."""
        return model(batch["input_ids"], batch["attention_mask"], batch.get("document_index"))

    def split_logits(self, model: GPT2Classifier, data: PreparedData, config: Config, split: str,
                     device: torch.device) -> torch.Tensor:
        """Float32 logits (documents, labels) of one split, in split order."""
        return batched_logits(model, getattr(data, split),
                              PaddingCollator(data.tokenizer.pad_token_id, config.padding_side),
                              batch_size=config.effective_eval_batch_size, device=device, precision=config.precision)


class CachedStates:
    """Batches of a frozen part's hidden states, read from the feature cache, through the backbone's layers
    above them (``cache.start_layer``) and ours. :meth:`prepare` runs the frozen part over every split once
    (or finds its states in the cache) on ``device``."""

    def __init__(self, cache: FeatureCacheSpec, device: torch.device) -> None:
        self.cache = cache
        self.device = device
        self.features: dict[str, FeatureDataset | WindowedFeatures] = {}
        """Per split, the cached states (windows grouped back into documents when the data is windowed)."""

    def prepare(self, data: PreparedData, model: GPT2Classifier, *, show_progress: bool = False) -> None:
        """Run the frozen part of the backbone over every split once (or load it from the disk cache)."""
        from tqdm.auto import tqdm

        model.to(self.device)
        self.features = {}
        for split in ("train", "validation", "test"):
            tokens = getattr(data, split)
            if not len(tokens):
                continue
            with tqdm(desc=f"feature cache, {split}", unit="window" if tokens.windowed else "document",
                      disable=not show_progress, leave=False,
                      mininterval=0.1 if sys.stderr.isatty() else 30) as bar:

                def progress(done: int, total: int, bar=bar) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                cached = cached_features(model, tokens.windows, None if tokens.windowed else tokens.labels,
                                         self.cache, device=self.device, progress=progress)
                self.features[split] = (WindowedFeatures(cached, tokens.window_counts, tokens.labels)
                                        if tokens.windowed else cached)
        model.to("cpu")

    def dataset(self, data: PreparedData, split: str) -> FeatureDataset | WindowedFeatures:
        """The dataset a split trains or evaluates on: its cached states (after :meth:`prepare`)."""
        return self.features[split]

    def collator(self, data: PreparedData, padding_side: str) -> FeatureCollator:
        return FeatureCollator(padding_side)

    def logits(self, model: GPT2Classifier, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits of one collated batch of cached states."""
        return logits_from_features(model, batch["hidden_states"], batch["attention_mask"], self.cache.start_layer,
                                    batch.get("document_index"))

    def split_logits(self, model: GPT2Classifier, data: PreparedData, config: Config, split: str,
                     device: torch.device) -> torch.Tensor:
        """Float32 logits (documents, labels) of one split, in split order, from its cached states."""
        return feature_logits(model, self.features[split], batch_size=config.effective_eval_batch_size,
                              device=device, precision=config.precision)


InputPipeline = TokenInputs | CachedStates
"""How a run's batches reach the model (:func:`choose_inputs`)."""


@dataclass
class PreparedData:
    """Tokenized train / validation / test sets, what is needed to rebuild them, and how they reach the model."""

    label_names: list[str]
    source: dict[str, Any]
    tokenizer: Any
    train: TokenizedDataset
    validation: TokenizedDataset
    test: TokenizedDataset
    texts: dict[str, list[str]] = field(default_factory=dict)
    """Per split, the documents' texts (TF-IDF fusion and reports read them)."""
    coverage: dict[str, ReadingCoverage] = field(default_factory=dict)
    """Per split, what the windowing leaves unread (documents read in part, unread tokens)."""
    inputs: InputPipeline = field(default_factory=TokenInputs)
    """How the splits reach the model: token ids, or (CachedStates) a frozen part's cached states."""


def choose_inputs(config: Config, model: GPT2Classifier) -> InputPipeline:
    """How a run's batches reach ``model``, chosen once: the frozen part's cached states when the run uses a
    feature cache (:func:`feature_cache_spec`), else token ids."""
    cache = feature_cache_spec(config, model)
    return TokenInputs() if cache is None else CachedStates(cache, compute_device(config))


def feature_cache_spec(config: Config, model: GPT2Classifier) -> FeatureCacheSpec | None:
    """The feature cache a run of ``config`` uses, or None when its backbone has no frozen part to cache.

    The frozen part gives the same hidden states every epoch: the whole backbone with
    ``freeze=backbone``, the layers below the top ``K`` with ``train_top_layers=K`` (when at least
    one layer is frozen). ``feature_cache`` off: None. The pass's precision is ``config.cache_precision``
    with ``auto`` resolved against the run's precision on :func:`compute_device`
    (:func:`~gpt2clf.infer.frozen_pass.resolve_cache_precision`; int8 elsewhere than on the CPU is refused).
    """
    if not config.feature_cache:
        return None
    if config.train_top_layers:
        used = config.train_top_layers < len(model.backbone_layers())
    else:
        used = config.freeze == "backbone" or config.train_top_layers == 0
    if not used:
        return None
    return FeatureCacheSpec.for_model(
        model, cache_root=config.cache_dir, train_top_layers=config.train_top_layers,
        tokenizer_name=config.tokenizer_name, max_length=config.max_length,
        precision=resolve_cache_precision(config.cache_precision, config.precision, compute_device(config)),
        from_lower=config.feature_cache_from_lower, batch_size=config.effective_eval_batch_size)


def compute_device(config: Config) -> torch.device:
    """Where the run computes (and the feature cache's one-off backbone pass runs)."""
    if config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def attach_inputs(data: PreparedData, model: GPT2Classifier, config: Config, *,
                  show_progress: bool = False) -> InputPipeline:
    """Give ``data`` the input pipeline of a run of ``config`` (:func:`choose_inputs`) and prepare it: with a
    feature cache, the frozen part runs over every split once (or its states are loaded from the disk cache)."""
    data.inputs = choose_inputs(config, model)
    data.inputs.prepare(data, model, show_progress=show_progress)
    return data.inputs


def prepare_data(config: Config, data: DatasetSplits | SplitSets | None = None, tokenizer: Any = None) -> PreparedData:
    """Tokenized train, validation and test sets of ``config``'s dataset, or of ``data`` (in memory).

    ``data`` as :class:`~gpt2clf.data.text_dataset.DatasetSplits` (train and test) gets the usual
    validation carve-out and sample limits; as :class:`~gpt2clf.data.splits.SplitSets` it is used as is.
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
        splits[name] = TokenizedDataset(items, ds.labels, windowed=windowing.windowed)
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
                          chunk_aggregation=config.chunk_aggregation if Windowing.of(config).windowed else None)
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
    """Float32 logits (documents, labels) of one prepared split, in split order, through the data's inputs
    (from cached states when the run used them)."""
    return data.inputs.split_logits(model, data, config, split, device)


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

