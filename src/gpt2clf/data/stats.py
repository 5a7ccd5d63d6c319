"""Dataset statistics: documents per split and class, and token lengths under a tokenizer.

:func:`dataset_stats` describes a dataset's own train and test splits (before any validation
carve-out); :func:`gpt2clf.report.plots.plot_dataset_stats` draws the result. Nothing here prints.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt2clf.data.batching import Windowing, body_lengths, reading_coverage, special_tokens_around
from gpt2clf.data.text_dataset import DatasetSplits

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["DatasetStats", "dataset_stats"]


class DatasetStats(dict):
    """The JSON-able statistics dict of :func:`dataset_stats`, plus the raw token lengths.

    ``lengths`` (split name -> untruncated token count per document) is an attribute, not a
    key, so ``json.dumps(stats)`` stays small while :func:`plot_dataset_stats` can still
    draw histograms. A plain ``dict(stats)`` copy drops it.
    """

    def __init__(self, *args: Any, lengths: dict[str, list[int]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lengths: dict[str, list[int]] = lengths or {}


def dataset_stats(splits: DatasetSplits, tokenizer: PreTrainedTokenizerBase, max_length: int,
                  windowing: Windowing | None = None) -> DatasetStats:
    """Class balance and token lengths of the train and test splits, and what the model would leave unread.

    Keys: ``num_classes``, ``label_names``, ``max_length``, ``tokenizer`` (its name or
    path), ``source``, ``reads`` (how ``windowing`` reads a document; default: truncation at
    ``max_length``) and ``splits.<train|test>`` with ``documents``, ``per_class`` (label
    name -> count, every label), ``tokens`` = ``{mean, min, p50, p90, p99, max,
    over_max_length}`` and ``unread`` (:meth:`~gpt2clf.data.batching.ReadingCoverage.to_dict`: documents
    read in part and the share of tokens the windows leave unread). Token counts are measured
    without truncation (special tokens included); ``over_max_length`` is the share of documents
    longer than ``max_length``. The raw lengths are in the result's ``lengths`` attribute (see
    :class:`DatasetStats`).
    """
    windowing = windowing or Windowing(max_length)
    prefix, suffix = special_tokens_around(tokenizer)
    specials = len(prefix) + len(suffix)
    stats = DatasetStats(
        num_classes=len(splits.label_names),
        label_names=list(splits.label_names),
        max_length=max_length,
        tokenizer=str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
        source=splits.source,
        reads=f"{windowing.mode}: {windowing.describe()}",
        splits={},
    )
    for name, ds in (("train", splits.train), ("test", splits.test)):
        bodies = body_lengths(ds.texts, tokenizer)
        lengths = [n + specials for n in bodies]  # as the tokenizer encodes them, special tokens included
        stats.lengths[name] = lengths
        if ds.multi_label:  # documents per label (a document may count for several)
            counts = Counter({i: int(n) for i, n in enumerate(np.asarray(ds.labels, dtype=np.int64).reshape(
                len(ds), len(splits.label_names)).sum(axis=0))})
        else:
            counts = Counter(ds.labels)
        array = np.asarray(lengths, dtype=np.int64)
        if len(array):
            p50, p90, p99 = (float(v) for v in np.percentile(array, [50, 90, 99]))
            tokens = {"mean": float(array.mean()), "min": int(array.min()), "p50": p50, "p90": p90,
                      "p99": p99, "max": int(array.max()),
                      "over_max_length": float((array > max_length).mean())}
        else:
            tokens = {"mean": 0.0, "min": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0,
                      "over_max_length": 0.0}
        stats["splits"][name] = {
            "documents": len(ds),
            "per_class": {label: counts.get(i, 0) for i, label in enumerate(splits.label_names)},
            "tokens": tokens,
            "unread": reading_coverage(bodies, windowing, specials).to_dict(),
        }
    return stats


def describe_dataset(config: Any, tokenizer_name: str, max_length: int) -> DatasetStats:
    """:func:`dataset_stats` of the dataset ``config`` (a :class:`~gpt2clf.config.Config`) names, read as its
    long-document settings say."""
    from gpt2clf.data.batching import load_tokenizer
    from gpt2clf.data.splits import config_dataset

    splits = config_dataset(config)
    return dataset_stats(splits, load_tokenizer(tokenizer_name), max_length, Windowing.of(config))
