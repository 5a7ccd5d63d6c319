"""Labelled texts in memory: :class:`TextDataset`, a dataset's train and test :class:`DatasetSplits`,
and the seeded stratified splits and subsets cut from them.

Every source (:mod:`~gpt2clf.data.newsgroups`, :mod:`~gpt2clf.data.labelled_files`,
:mod:`~gpt2clf.data.hub`, texts in memory) ends as these objects; :mod:`~gpt2clf.data.splits` puts
them together, and tokenization (:mod:`gpt2clf.data.batching`) reads them. Nothing here prints
or exits: oddities in the data are :class:`DataWarning`\\ s, mistakes :class:`~gpt2clf.errors.DataError`\\ s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpt2clf.errors import DataError, first_line

__all__ = ["DataWarning", "DatasetSplits", "TextDataset", "multi_hot", "stratified_split", "stratified_subset"]


class DataWarning(UserWarning):
    """Something in the data was fixed up or skipped (empty texts, undecodable bytes)."""




@dataclass
class TextDataset:
    """Texts with their labels and the label names.

    Single-label (``multi_label`` False): ``labels[i]`` is an int indexing ``label_names``.
    Multi-label: ``labels[i]`` is a multi-hot tuple of 0/1 ints, one per label name (a
    document may have none, one or several labels). Tuples are hashable, so the stratified
    splits below treat each combination of labels as a stratum.
    """

    texts: list[str]
    labels: list[Any]
    label_names: list[str]
    multi_label: bool = False

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"TextDataset got {len(self.texts)} texts but {len(self.labels)} labels")
        if self.multi_label and any(len(row) != len(self.label_names) for row in self.labels):
            raise ValueError("multi-label TextDataset labels must be multi-hot tuples, one entry per label name")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> TextDataset:
        """A new dataset of the documents at ``indices`` (in that order), same label names."""
        return TextDataset(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            label_names=list(self.label_names),
            multi_label=self.multi_label,
        )


def multi_hot(label_lists: Sequence[Sequence[str]], label_names: Sequence[str]) -> list[tuple[int, ...]]:
    """Multi-hot tuples (one 0/1 per name in ``label_names``) for lists of label names."""
    index = {name: i for i, name in enumerate(label_names)}
    rows = []
    for labels in label_lists:
        row = [0] * len(index)
        for label in labels:
            row[index[label]] = 1
        rows.append(tuple(row))
    return rows


@dataclass
class DatasetSplits:
    """A dataset's train and test splits and where they came from.

    ``train`` is the dataset's own training split, before any validation carve-out.
    ``source`` is JSON-able and lets :func:`splits_from_source` rebuild the same splits.
    """

    train: TextDataset
    test: TextDataset
    label_names: list[str]
    source: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# 20 Newsgroups


def stratified_split(ds: TextDataset, ratio: float, seed: int) -> tuple[TextDataset, TextDataset]:
    """``(rest, held_out)`` with ``ratio`` of the documents held out, stratified by label.

    Uses scikit-learn's ``train_test_split(stratify=labels, random_state=seed)``; falls back
    to an unstratified split when some class has fewer than two documents (or there are
    too few held-out places for every class). Both parts keep the dataset's order.

    Raises:
        DataError: ``ratio`` outside (0, 1) or too few documents to split.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < ratio < 1.0:
        raise DataError(f"split ratio must be between 0 and 1 (exclusive), got {ratio}")
    if len(ds) < 2:
        raise DataError(f"cannot split {len(ds)} document(s); need at least 2")
    indices = np.arange(len(ds))
    counts = Counter(ds.labels)
    stratify = ds.labels if min(counts.values()) >= 2 else None
    try:
        try:
            rest, held = train_test_split(indices, test_size=ratio, random_state=seed, stratify=stratify)
        except ValueError:  # e.g. fewer held-out places than classes
            rest, held = train_test_split(indices, test_size=ratio, random_state=seed)
    except ValueError as err:
        raise DataError(f"cannot hold out {ratio:g} of {len(ds)} documents ({first_line(err)}); "
                        "use another ratio or more data") from err
    return ds.subset(sorted(rest.tolist())), ds.subset(sorted(held.tolist()))


def stratified_subset(ds: TextDataset, n: int | None, seed: int) -> TextDataset:
    """At most ``n`` documents, stratified by label and seeded; the dataset itself when
    ``n`` is None or not smaller than it. Keeps the dataset's order."""
    from sklearn.model_selection import train_test_split

    if n is None or n >= len(ds):
        return ds
    if n < 1:
        raise DataError(f"a subset needs at least 1 document, got {n}")
    indices = np.arange(len(ds))
    counts = Counter(ds.labels)
    stratify = ds.labels if min(counts.values()) >= 2 else None
    try:
        keep, _ = train_test_split(indices, train_size=n, random_state=seed, stratify=stratify)
    except ValueError:  # n smaller than the number of classes, or similar
        keep, _ = train_test_split(indices, train_size=n, random_state=seed)
    return ds.subset(sorted(keep.tolist()))
