"""Feature cache for a frozen backbone: run it once over a dataset, train many epochs from disk.

With ``freeze="backbone"`` the backbone maps a document to the same hidden states in every
epoch, so running it every step wastes most of each step (two thirds with the ``blog`` preset's
two 768-wide blocks on GPT-2 small, more with smaller blocks). :func:`cached_features`
runs it once over a dataset (length-sorted batches, ``torch.inference_mode``), stores the last
hidden states on disk and hands back a :class:`FeatureDataset`; training then runs only our
blocks and head (:meth:`GPT2Classifier.classify_hidden_states`) on batches made by
:class:`FeatureCollator`. :func:`feature_logits` evaluates from the cache.

With ``train_top_layers=K`` the cache holds instead the output of the frozen layers below
the top ``K`` (:meth:`GPT2Classifier.backbone_hidden_states` with ``num_layers``), and
:func:`logits_from_features` runs the top ``K`` layers, then our part
(``FeatureDataset.start_layer`` says which).

On-disk layout (one folder per cache key, under the cache root)::

    ROOT/<key>/meta.json     what the key was made of, sizes, dtype (written last)
    ROOT/<key>/hidden.bin    float16 (total_tokens, width), documents concatenated without padding
    ROOT/<key>/offsets.bin   int64 (num_documents + 1,): document i is rows offsets[i]:offsets[i+1]

A cache is computed into ``ROOT/.<key>.partial/`` under a lock on the cache root (a second run
computing the same cache waits for the first, then reads its result) and renamed into place only
when complete, so a partial folder is never read as a cache. It also holds ``done.bin`` (which
documents' rows are on disk) and ``progress.json``, saved at least once a minute and when the run is
interrupted, so the next run asking for the same cache computes only the rest: a cache pass of
hours survives Ctrl-C, a reboot or the end of a working session. Deleting a partial folder is safe
(the work is just redone). Folders ``ROOT/.<key>.<host>.<pid>.tmp`` from older versions are removed
once their writer process is gone. The key hashes everything the stored
values depend on: the backbone's weights and config (only the frozen part), the tokenizer
name, the exact token ids (which also capture ``max_length`` truncation), ``max_length``,
the compute path (precision, int8 included, and the body unless it is transformers' own:
:mod:`gpt2clf.infer.frozen_pass`, which runs the pass), the storage dtype, the split layer and
:data:`FORMAT_VERSION`; so a stale cache is never used, and caches of different paths never mix.
Labels are not part of the key: they are attached on load.

Root: ``cache_root`` (``Config.cache_dir``), else the environment variable ``GPT2CLF_CACHE``, else
``~/.cache/gpt2clf/features``.

A :class:`FeatureCacheSpec` holds what a run's caches are of and where they live (root, tokenizer,
split layer, precision, ``max_length``, whether to start from a lower cache) and how the pass runs;
:func:`gpt2clf.training.inputs.feature_cache_spec` builds it once from a Config and the model (None
when the run uses no cache), and :meth:`FeatureCacheSpec.locate` is the one place that turns it and a dataset's tokens
into a key, a folder, a lower cache to start from and the path of the pass (:meth:`FeatureCacheSpec.frozen_pass`).

Size: 2 bytes x width per token, about 1.5 KB per GPT-2 small token: the whole 20 Newsgroups
corpus at 512 tokens (6.8 M tokens) takes about 10 GB.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gpt2clf.config import PADDING_SIDES, check_batch_size
from gpt2clf.data.batching import (
    PaddingCollator,
    flatten_windows,
    index_and_labels,
    label_value,
)
from gpt2clf.errors import ConfigError, DataError
from gpt2clf.files import atomic_write_bytes, atomic_write_json
from gpt2clf.infer.frozen_pass import FrozenPass, choose_frozen_pass
from gpt2clf.infer.runtime import batched_inference, logits_in_input_order
from gpt2clf.model.classifier import GPT2Classifier
from gpt2clf.training.folder_lock import exclusive_lock, remove_abandoned_temporaries

__all__ = [
    "CacheLocation", "FeatureCacheSpec", "FeatureCollator", "FeatureDataset", "WindowedFeatures", "cache_key",
    "cache_root_dir",
    "cached_features", "feature_logits", "layers_to_compute", "logits_from_features"
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CACHE_ENV = "GPT2CLF_CACHE"
STORAGE_DTYPE = np.float16
HIDDEN_FILE = "hidden.bin"
OFFSETS_FILE = "offsets.bin"
META_FILE = "meta.json"
# A computation in progress: ROOT/.<key>.partial/ holds the cache's files plus these two (see _compute_into).
PARTIAL_SUFFIX = ".partial"
DONE_FILE = "done.bin"  # uint8 per document: 1 once its rows are flushed to hidden.bin
PROGRESS_FILE = "progress.json"  # what the partial is of, and the seconds spent on it so far
CHECKPOINT_SECONDS = 60.0  # an interruption the process cannot catch (kill -9, power) loses at most this
_FP16_MAX = float(np.finfo(np.float16).max)
# Config keys that name where a backbone came from rather than what it computes.
_CONFIG_KEYS_IGNORED = ("_name_or_path", "transformers_version", "_commit_hash", "name_or_path")


# ------------------------------------------------------------------------------------------
# Datasets and batches
# ------------------------------------------------------------------------------------------
class FeatureDataset(Dataset):
    """Cached hidden states of one tokenized dataset, read lazily from a memory map.

    Item ``i`` is ``{"hidden_states": float16 Tensor (T_i, width), "labels": int, "index": i}``
    (``labels`` only when given). ``lengths`` holds each document's token count (for
    length-grouped samplers), ``width`` the hidden size, ``start_layer`` the backbone layer
    the stored states feed (None: they are the backbone's final output).

    The memory map is opened on first access and dropped when pickled, so DataLoader
    workers each open their own instead of copying the whole array.
    """

    def __init__(self, folder: str | Path, labels: Sequence[Any] | None = None) -> None:
        self.folder = Path(folder)
        meta = _read_meta(self.folder)
        if meta is None:
            raise DataError(f"{self.folder} is not a complete gpt2clf feature cache")
        self.meta = meta
        self.key: str = meta["key"]
        self.width: int = int(meta["width"])
        self.start_layer: int | None = meta.get("start_layer")
        self.offsets = np.fromfile(self.folder / OFFSETS_FILE, dtype=np.int64)
        self.lengths: list[int] = np.diff(self.offsets).tolist()
        if labels is not None and len(labels) != len(self.lengths):
            raise ValueError(f"FeatureDataset has {len(self.lengths)} documents but got {len(labels)} labels")
        self.labels = None if labels is None else [label_value(label) for label in labels]
        self._hidden: np.memmap | None = None

    def _array(self) -> np.memmap:
        if self._hidden is None:
            rows = int(self.offsets[-1])
            self._hidden = np.memmap(self.folder / HIDDEN_FILE, dtype=STORAGE_DTYPE, mode="r",
                                     shape=(rows, self.width))
        return self._hidden

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        # np.array copies out of the read-only map (torch refuses non-writable arrays).
        item: dict[str, Any] = {"hidden_states": torch.from_numpy(np.array(self._array()[start:stop])),
                                "index": i}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_hidden"] = None  # never pickle the mapped array itself
        return state


class WindowedFeatures(Dataset):
    """Cached windows grouped back into documents (long documents cut into chunks).

    ``windows`` is a :class:`FeatureDataset` with one entry per window, in document order;
    ``window_counts[i]`` windows belong to document ``i``. Item ``i`` is
    ``{"windows": [float16 Tensor (T_w, width), ...], "labels": int, "index": i}``.
    """

    def __init__(self, windows: FeatureDataset, window_counts: Sequence[int], labels: Sequence[Any] | None = None):
        if sum(window_counts) != len(windows):
            raise ValueError(f"{len(windows)} cached windows but the counts add up to {sum(window_counts)}")
        self.windows = windows
        self.starts = np.concatenate([[0], np.cumsum(window_counts)]).astype(np.int64)
        self.lengths = [sum(windows.lengths[self.starts[i]:self.starts[i + 1]]) for i in range(len(window_counts))]
        self.labels = None if labels is None else [label_value(label) for label in labels]
        self.start_layer = windows.start_layer
        self.key = windows.key

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rows = range(int(self.starts[i]), int(self.starts[i + 1]))
        item: dict[str, Any] = {"windows": [self.windows[r]["hidden_states"] for r in rows], "index": i}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


class FeatureCollator:
    """Pads :class:`FeatureDataset` (or :class:`WindowedFeatures`) items to the longest in the batch.

    Returns ``hidden_states`` float32 (B, T, width), zero in padded slots;
    ``attention_mask`` long (B, T), 1 for real tokens; ``index``; and ``labels`` when the
    items have them; windowed items give a row per window and ``document_index``. Padding goes on
    the right or the left (``padding_side``).
    """

    def __init__(self, padding_side: str = "right") -> None:
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.padding_side = padding_side

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Tensor]:
        rows, document_index = flatten_windows(features, "hidden_states")
        states = [torch.as_tensor(s) for s in rows]
        width = max((s.shape[0] for s in states), default=0)
        dim = states[0].shape[-1] if states else 0
        hidden = torch.zeros((len(states), width, dim), dtype=torch.float32)
        mask = torch.zeros((len(states), width), dtype=torch.long)
        for row, s in enumerate(states):
            n = s.shape[0]
            cols = slice(0, n) if self.padding_side == "right" else slice(width - n, width)
            hidden[row, cols] = s.float()
            mask[row, cols] = 1
        batch = {"hidden_states": hidden, "attention_mask": mask, **index_and_labels(features)}
        if document_index is not None:
            batch["document_index"] = document_index
        return batch


# ------------------------------------------------------------------------------------------
# Which cache: the spec, and where one dataset's cache is
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FeatureCacheSpec:
    """What a run's feature caches are of, where they live and how the backbone pass runs.

    Built once per run (:func:`~gpt2clf.training.inputs.feature_cache_spec` from a Config, or :meth:`for_model`); the
    cache functions take it instead of the settings one by one. ``start_layer`` is the backbone
    layer the stored states feed (the top ``train_top_layers`` run above them), None when the
    cache holds the backbone's final output. ``precision`` is the pass's: ``32-true``, ``bf16-mixed``
    (autocast) or ``int8`` (:func:`~gpt2clf.infer.frozen_pass.resolve_cache_precision` of
    ``Config.cache_precision``). ``batch_size`` and ``max_batch_tokens`` shape the pass only, never the stored values.
    """

    root: Path
    tokenizer_name: str
    backbone_layers: int
    start_layer: int | None = None
    max_length: int | None = None
    precision: str = "32-true"
    from_lower: bool = False
    batch_size: int = 32
    max_batch_tokens: int | None = None

    @classmethod
    def for_model(cls, model: GPT2Classifier, *, cache_root: str | Path | None = None,
                  train_top_layers: int | None = None, **settings: Any) -> FeatureCacheSpec:
        """The spec for ``model``'s backbone: ``cache_root`` resolved (:func:`cache_root_dir`), the split layer
        below the top ``train_top_layers`` checked (``0 < K <`` layers), ``settings`` as the fields."""
        return cls(root=cache_root_dir(cache_root), backbone_layers=len(model.backbone_layers()),
                   start_layer=_start_layer(model, train_top_layers), **settings)

    @property
    def frozen_layers(self) -> int:
        """How many backbone layers a cache's states come out of (what a full cache pass runs)."""
        return self.start_layer if self.start_layer is not None else self.backbone_layers

    def frozen_pass(self, model: GPT2Classifier, sample: Sequence[Sequence[int]]) -> FrozenPass:
        """The path the backbone pass takes (:func:`~gpt2clf.infer.frozen_pass.choose_frozen_pass`: the native
        body where the cached layers are frozen, at ``precision``; int8 checked on ``sample``'s first documents)."""
        return choose_frozen_pass(model, precision=self.precision, start_layer=self.start_layer, sample=sample)

    def locate(self, model: GPT2Classifier, token_lists: Sequence[Sequence[int]]) -> CacheLocation:
        """Where the cache of ``token_lists`` is, or goes: its key (which records the pass's path, see
        :meth:`frozen_pass`), and (``from_lower``, on a miss) the lower cache of the same tokens to start
        from, whose layer then is part of the key."""
        frozen = self.frozen_pass(model, token_lists)
        fields = {**cache_key_fields(model, token_lists, tokenizer_name=self.tokenizer_name,
                                     max_length=self.max_length, precision=frozen.precision,
                                     start_layer=self.start_layer), **frozen.key_fields()}
        found = CacheLocation(self.root, fields, frozen=frozen)
        if found.complete or not (self.from_lower and self.root.is_dir()):
            return found
        lower = _lower_cache(model, self, fields)
        if lower is None:
            return found
        return CacheLocation(self.root, {**fields, "derived_from_layer": lower.start_layer}, lower, frozen)


@dataclasses.dataclass(frozen=True)
class CacheLocation:
    """One dataset's cache under ``root``: what its key hashes (``fields``), the lower cache it is
    computed from (None: from the tokens) and the path of the pass that computes it (``frozen``)."""

    root: Path
    fields: dict[str, Any]
    lower: FeatureDataset | None = None
    frozen: FrozenPass | None = None

    @property
    def key(self) -> str:
        return cache_key(self.fields)

    @property
    def folder(self) -> Path:
        return self.root / self.key

    @property
    def complete(self) -> bool:
        """Whether the cache is on disk, complete (a hit)."""
        return _read_meta(self.folder) is not None


# ------------------------------------------------------------------------------------------
# Computing or loading a cache
# ------------------------------------------------------------------------------------------
def cache_root_dir(cache_root: str | Path | None = None) -> Path:
    """Where caches live: ``cache_root`` if given, else ``$GPT2CLF_CACHE``, else ``~/.cache/gpt2clf/features``."""
    if cache_root is not None:
        return Path(cache_root).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "gpt2clf" / "features"


def backbone_fingerprint(model: GPT2Classifier, start_layer: int | None = None) -> str:
    """SHA-256 of what the backbone computes: its class, config and the frozen weights.

    With ``start_layer`` only the part below that layer counts (embeddings and
    ``layers[:start_layer]``): the top layers train and change, the cached part does not.
    The config is taken without its name or path, so the same weights loaded from
    another folder give the same fingerprint.
    """
    backbone = model.backbone
    config = json.loads(backbone.config.to_json_string(use_diff=False))
    for key in _CONFIG_KEYS_IGNORED:
        config.pop(key, None)
    digest = hashlib.sha256()
    digest.update(type(backbone).__name__.encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(model.adapter.describe_positions().encode())
    skipped: set[int] = set()
    if start_layer is not None:
        top = list(model.adapter.layers())[start_layer:] + model.adapter.final_norms()
        skipped = {id(t) for module in top for t in (*module.parameters(), *module.buffers())}
    seen: set[int] = set()
    for name, tensor in sorted(backbone.state_dict(keep_vars=True).items()):
        if id(tensor) in skipped or id(tensor) in seen:  # top layers, and tied weights once
            continue
        seen.add(id(tensor))
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        if data.numel():
            digest.update(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def tokens_fingerprint(token_lists: Sequence[Sequence[int]]) -> str:
    """SHA-256 of the exact token ids, in order, document boundaries included."""
    digest = hashlib.sha256()
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
    digest.update(lengths.tobytes())
    for start in range(0, len(token_lists), 4096):  # chunked: bounded memory for big corpora
        chunk = [i for tokens in token_lists[start:start + 4096] for i in tokens]
        digest.update(np.asarray(chunk, dtype=np.int64).tobytes())
    return digest.hexdigest()


def cache_key_fields(model: GPT2Classifier, token_lists: Sequence[Sequence[int]], *, tokenizer_name: str,
                     max_length: int | None = None, precision: str = "32-true",
                     start_layer: int | None = None) -> dict[str, Any]:
    """Everything a cache's values depend on (hashed into its key, and kept in meta.json)."""
    return {
        "format_version": FORMAT_VERSION,
        "backbone": backbone_fingerprint(model, start_layer),
        "backbone_name": model.backbone_name,
        "tokenizer": str(tokenizer_name),
        "tokens": tokens_fingerprint(token_lists),
        "max_length": max_length,
        "precision": precision,
        "storage_dtype": np.dtype(STORAGE_DTYPE).name,
        "start_layer": start_layer,
    }


def cache_key(fields: dict[str, Any]) -> str:
    """The folder name of a cache: a hash of :func:`cache_key_fields` (names are informative only)."""
    significant = {k: v for k, v in fields.items() if k != "backbone_name"}
    return hashlib.sha256(json.dumps(significant, sort_keys=True).encode()).hexdigest()[:32]


def cached_features(model: GPT2Classifier, token_lists: list[list[int]], labels: Sequence[Any] | None,
                    spec: FeatureCacheSpec, *, device: torch.device | str = "cpu",
                    progress: Callable[[int, int], None] | None = None) -> FeatureDataset:
    """The frozen backbone's hidden states for ``token_lists``: loaded from the cache, or computed once.

    On a miss the backbone runs in eval mode under ``torch.inference_mode`` over
    length-sorted batches of ``spec.batch_size`` (autocast for ``*-mixed`` precisions) on
    ``device`` (where the model already is), and the result is written atomically. A hit
    never runs the backbone. With ``spec.start_layer`` the cache holds the output of the layers
    below it (``train_top_layers``); None: the backbone's output.
    ``progress(documents_done, documents)`` is called before the first batch of a computation and after
    each; an interrupted computation resumes where it stopped when the same call is made again.

    ``spec.from_lower``: on a miss, when a cache of the same documents at a lower split layer exists
    (a ``train_top_layers`` run's), run only the layers above it, reading its stored states. That
    takes a fraction of the time, but the states differ from a full pass by the float16 rounding
    of the lower cache, so such a cache has a key of its own (``derived_from_layer``) and is used
    only when ``from_lower`` asks for it.
    """
    check_batch_size(spec.batch_size)
    if not token_lists:
        raise DataError("cannot cache features of an empty dataset")
    if any(len(tokens) == 0 for tokens in token_lists):
        raise DataError("every document needs at least one token (tokenize_texts guarantees it)")
    found = spec.locate(model, token_lists)
    if found.complete:
        log.info("feature cache hit: %s", found.folder)
        return FeatureDataset(found.folder, labels)
    return _compute_cache(model, token_lists, labels, spec, found, device=device, progress=progress)


def layers_to_compute(model: GPT2Classifier, token_lists: Sequence[Sequence[int]], spec: FeatureCacheSpec) -> float:
    """How many backbone layers :func:`cached_features` with ``spec`` would run over all the documents' tokens
    (for time estimates): 0 on a hit, fewer than the frozen part's with ``from_lower`` and a lower cache,
    scaled down by the share of tokens an interrupted run already computed into a partial folder."""
    found = spec.locate(model, token_lists)
    if found.complete:
        return 0
    target = spec.frozen_layers - (int(found.lower.start_layer or 0) if found.lower is not None else 0)
    lengths = [len(tokens) for tokens in token_lists]
    partial = _PartialCache.resumed(spec.root, found.key, lengths, model.backbone_width)
    if partial is None:
        return target
    return target * partial.tokens_left() / max(1, sum(lengths))


def _lower_cache(model: GPT2Classifier, spec: FeatureCacheSpec, fields: dict[str, Any]) -> FeatureDataset | None:
    """The complete cache of the same tokens at the highest split layer below ``spec``'s (None: none)."""
    same = ("format_version", "tokenizer", "tokens", "max_length", "precision", "storage_dtype", "frozen_pass")
    found: set[int] = set()
    for meta_path in spec.root.glob(f"*/{META_FILE}"):
        meta = _read_meta(meta_path.parent)
        if (meta is not None and all(meta.get(k) == fields.get(k) for k in same) and "derived_from_layer" not in meta
                and isinstance(meta.get("start_layer"), int) and meta["start_layer"] < spec.frozen_layers):
            found.add(meta["start_layer"])
    for layer in sorted(found, reverse=True):
        lower = CacheLocation(spec.root, {**fields, "start_layer": layer,
                                          "backbone": backbone_fingerprint(model, layer)})
        if lower.complete:  # the same frozen weights below that layer
            return FeatureDataset(lower.folder)
    return None


def _compute_cache(model: GPT2Classifier, token_lists: list[list[int]], labels: Sequence[Any] | None,
                   spec: FeatureCacheSpec, found: CacheLocation, *, device: torch.device | str,
                   progress: Callable[[int, int], None] | None) -> FeatureDataset:
    """Run the backbone over ``token_lists`` (or its layers above ``found.lower``, a lower cache of them) into
    ``found.folder``, under a lock on the root; resume the partial folder an interrupted run left, if any."""
    root, key, folder = spec.root, found.key, found.folder
    root.mkdir(parents=True, exist_ok=True)
    # One writer at a time per cache root: a second run computing the same cache waits, then finds it complete.
    with exclusive_lock(root):
        if _read_meta(folder) is not None:
            log.info("feature cache hit (written by another run): %s", folder)
            return FeatureDataset(folder, labels)
        remove_abandoned_temporaries(root)
        lengths = [len(tokens) for tokens in token_lists]
        width = model.backbone_width
        partial = _PartialCache.resumed(root, key, lengths, width)
        needed = (_hidden_bytes(partial.tokens_left(), width) if partial is not None
                  else _hidden_bytes(sum(lengths), width) + 8 * (len(lengths) + 1))
        free = shutil.disk_usage(root).free
        if needed > free:
            raise DataError(f"the feature cache needs {needed / 2**30:.1f} GiB more but {root} has "
                            f"{free / 2**30:.1f} GiB free; set --cache-dir (or GPT2CLF_CACHE) elsewhere or "
                            "train without feature_cache")
        if partial is None:
            partial = _PartialCache.started(root, key, lengths, width)
        else:
            log.info("resuming the feature cache in %s: %d of %d documents were done", partial.folder,
                     int(partial.done.sum()), len(lengths))
        try:
            seconds = _compute_into(partial, model, token_lists, spec, found, device=torch.device(device),
                                    progress=progress)
        except DataError:  # the same documents would fail the same way: nothing worth resuming
            shutil.rmtree(partial.folder, ignore_errors=True)
            raise
        meta = {**found.fields, "key": key, "width": width, "num_documents": len(lengths),
                "num_tokens": int(sum(lengths)), "compute_seconds": round(seconds, 1),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(partial.folder / META_FILE, meta)  # last: a folder without it is incomplete
        if folder.exists():  # an incomplete leftover (no writer holds the lock): never read, replace it
            shutil.rmtree(folder, ignore_errors=True)
        os.rename(partial.folder, folder)
        for name in (DONE_FILE, PROGRESS_FILE):  # bookkeeping of the computation, not part of the cache
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
    log.info("feature cache written: %s (%.0f s of computation)", folder, seconds)
    return FeatureDataset(folder, labels)


@dataclasses.dataclass
class _PartialCache:
    """A cache being computed: its folder ``ROOT/.<key>.partial/`` (never read as a cache) and which documents'
    rows are on disk (``done``, updated in place), with the seconds earlier runs spent on it."""

    folder: Path
    key: str
    lengths: list[int]
    width: int
    done: np.ndarray
    seconds: float = 0.0

    @classmethod
    def started(cls, root: Path, key: str, lengths: list[int], width: int) -> _PartialCache:
        """A fresh partial folder: offsets, a (sparse) hidden-state file of full size, nothing done yet."""
        partial = cls(_partial_folder(root, key), key, lengths, width, np.zeros(len(lengths), dtype=bool))
        shutil.rmtree(partial.folder, ignore_errors=True)
        partial.folder.mkdir()
        offsets = _offsets(lengths)
        atomic_write_bytes(partial.folder / OFFSETS_FILE, offsets.tobytes())
        with open(partial.folder / HIDDEN_FILE, "wb") as handle:
            handle.truncate(_hidden_bytes(int(offsets[-1]), width))
        partial.save(0.0)
        return partial

    @classmethod
    def resumed(cls, root: Path, key: str, lengths: list[int], width: int) -> _PartialCache | None:
        """The partial folder an interrupted run left of exactly this cache, or None (none, or unusable)."""
        folder = _partial_folder(root, key)
        try:
            info = json.loads((folder / PROGRESS_FILE).read_text(encoding="utf-8"))
            if (info.get("format_version") != FORMAT_VERSION or info.get("key") != key
                    or info.get("num_documents") != len(lengths) or info.get("width") != width):
                return None
            offsets = np.fromfile(folder / OFFSETS_FILE, dtype=np.int64)
            expected = _offsets(lengths)
            done = np.frombuffer((folder / DONE_FILE).read_bytes(), dtype=np.uint8)
            hidden_size = (folder / HIDDEN_FILE).stat().st_size
            if (not np.array_equal(offsets, expected) or done.size != len(lengths)
                    or hidden_size != _hidden_bytes(int(expected[-1]), width)):
                return None
            return cls(folder, key, lengths, width, done.astype(bool), float(info["compute_seconds"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def tokens_left(self) -> int:
        """How many tokens belong to the documents not yet done."""
        return sum(length for length, finished in zip(self.lengths, self.done, strict=True) if not finished)

    def save(self, seconds: float) -> None:
        """Record which documents' rows are on disk (call only after flushing them) and the seconds spent."""
        atomic_write_bytes(self.folder / DONE_FILE, self.done.astype(np.uint8).tobytes())
        atomic_write_json(self.folder / PROGRESS_FILE, {
            "format_version": FORMAT_VERSION, "key": self.key, "num_documents": len(self.lengths),
            "num_tokens": int(sum(self.lengths)), "width": self.width, "documents_done": int(self.done.sum()),
            "compute_seconds": round(seconds, 3)})


def _partial_folder(root: Path, key: str) -> Path:
    """Where the cache ``key`` is computed until it is complete (hidden: a partial folder is never read as a cache)."""
    return root / f".{key}{PARTIAL_SUFFIX}"


def _offsets(lengths: Sequence[int]) -> np.ndarray:
    """offsets.bin's content: document i is rows offsets[i]:offsets[i + 1] of hidden.bin."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _hidden_bytes(tokens: int, width: int) -> int:
    """hidden.bin's size: one row of ``width`` stored values per token."""
    return np.dtype(STORAGE_DTYPE).itemsize * tokens * width


def _start_layer(model: GPT2Classifier, train_top_layers: int | None) -> int | None:
    if not train_top_layers:
        return None
    layers = len(model.backbone_layers())
    if not 0 < train_top_layers < layers:
        raise ConfigError(f"a feature cache with train_top_layers needs 0 < K < {layers} (the backbone's "
                          f"layers), got {train_top_layers}")
    return layers - train_top_layers


def _compute_into(partial: _PartialCache, model: GPT2Classifier, token_lists: Sequence[Sequence[int]],
                  spec: FeatureCacheSpec, found: CacheLocation, *, device: torch.device,
                  progress: Callable[[int, int], None] | None) -> float:
    """Compute the documents not yet done into a partial folder, on ``found.frozen``'s path (from
    ``found.lower``'s states when it is set); return the seconds spent in all runs.

    ``partial.done`` is updated in place, and saved with the hidden states flushed before it at least every
    :data:`CHECKPOINT_SECONDS` and when an exception (Ctrl-C included) leaves, so a rerun resumes
    from there. The order of the remaining documents changes only the batching, which the masked
    padding makes irrelevant to the values.
    """
    folder, lengths, width, done = partial.folder, partial.lengths, partial.width, partial.done
    source, frozen = found.lower, found.frozen or spec.frozen_pass(model, token_lists)
    log.info("feature cache pass: %s", frozen.describe())
    offsets = np.fromfile(folder / OFFSETS_FILE, dtype=np.int64)
    hidden = np.memmap(folder / HIDDEN_FILE, dtype=STORAGE_DTYPE, mode="r+", shape=(int(offsets[-1]), width))
    collate = PaddingCollator(pad_token_id=0, padding_side="right")  # the pad id is masked: any id will do
    read_states = FeatureCollator()
    todo = np.flatnonzero(~done).tolist()

    def run_batch(positions: list[int]) -> Tensor:
        indices = [todo[p] for p in positions]
        if source is not None:  # only the layers above a lower cache of the same documents
            batch = read_states([source[i] for i in indices])
            return frozen.run_layers(batch["hidden_states"].to(device), batch["attention_mask"].to(device),
                                     int(source.start_layer or 0))
        batch = collate([{"input_ids": token_lists[i], "index": i} for i in indices])
        return frozen.hidden_states(batch["input_ids"].to(device), batch["attention_mask"].to(device))

    started = last_saved = time.monotonic()
    unsaved = False

    def save() -> None:
        nonlocal last_saved, unsaved
        hidden.flush()
        partial.save(partial.seconds + time.monotonic() - started)
        last_saved, unsaved = time.monotonic(), False

    if progress is not None:
        progress(int(done.sum()), len(lengths))
    try:
        outputs = batched_inference(model, [lengths[i] for i in todo], run_batch, device=device,
                                    precision=frozen.autocast_precision, batch_size=spec.batch_size,
                                    max_batch_tokens=spec.max_batch_tokens)
        for positions, states in outputs:
            states = states.float().cpu()
            peak = float(states.abs().max()) if states.numel() else 0.0
            if not peak <= _FP16_MAX:  # also catches NaN
                raise DataError(f"backbone hidden states reach {peak:g}, beyond float16's range; "
                                "the feature cache cannot store them (train without feature_cache)")
            rows = states.numpy().astype(STORAGE_DTYPE)
            for row, p in enumerate(positions):
                i = todo[p]
                hidden[offsets[i]:offsets[i + 1]] = rows[row, :lengths[i]]
                done[i] = True
            unsaved = True
            if time.monotonic() - last_saved >= CHECKPOINT_SECONDS:
                save()
            if progress is not None:
                progress(int(done.sum()), len(lengths))
    except DataError:
        raise
    except BaseException:  # interrupted (Ctrl-C, out of memory, ...): keep what is done for the rerun
        if unsaved:
            save()
        raise
    hidden.flush()
    for name in (HIDDEN_FILE, OFFSETS_FILE):
        with open(folder / name, "rb") as handle:
            os.fsync(handle.fileno())
    return partial.seconds + time.monotonic() - started


def _read_meta(folder: Path) -> dict[str, Any] | None:
    """A complete cache's meta.json, or None (missing, unreadable, other version, wrong sizes)."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION or meta.get("key") != folder.name:
            return None
        documents, tokens, width = int(meta["num_documents"]), int(meta["num_tokens"]), int(meta["width"])
        sizes_ok = ((folder / OFFSETS_FILE).stat().st_size == 8 * (documents + 1)
                    and (folder / HIDDEN_FILE).stat().st_size == _hidden_bytes(tokens, width))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return meta if sizes_ok else None


# ------------------------------------------------------------------------------------------
# Using a cache
# ------------------------------------------------------------------------------------------
def logits_from_features(model: GPT2Classifier, hidden_states: Tensor, attention_mask: Tensor,
                         start_layer: int | None = None, document_index: Tensor | None = None) -> Tensor:
    """Logits from a :class:`FeatureCollator` batch: the backbone's top layers (if any), then ours.

    ``start_layer`` is the dataset's :attr:`FeatureDataset.start_layer`; None when the cache
    holds the backbone's final output. ``document_index`` groups windows into documents.
    """
    if start_layer is not None:
        hidden_states = model.backbone_from_layer(hidden_states, attention_mask, start_layer)
    return model.classify_hidden_states(hidden_states, attention_mask, document_index)


def feature_logits(model: GPT2Classifier, dataset: FeatureDataset | WindowedFeatures, *, batch_size: int,
                   device: torch.device | str = "cpu", precision: str = "32-true",
                   max_batch_tokens: int | None = None) -> Tensor:
    """Float32 logits (N, num_labels) of a cached dataset, in dataset order (eval mode, length-sorted batches)."""
    device = torch.device(device)
    collate = FeatureCollator()

    def run_batch(indices: list[int]) -> Tensor:
        batch = collate([dataset[i] for i in indices])
        document_index = batch.get("document_index")
        return logits_from_features(model, batch["hidden_states"].to(device), batch["attention_mask"].to(device),
                                    dataset.start_layer,
                                    None if document_index is None else document_index.to(device))

    return logits_in_input_order(model, dataset.lengths, run_batch, device=device, precision=precision,
                                 batch_size=batch_size, max_batch_tokens=max_batch_tokens)
