"""The single source of truth for settings: a run's hyperparameters, and how a saved model runs.

A :class:`Config` is filled in a fixed order: the dataclass defaults, then a named preset
(:data:`PRESETS`), then a YAML file, then command-line flags named after the fields
(``--learning-rate`` sets ``learning_rate``). Every run saves the result as ``config.yaml``.

:class:`InferenceSettings` (batch size, device, precision: one default each for predict,
evaluate, explain and serve) and :class:`ServeSettings` (the limits and batching of
``gpt2clf serve``) are declared the same way. Each field's docstring is its ``--help``
(:func:`field_help`), and :func:`coerce_fields` converts flag or YAML values to its type.

Example::

    >>> from gpt2clf.config import Config
    >>> cfg = Config.from_preset("blog")
    >>> cfg.n_heads, cfg.learning_rate
    (2, 1e-05)
    >>> cfg = cfg.updated(epochs=1)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gpt2clf.errors import ConfigError

__all__ = [
    "API_KEY_ENV", "CACHE_PRECISIONS", "CHUNK_AGGREGATIONS", "DATASET_FIELDS", "FREEZE_CHOICES", "FUSION_CHOICES",
    "LONG_DOCUMENT_CHOICES", "PADDING_SIDES", "POOLING_CHOICES", "PRECISIONS", "PRESETS", "PRESET_CHOICES",
    "RECIPE_FIELDS", "SCHEDULES", "SERVE_HOST", "SERVE_PORT", "STRIP_CHOICES", "Config",
    "InferenceSettings", "ServeAccess", "ServeSettings", "check_batch_size", "check_dataset_choice",
    "check_float16_device", "check_heads", "choose_preset", "coerce_fields", "field_help", "field_sections",
]

POOLING_CHOICES = ("last", "mean", "attention")
FREEZE_CHOICES = ("none", "backbone")
PADDING_SIDES = ("right", "left")
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")
LONG_DOCUMENT_CHOICES = ("truncate", "head-tail", "chunks")
CHUNK_AGGREGATIONS = ("mean", "sum", "max", "logsumexp", "max-pool", "attention")
FUSION_CHOICES = ("none", "tfidf")
CACHE_PRECISIONS = ("auto", "float32", "bf16", "int8")
STRIP_CHOICES = ("headers", "footers", "quotes")  # the order in which scikit-learn applies them
# The Config fields that name a dataset and its columns: train, evaluate and data stats take them as flags
# to point at data (gpt2clf.data.splits.DataSource holds them, with how the data is split).
DATASET_FIELDS = ("data_dir", "strip", "train_file", "test_file", "dataset", "text_column", "label_column")
# List fields whose string values are one item, never split on commas (column names may hold commas).
VERBATIM_LISTS = ("text_column",)


@dataclass
class Config:
    """Every hyperparameter of a gpt2clf run.

    The defaults suit fine-tuning a real pretrained GPT-2 small on a GPU. Field names map
    one-to-one to command-line flags (underscores become dashes) and YAML keys.
    """

    # --- recipe -----------------------------------------------------------------------
    preset: str = "none"
    """The named recipe these values started from (none: the plain defaults below). gpt2clf train's
    --preset auto, its default, picks best where a CUDA GPU is present and cpu elsewhere (see choose_preset)."""

    # --- data -------------------------------------------------------------------------
    data_dir: str | None = None
    """20 Newsgroups archive (``20news-bydate.tar.gz``) or extracted folder; None: env
    ``GPT2CLF_20NG`` or scikit-learn's download cache."""
    strip: list[str] = field(default_factory=list)
    """Parts of 20 Newsgroups posts to remove: any of headers, footers, quotes."""
    train_file: str | None = None
    """CSV, TSV, JSONL or Parquet file of labelled text; None: 20 Newsgroups (or ``dataset``)."""
    test_file: str | None = None
    """Test file for ``train_file``; None: a seeded stratified split of the train file."""
    dataset: str | None = None
    """A Hugging Face dataset, NAME or NAME:CONFIG, loaded with ``datasets.load_dataset`` (needs the
    ``datasets`` extra and the hub, or its cache); its train split (and test split, if it has one) are used
    like train_file and test_file."""
    text_column: list[str] = field(default_factory=lambda: ["text"])
    """Column (CSV/TSV header, JSONL key, Parquet or dataset column) holding the text; repeat the flag for
    several fields, joined in the given order as "name: value" paragraphs (one column: the text alone)."""
    label_column: str = "label"
    """Column holding the label; label names are kept as written."""
    multi_label: bool = False
    """Each document has any number of labels (written a|b in CSV/TSV, a JSON list in JSONL/Parquet): one
    sigmoid per label, binary cross-entropy, per-label thresholds tuned on the validation split."""
    validation_ratio: float = 0.2
    """Share of the training split held out (stratified, seeded) for validation."""
    test_ratio: float = 0.2
    """Share of ``train_file`` used as test set when no ``test_file`` is given."""
    max_train_samples: int | None = None
    """Use at most this many training documents (stratified subset) for quick runs."""
    max_eval_samples: int | None = None
    """Use at most this many validation and test documents for quick runs."""

    # --- tokenization and batching ----------------------------------------------------
    tokenizer: str | None = None
    """Hub id or folder of the tokenizer; None: the backbone's."""
    max_length: int = 512
    """Tokens kept per document (longer ones are truncated); at most the backbone's positions."""
    padding_side: str = "right"
    """Where batches are padded: right or left (results are the same either way)."""
    group_by_length: bool = True
    """Batch documents of similar length together (still shuffled) to waste less on padding."""
    long_documents: str = "truncate"
    """Documents longer than max_length: truncate (keep the start), head-tail (the first quarter and last
    three quarters of max_length), or chunks (overlapping windows, each read by the model, aggregated)."""
    chunk_stride: int | None = None
    """With chunks: tokens from one window's start to the next; None: 7/8 of max_length."""
    max_chunks: int | None = None
    """With chunks: at most this many windows per document (spread evenly over longer ones); None: as many
    as reading chunk_token_budget tokens takes."""
    chunk_token_budget: int = 4096
    """With chunks and no max_chunks: each document is read whole up to this many tokens; a longer one gets
    the windows this budget allows, spread evenly over it (train, --dry-run and data stats say what goes unread)."""
    chunk_aggregation: str = "logsumexp"
    """With chunks: how the windows give one prediction: logsumexp (a smooth maximum), mean, sum or max of their
    logits, max-pool of their embeddings, or learned attention over their embeddings. logsumexp by measurement:
    one deciding window in 10-16, frozen MiniLM, validation 1.000 against 0.538 for mean (BENCHMARKS.md)."""

    # --- model ------------------------------------------------------------------------
    backbone: str = "gpt2"
    """Hub id or local folder of a pretrained GPT-2 (or any AutoModel backbone)."""
    n_embed: int | None = None
    """Width of our transformer blocks; None: the backbone's (768 for GPT-2 small). Another width
    adds a linear projection from the backbone's."""
    n_heads: int | None = None
    """Attention heads per block (n_embed must be divisible by it); None: the backbone's count
    (12 for GPT-2 small)."""
    n_blocks: int = 2
    """Custom transformer blocks stacked on the backbone (0 for pooling + head only)."""
    dropout: float = 0.1
    """Dropout in our blocks and before the head."""
    pooling: str = "last"
    """One vector per document: last (last non-pad token), mean, or attention (learned weights)."""
    freeze: str = "none"
    """``none``: fine-tune everything; ``backbone``: train only our blocks and head."""
    train_top_layers: int | None = None
    """Freeze the backbone except its top K layers."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% more compute."""
    compile: bool = False
    """torch.compile the model (faster steps after a warm-up compile)."""
    feature_cache: bool = True
    """With a frozen backbone, compute its hidden states once and train from a disk cache."""
    cache_dir: str | None = None
    """Where the feature cache lives; None: ``~/.cache/gpt2clf/features``."""
    feature_cache_from_lower: bool = False
    """When the cache of the same documents' lower backbone layers exists (a train_top_layers run's), compute
    only the layers above it: hours less on a CPU, but the states then differ from a full pass by float16
    rounding, so it is off unless asked for."""
    cache_precision: str = "auto"
    """How the feature cache's backbone pass computes: auto (the run's precision: bf16 autocast where the CPU
    or GPU has native bf16, float32 elsewhere), float32, bf16, or int8 (CPU only: PyTorch dynamic int8, checked
    against float32 on a sample first; it falls back to float32, saying so, beyond its tolerance). The pass
    runs gpt2clf's own SDPA body for GPT-2 and MPNet backbones whenever the cached layers are frozen. Caches
    of different paths never mix."""

    # --- optimisation -----------------------------------------------------------------
    batch_size: int = 16
    """Training documents per step (per device)."""
    eval_batch_size: int | None = None
    """Batch size for validation, test and prediction; None: twice ``batch_size``."""
    epochs: int = 5
    """Passes over the training data."""
    learning_rate: float = 2e-5
    """AdamW learning rate of the pretrained backbone."""
    head_learning_rate: float | None = None
    """Learning rate of our blocks and head, which start from random weights; None: the larger of
    learning_rate and 1e-4."""
    weight_decay: float = 0.01
    """AdamW weight decay (never applied to biases and LayerNorm gains)."""
    warmup_ratio: float = 0.06
    """Share of the optimiser steps spent warming the learning rate up linearly."""
    lr_schedule: str = "linear"
    """Decay after warmup: linear, cosine or constant."""
    gradient_clip: float | None = 1.0
    """Clip the gradient norm to this value; null: no clipping."""
    accumulate_grad_batches: int = 1
    """Optimiser step every this many batches (a larger effective batch)."""
    early_stopping_patience: int | None = None
    """Stop after this many epochs without a better validation accuracy; None: never."""
    layerwise_lr_decay: float | None = None
    """Multiply the backbone's learning rate by this per layer going down (e.g. 0.9; the top layer keeps
    learning_rate, the embeddings get the smallest); None: one rate for the whole backbone."""
    fusion: str = "none"
    """tfidf: also fit a TF-IDF (word 1-2 grams) linear model on the training split and mix its
    probabilities with the network's, the weight chosen on the validation split; none: the network alone."""
    fusion_refit: bool = True
    """With fusion: after the weight is chosen on validation (with TF-IDF fit on the training part only), refit
    TF-IDF on training + validation and keep the weight, as scikit-learn's GridSearchCV refits after choosing;
    test is never seen. --no-fusion-refit keeps the training-only TF-IDF."""

    # --- hardware and reproducibility -------------------------------------------------
    precision: str = "auto"
    """Numeric precision: auto (bf16-mixed where the GPU or CPU computes bf16 natively, detected at run
    time; else 32-true), 32-true, bf16-mixed, bf16-true, or 16-mixed (GPU only). The resolved value is
    recorded with the run."""
    accelerator: str = "auto"
    """cpu, gpu, or auto (passed to Lightning)."""
    devices: str = "auto"
    """Devices per node: auto, a count such as 2, or a list such as 0,1 (passed to Lightning)."""
    strategy: str = "auto"
    """Lightning strategy, e.g. ddp for multi-GPU or multi-process CPU training."""
    num_nodes: int = 1
    """Machines in a multi-node DDP run."""
    num_workers: int = 0
    """DataLoader worker processes (tokenization is done up front, so 0 is usually fine)."""
    seed: int = 42
    """One seed for splits, sampling, initialisation and dropout: a CPU run with it repeats exactly."""

    # ----------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if isinstance(self.text_column, str):  # Config(text_column="body"), as before several columns
            self.text_column = [self.text_column]

    @classmethod
    def from_preset(cls, name: str) -> Config:
        """The defaults overlaid with preset ``name`` (see :data:`PRESETS`; ``none``: the defaults; ``auto``:
        the one :func:`choose_preset` picks for this machine)."""
        if name == "auto":
            name, _ = choose_preset(())
        if name == "none":
            return cls()
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESET_CHOICES)}")
        return cls().updated(**PRESETS[name], preset=name)

    @classmethod
    def from_yaml(cls, path: str | Path, base: Config | None = None) -> Config:
        """``base`` (default: the defaults) overlaid with the keys of a YAML file."""
        return (base or cls()).updated(**_read_yaml_mapping(Path(path)))

    @staticmethod
    def yaml_keys(path: str | Path) -> list[str]:
        """The config keys a YAML file sets (underscores for dashes)."""
        return [str(key).replace("-", "_") for key in _read_yaml_mapping(Path(path))]

    def updated(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied, each checked for name and type, then validated."""
        new = dataclasses.replace(self, **coerce_fields(Config, changes))
        new.validate()
        return new

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first out-of-range value."""
        check_batch_size(self.batch_size)
        if self.eval_batch_size is not None:
            check_batch_size(self.eval_batch_size, "eval_batch_size")
        positive_ints = ["max_length", "epochs", "accumulate_grad_batches", "num_nodes"]
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ["n_embed", "n_heads", "max_train_samples", "max_eval_samples",
                     "early_stopping_patience", "chunk_stride", "max_chunks", "chunk_token_budget"]:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.n_blocks < 0:
            raise ConfigError(f"n_blocks must be 0 or more, got {self.n_blocks}")
        if self.train_top_layers is not None and self.train_top_layers < 0:
            raise ConfigError(f"train_top_layers must be 0 or more, got {self.train_top_layers}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.head_learning_rate is not None and self.head_learning_rate <= 0:
            raise ConfigError(f"head_learning_rate must be positive, got {self.head_learning_rate}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        if self.gradient_clip is not None and self.gradient_clip <= 0:
            raise ConfigError(f"gradient_clip must be positive (or null for none), got {self.gradient_clip}")
        if self.layerwise_lr_decay is not None and not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise ConfigError(f"layerwise_lr_decay must be in (0, 1], got {self.layerwise_lr_decay}")
        if self.chunk_stride is not None and self.chunk_stride > self.max_length:
            raise ConfigError(f"chunk_stride ({self.chunk_stride}) must be at most max_length ({self.max_length}), "
                              "or windows would skip tokens")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be 0 or more, got {self.num_workers}")
        for name in ["dropout", "warmup_ratio"]:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ["validation_ratio", "test_ratio"]:
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be between 0 and 1 (exclusive), got {getattr(self, name)}")
        check_heads(self.n_embed, self.n_heads)
        if self.preset not in ("none", *PRESETS):
            raise ConfigError(f"preset must be one of none, {', '.join(PRESETS)}; got {self.preset!r}")
        choices = {"pooling": POOLING_CHOICES, "freeze": FREEZE_CHOICES, "padding_side": PADDING_SIDES,
                   "lr_schedule": SCHEDULES, "precision": PRECISIONS, "long_documents": LONG_DOCUMENT_CHOICES,
                   "chunk_aggregation": CHUNK_AGGREGATIONS, "fusion": FUSION_CHOICES,
                   "cache_precision": CACHE_PRECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for part in self.strip:
            if part not in STRIP_CHOICES:
                raise ConfigError(f"strip accepts {', '.join(STRIP_CHOICES)}; got {part!r}")
        check_dataset_choice(self.train_file, self.test_file, self.dataset)
        if self.dataset is not None and not self.dataset.strip(" :"):
            raise ConfigError(f"dataset must be NAME or NAME:CONFIG, got {self.dataset!r}")
        if not self.text_column or any(not name for name in self.text_column):
            raise ConfigError("text_column must name at least one column, and no empty ones")
        if len(set(self.text_column)) != len(self.text_column):
            raise ConfigError(f"text_column names a column twice: {', '.join(self.text_column)}")
        if self.multi_label and self.fusion != "none":
            raise ConfigError("--fusion tfidf is for single-label classification; drop it with --multi-label")

    def with_absolute_paths(self) -> Config:
        """A copy whose local paths (data files and folders, cache folder, local backbone and
        tokenizer folders) are absolute, so a saved config reads the same files from anywhere.
        Hub ids such as ``gpt2`` are left alone."""
        changes: dict[str, Any] = {}
        for name in ("data_dir", "train_file", "test_file", "cache_dir"):
            value = getattr(self, name)
            if value:
                changes[name] = str(Path(value).expanduser().resolve())
        if self.dataset and Path(self.dataset).expanduser().exists():  # a local dataset folder
            changes["dataset"] = str(Path(self.dataset).expanduser().resolve())
        for name in ("backbone", "tokenizer"):
            value = getattr(self, name)
            if value and Path(value).expanduser().exists():
                changes[name] = str(Path(value).expanduser().resolve())
        return dataclasses.replace(self, **changes)

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer to load: ``tokenizer`` if set, else the backbone's."""
        return self.tokenizer or self.backbone

    @property
    def effective_eval_batch_size(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size

    @property
    def effective_head_learning_rate(self) -> float:
        return self.head_learning_rate if self.head_learning_rate is not None else max(self.learning_rate, 1e-4)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write ``config.yaml`` atomically."""
        from gpt2clf.files import atomic_write_text

        atomic_write_text(Path(path), self.to_yaml())


def field_help(cls: type = Config) -> dict[str, str]:
    """Each field's documentation: the string literal written under it in dataclass ``cls``."""
    return dict(_field_docs(cls))


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    # Read once per class and process: parsing a class's source takes ~0.05 s, and the CLI asks per flag group.
    import ast
    import inspect
    import itertools
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


@functools.cache
def field_sections(cls: type = Config) -> dict[str, list[str]]:
    """The fields of dataclass ``cls`` under each of its ``# --- title ---`` comments, in source order: the
    sections are declared once, in the class, and the CLI's flag groups follow them."""
    import ast
    import inspect
    import re

    lines, _ = inspect.getsourcelines(cls)
    titles = {number: match[1] for number, line in enumerate(lines, start=1)
              if (match := re.match(r"\s*# --- (.+?) -+$", line))}
    sections: dict[str, list[str]] = {}
    for node in ast.parse("".join(lines)).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            title = titles[max((n for n in titles if n < node.lineno), default=min(titles))]
            sections.setdefault(title, []).append(node.target.id)
    return sections


def coerce_fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (from YAML or flag strings; ``-`` or ``_`` in names) converted to the types of
    dataclass ``cls``'s fields; :class:`ConfigError` for an unknown name or a wrong type."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    coerced = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"unknown config key {key!r}{_suggest(name, known)}")
        coerced[name] = _coerce(name, value, hints[name])
    return coerced


@dataclass(frozen=True)
class InferenceSettings:
    """How a saved model runs: the options predict, evaluate, explain and serve share, one default each.

    Example::

        >>> InferenceSettings().batch_size, InferenceSettings().device
        (64, 'auto')
    """

    batch_size: int = 64
    """Documents per forward pass at most; batches are also bounded by a padded-token budget."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda or cuda:N."""
    precision: str = "auto"
    """auto (bf16 autocast where the GPU or CPU has native bf16, else float32), 32-true, bf16-mixed or
    16-mixed; with 32-true a text's probabilities do not depend on its batch neighbours beyond float32
    rounding."""

    def __post_init__(self) -> None:
        check_batch_size(self.batch_size)


def check_batch_size(value: Any, name: str = "batch_size") -> int:
    """The one rule for a batch size (documents per forward pass): a whole number of at least 1.

    Every library entry point that takes one (Predictor, the ONNX predictor, serve, the feature cache,
    length-sorted batches) calls this, so Python callers and every command get the same message.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        flag = "--" + name.lstrip("-").replace("_", "-")
        label = name if name.startswith("--") else f"{name} ({flag})"
        raise ConfigError(f"{label} must be at least 1 (a whole number), got {value!r}")
    return value


def check_heads(n_embed: int | None, n_heads: int | None) -> None:
    """The one rule for attention heads: they split the width evenly (None: decided by the backbone later)."""
    if n_embed is not None and n_heads is not None and n_embed % n_heads:
        raise ConfigError(f"n_embed ({n_embed}) must be divisible by n_heads ({n_heads})")


def check_float16_device(precision: str, *, on_gpu: bool) -> None:
    """The one rule for float16 (``16-mixed``): it needs a GPU (CPUs have no fast float16 matmuls)."""
    if precision.startswith("16") and not on_gpu:
        raise ConfigError(f"precision {precision} (float16) needs a GPU; on a CPU use bf16-mixed "
                          "(fast with AVX512-BF16 or AMX), 32-true, or auto")


def check_dataset_choice(train_file: Any, test_file: Any, dataset: str | None,
                         error: type[Exception] = ConfigError) -> None:
    """The one rule for naming a dataset: a labelled ``train_file`` (``test_file`` only beside it), a hub
    ``dataset``, or neither (20 Newsgroups); ``error`` is the exception to raise."""
    if test_file and not train_file:
        raise error("test_file needs train_file (without train_file the dataset is 20 Newsgroups)")
    if dataset is not None and train_file:
        raise error("give either train_file or dataset, not both")


# Where ``gpt2clf serve`` listens unless told otherwise (the defaults of gpt2clf.serve.app.serve).
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of the HTTP service (the ``gpt2clf serve`` flags).

    Example::

        >>> ServeSettings(max_texts=8).max_texts
        8
    """

    max_batch_tokens: int = 8192
    """Padded tokens (texts x longest text) one merged batch may hold; one request alone may exceed it."""
    max_wait_ms: float = 5.0
    """How long the first queued request waits for others to share its batch."""
    max_texts: int = 64
    """Texts one request may send (more: 413)."""
    max_text_chars: int = 100_000
    """Characters one text may have (more: 413)."""
    max_body_bytes: int = 2_000_000
    """Bytes one request body may have (more: 413)."""
    max_queue: int = 256
    """Requests waiting for the model; more get 503 with Retry-After."""
    request_timeout_s: float = 30.0
    """Seconds from arrival to answer; after that 504 and the request's texts are dropped."""
    micro_batching: bool = True
    """Merge concurrent requests into shared batches (off: one request per model call)."""
    model_name: str | None = None
    """Name reported as ``model`` in responses; None: the model folder's name (``runs/NAME/model`` gives NAME)."""

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_texts", "max_text_chars", "max_body_bytes", "max_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number of at least 1, got {value!r}")
        if not (0 <= self.max_wait_ms <= 10_000):
            raise ConfigError(f"--max-wait-ms must be between 0 and 10000, got {self.max_wait_ms!r}")
        if not (self.request_timeout_s > 0 and math.isfinite(self.request_timeout_s)):
            raise ConfigError(f"--request-timeout-s must be a positive number, got {self.request_timeout_s!r}")


# The environment variable ``gpt2clf serve`` reads its API key from (gpt2clf.serve.auth reads it).
API_KEY_ENV = "GPT2CLF_API_KEY"


@dataclass(frozen=True)
class ServeAccess:
    """Who may use the HTTP service (the ``gpt2clf serve`` access flags).

    The key itself is never a flag or a field: on a command line it would show in the process
    list. It comes from ``GPT2CLF_API_KEY`` or from the file named here (gpt2clf.serve.auth).

    Example::

        >>> ServeAccess(api_key_file="/run/secrets/gpt2clf-key").allow_unauthenticated
        False
    """

    api_key_file: str | None = None
    """A file holding the API key (one line; surrounding whitespace ignored); default: the GPT2CLF_API_KEY
    environment variable; neither: no key. With a key, every endpoint except /healthz, /readyz, the page
    and the OpenAPI schema needs the header 'Authorization: Bearer KEY'."""
    allow_unauthenticated: bool = False
    """Serve on an address other than loopback without an API key (refused otherwise): anyone who can
    reach the port may use every endpoint."""


PRESETS: dict[str, dict[str, Any]] = {
    # The published seed experiment: GPT-2 small, two custom 768-wide blocks with 2 heads,
    # plain AdamW at one constant rate for every parameter.
    "blog": dict(
        backbone="gpt2", batch_size=16, max_length=512, learning_rate=1e-5, head_learning_rate=1e-5,
        n_embed=768, n_heads=2, n_blocks=2, dropout=0.2, epochs=5, validation_ratio=0.2,
        warmup_ratio=0.0, lr_schedule="constant", weight_decay=0.01, gradient_clip=None,
        long_documents="truncate", fusion="none",
    ),
    # The GPU recipe for real GPT-2 that the proxy measurements point to (ACCURACY.md): whole posts
    # in overlapping 512-token windows, full fine-tuning with layer-wise decaying rates, TF-IDF fusion.
    "best": dict(
        backbone="gpt2", max_length=512, long_documents="chunks", max_chunks=4, chunk_aggregation="mean",
        batch_size=16, epochs=4, learning_rate=3e-5, head_learning_rate=1e-4, layerwise_lr_decay=0.9,
        warmup_ratio=0.06, lr_schedule="linear", dropout=0.1, n_blocks=1, pooling="attention", fusion="tfidf",
    ),
    # The whole 20 Newsgroups job in about an hour on a 4-core laptop CPU with real GPT-2 small
    # (README, "Presets"): GPT-2 frozen and run once over the start and end of each post (192
    # tokens) into the feature cache, one narrow block on top, TF-IDF fusion.
    "cpu": dict(
        backbone="gpt2", freeze="backbone", feature_cache=True, max_length=192, long_documents="head-tail",
        n_embed=256, n_heads=4, n_blocks=1, pooling="attention", batch_size=32, epochs=4, learning_rate=1e-3,
        head_learning_rate=1e-3, warmup_ratio=0.06, lr_schedule="cosine", dropout=0.1, fusion="tfidf",
    ),
    # Finishes in minutes on a 2-core CPU: the backbone is frozen and run once over the data
    # (feature cache); only our blocks and head train, on short, subsampled documents.
    "cpu-quick": dict(
        freeze="backbone", feature_cache=True, max_length=128, max_train_samples=2000,
        max_eval_samples=1000, n_embed=256, n_heads=4, n_blocks=1, dropout=0.1, batch_size=32,
        epochs=5, learning_rate=1e-3, head_learning_rate=1e-3, warmup_ratio=0.1, lr_schedule="cosine",
    ),
}


# What --preset accepts: auto picks a recipe for the machine, none keeps the plain defaults.
PRESET_CHOICES = ("auto", "none", *PRESETS)
# The settings the recipes that --preset auto picks from decide. Setting one of them yourself means you
# are choosing the recipe, so auto then keeps the plain defaults rather than mixing your value into a
# recipe you did not ask for (e.g. --freeze none into the cpu recipe's learning rate of 1e-3). To adjust
# a recipe instead, name it: --preset cpu --epochs 1.
RECIPE_FIELDS = tuple(sorted((set(PRESETS["cpu"]) | set(PRESETS["best"]) | {"train_top_layers"}) - {"backbone"}))


def choose_preset(explicit: Any, *, gpu: bool | None = None) -> tuple[str, str]:
    """The recipe ``--preset auto`` stands for, and one line saying why.

    ``best`` (full fine-tuning) where a CUDA GPU is present, ``cpu`` (a frozen backbone run once
    into the feature cache: about an hour on a laptop) elsewhere; ``none`` (the plain defaults)
    when ``explicit``, the names of the fields set by hand, holds one of :data:`RECIPE_FIELDS`.
    ``gpu`` None asks PyTorch whether CUDA is available.

    Example::

        >>> choose_preset(["epochs"], gpu=False)[0], choose_preset(["seed"], gpu=False)[0]
        ('none', 'cpu')
    """
    given = sorted(set(explicit) & set(RECIPE_FIELDS))
    if given:
        names = ", ".join("--" + name.replace("_", "-") for name in given[:3])
        return "none", (f"recipe: the plain defaults, because you set {names} (--preset auto picks a recipe only "
                        "when none of its settings is given; --preset cpu or best starts from one, e.g. --preset cpu "
                        "--epochs 1)")
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    if gpu:
        return "best", ("recipe: best (full fine-tuning, whole posts in windows, TF-IDF fusion), because a CUDA GPU "
                        "is present; --preset cpu for the frozen one-hour recipe")
    return "cpu", ("recipe: cpu (the backbone frozen and run once into a feature cache over the start and end of "
                   "each post, one narrow block, TF-IDF fusion), because there is no CUDA GPU and full fine-tuning "
                   "on a CPU takes many hours; --preset best fine-tunes anyway, --preset none keeps the defaults")


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The mapping a YAML config file holds ({} for an empty file); a one-line ConfigError otherwise."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from err
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return values


def _suggest(name: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` (from YAML or a flag string) to the field's declared type."""
    args = typing.get_args(hint)
    is_optional = (typing.get_origin(hint) in (typing.Union, types.UnionType)) and type(None) in args
    if is_optional:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    try:
        if origin is list:
            if name in VERBATIM_LISTS:  # column names may hold commas: a string is one name
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, (list, tuple)) or any(isinstance(v, (dict, list)) for v in value):
                    raise TypeError
                return [str(v) for v in value]
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            # "a,b" (a flag or YAML string) and ["a", "b"] (a repeated flag or YAML list) mean the same
            return [v.strip() for item in value for v in str(item).split(",") if v.strip()]
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise TypeError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if hint is str:
            if isinstance(value, (dict, list)):
                raise TypeError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    readable = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{name} expects {readable}{' or null' if is_optional else ''}, got {value!r}")
