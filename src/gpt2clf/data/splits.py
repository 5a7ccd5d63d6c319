"""The train, validation and test sets of a run, from any source: :class:`DataSource` in, :class:`SplitSets` out.

* :class:`DataSource` says where labelled text comes from and how it is split (the data fields of a
  :class:`~gpt2clf.config.Config`, :meth:`DataSource.of`): 20 Newsgroups (:mod:`~gpt2clf.data.newsgroups`),
  a labelled file (:mod:`~gpt2clf.data.labelled_files`) or a Hugging Face dataset (:mod:`~gpt2clf.data.hub`).
* :func:`load_dataset_splits` reads it into train and test :class:`~gpt2clf.data.text_dataset.TextDataset`\\ s
  plus a JSON-able ``source`` (absolute paths) that :func:`splits_from_source` rebuilds them from later;
  :func:`labelled_texts` does the same for texts held in memory.
* :func:`splits_for` gives the train, validation and test sets a Config names: the seeded validation
  carve-out, then the sample limits. Training and evaluation both go through it, so they always see
  the same documents.

Nothing here prints or exits: user mistakes raise :class:`~gpt2clf.errors.DataError` with a one-line
message, and recoverable oddities are reported as :class:`~gpt2clf.data.text_dataset.DataWarning`.

Example::

    >>> from gpt2clf.data.splits import DataSource, load_dataset_splits
    >>> splits = load_dataset_splits(DataSource(data_dir="../shared/data/20news-bydate.tar.gz"))  # doctest: +SKIP
    >>> len(splits.train), len(splits.test), len(splits.label_names)  # doctest: +SKIP
    (11314, 7532, 20)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2clf.config import check_dataset_choice
from gpt2clf.data.hub import load_hf_dataset
from gpt2clf.data.labelled_files import load_labelled_file
from gpt2clf.data.newsgroups import load_20newsgroups, normalise_strip, resolve_news_source
from gpt2clf.data.text_dataset import (
    DatasetSplits,
    DataWarning,
    TextDataset,
    multi_hot,
    stratified_split,
    stratified_subset,
)
from gpt2clf.errors import DataError
from gpt2clf.files import file_sha256

if TYPE_CHECKING:
    from gpt2clf.config import Config

__all__ = [
    "DataSource",
    "SplitSets",
    "config_dataset",
    "labelled_texts",
    "load_dataset_splits",
    "splits_for",
    "splits_from_source",
]


@dataclass(frozen=True)
class DataSource:
    """Where a dataset's labelled text comes from and how it is split: the data fields of a Config.

    20 Newsgroups when neither ``train_file`` nor ``dataset`` is given (read from ``data_dir``, with
    ``strip``); else a labelled file (``train_file``, and ``test_file`` or a ``test_ratio`` share of it)
    or a Hugging Face ``dataset`` (NAME or NAME:CONFIG). The columns, ``multi_label``, ``test_ratio``
    and ``seed`` apply to files and datasets. Each field means what the Config field of that name means
    (:data:`~gpt2clf.config.DATASET_FIELDS` and how the data is split).

    Raises:
        DataError: ``test_file`` without ``train_file``, or both ``train_file`` and ``dataset``.
    """

    train_file: str | Path | None = None
    test_file: str | Path | None = None
    dataset: str | None = None
    data_dir: str | Path | None = None
    strip: Sequence[str] = ()
    text_column: str | Sequence[str] = "text"
    label_column: str = "label"
    multi_label: bool = False
    test_ratio: float = 0.2
    seed: int = 42

    def __post_init__(self) -> None:
        check_dataset_choice(self.train_file, self.test_file, self.dataset, error=DataError)

    @classmethod
    def of(cls, config: Config) -> DataSource:
        """The data source ``config`` names."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})

    @property
    def stored_text_column(self) -> str | list[str]:
        """The text column as a source records it: one name alone, several as a list."""
        column = self.text_column
        if not isinstance(column, str) and len(column) == 1:
            column = column[0]
        return column if isinstance(column, str) else list(column)


def load_dataset_splits(source: DataSource | None = None) -> DatasetSplits:
    """Train and test splits of what ``source`` names (default: 20 Newsgroups, found as
    :func:`~gpt2clf.data.newsgroups.load_20newsgroups` finds it).

    With a ``train_file``, the label names are the train file's distinct labels sorted as
    strings; the test split is ``test_file`` or, without one, a seeded stratified
    ``test_ratio`` share of the train file. A ``dataset`` gives its ``train`` split and its
    ``test`` split (or, without one, a ``test_ratio`` share of ``train``).

    Raises:
        DataError: anything :func:`load_20newsgroups`, :func:`load_labelled_file` or
            :func:`load_hf_dataset` raises, fewer than two classes, or test labels that the
            training data does not have.
    """
    source = source or DataSource()
    extra_source: dict[str, Any] = {"multi_label": True} if source.multi_label else {}
    if source.dataset is not None:
        splits = load_hf_dataset(source.dataset, source.text_column, source.label_column,
                                 multi_label=source.multi_label)
        if "train" not in splits:
            raise DataError(f"dataset {source.dataset!r} has no labelled 'train' split (it has: "
                            f"{', '.join(splits) or 'none'})")
        record = {"kind": "hf_dataset", "dataset": source.dataset, "text_column": source.stored_text_column,
                  "label_column": source.label_column, "test_ratio": source.test_ratio, "seed": source.seed,
                  **extra_source}
        return _splits_from_rows(splits["train"], splits.get("test"), source, record,
                                 name=f"dataset {source.dataset!r}")
    if source.train_file is None:
        return _newsgroups_splits(source.data_dir, source.strip)
    return _file_splits(source, extra_source)


def _newsgroups_splits(data_dir: str | Path | None, strip: Sequence[str]) -> DatasetSplits:
    """20 Newsgroups' own train and test splits, and where they were read from."""
    parts = normalise_strip(strip)
    train = load_20newsgroups("train", data_dir, parts)
    test = load_20newsgroups("test", data_dir, parts)
    if train.label_names != test.label_names:
        raise DataError("the 20 Newsgroups train and test folders have different newsgroups; "
                        "re-extract the archive")
    kind, resolved = resolve_news_source(data_dir)
    source: dict[str, Any] = {
        "kind": "20newsgroups",
        "data_dir": str(Path(data_dir).expanduser().resolve()) if data_dir else None,
        "resolved": None if kind == "online" else str(resolved),
        "strip": list(parts),
    }
    return DatasetSplits(train=train, test=test, label_names=list(train.label_names), source=source)


def _file_splits(source: DataSource, extra_source: dict[str, Any]) -> DatasetSplits:
    """Splits of ``source``'s labelled train file (and test file); the record holds the files, their checksums,
    the settings, and ``extra_source`` (the caller's extra fields)."""
    train_path = Path(str(source.train_file)).expanduser()
    test_path = None if source.test_file is None else Path(source.test_file).expanduser()
    rows = load_labelled_file(train_path, source.text_column, source.label_column, multi_label=source.multi_label)
    record = {"kind": "file", "train_file": str(train_path.resolve()), "test_file": None,
              "text_column": source.stored_text_column, "label_column": source.label_column,
              "test_ratio": source.test_ratio, "seed": source.seed, "train_sha256": file_sha256(train_path),
              "test_sha256": None, **extra_source}
    test_rows = None
    if test_path is not None:
        test_rows = load_labelled_file(test_path, source.text_column, source.label_column,
                                       multi_label=source.multi_label)
        record["test_file"] = str(test_path.resolve())
        record["test_sha256"] = file_sha256(test_path)
    return _splits_from_rows(rows, test_rows, source, record, name=str(train_path),
                             test_name=str(test_path) if test_path is not None else None)


def _splits_from_rows(rows: tuple[list[str], list[Any]], test_rows: tuple[list[str], list[Any]] | None,
                      source: DataSource, record: dict[str, Any], *, name: str,
                      test_name: str | None = None) -> DatasetSplits:
    """Train and test TextDatasets from rows as read (``record``: what the splits' ``source`` says); the test
    split is carved out when not given. ``name`` and ``test_name`` say where the rows came from in messages."""
    texts, labels = rows
    multi_label, label_column = source.multi_label, source.label_column
    seen = {label for row in labels for label in row} if multi_label else set(labels)
    label_names = sorted(seen)
    if len(label_names) < 2:
        raise DataError(f"{name}: column {label_column!r} has {len(label_names)} distinct label(s) "
                        f"({', '.join(map(repr, label_names))}); classification needs at least 2")
    index = {label: i for i, label in enumerate(label_names)}

    def encode(values: list[Any]) -> list[Any]:
        return multi_hot(values, label_names) if multi_label else [index[label] for label in values]

    full = TextDataset(texts=texts, labels=encode(labels), label_names=label_names, multi_label=multi_label)
    if test_rows is None:
        train, test = stratified_split(full, source.test_ratio, source.seed)
    else:
        test_texts, test_labels = test_rows
        test_seen = {label for row in test_labels for label in row} if multi_label else set(test_labels)
        unseen = sorted(test_seen - set(index))
        if unseen:
            shown = ", ".join(repr(label) for label in unseen[:5]) + (", ..." if len(unseen) > 5 else "")
            where = f"the train file {name}" if test_name else f"the train split of {name}"
            raise DataError(f"{test_name or name + ' (test split)'}: label(s) {shown} do not occur in {where}; "
                            "the model can only predict labels it was trained on")
        train = full
        test = TextDataset(texts=test_texts, labels=encode(test_labels), label_names=list(label_names),
                           multi_label=multi_label)
    return DatasetSplits(train=train, test=test, label_names=list(label_names), source=record)


def labelled_texts(texts: Sequence[str], labels: Sequence[Any], *, test_texts: Sequence[str] | None = None,
                   test_labels: Sequence[Any] | None = None,
                   label_names: Sequence[str] | None = None, multi_label: bool = False) -> DatasetSplits:
    """Splits from texts and labels held in memory (for :func:`gpt2clf.training.loop.fit`).

    Labels may be of any type; they are named by ``str(label)``. ``label_names`` fixes the
    classes and their order (default: the distinct training labels, sorted as strings).
    With ``multi_label`` each label is a collection of labels (possibly empty), e.g.
    ``[["sport"], ["sport", "politics"], []]``.
    Without a test set the test split is empty (a run then reports no test figures).

    Example::

        >>> splits = labelled_texts(["a rocket", "a guitar"], ["space", "music"])
        >>> splits.train.labels, splits.label_names
        ([1, 0], ['music', 'space'])

    Raises:
        DataError: lengths that differ, fewer than two classes, or a label outside ``label_names``.
    """
    if multi_label:
        return _multi_labelled_texts(texts, labels, test_texts, test_labels, label_names)
    _check_texts_and_labels(texts, labels, test_texts, test_labels, "labels")
    names = [str(n) for n in label_names] if label_names is not None else sorted({str(y) for y in labels})
    if len(names) < 2:
        raise DataError(f"the labels have {len(names)} distinct value(s); classification needs at least 2")
    index = {name: i for i, name in enumerate(names)}

    def encode(values: Sequence[Any]) -> list[int]:
        unknown = sorted({str(y) for y in values} - set(index))
        if unknown:
            raise DataError(f"label(s) {', '.join(map(repr, unknown[:5]))} are not among the classes "
                            f"{', '.join(map(repr, names[:10]))}")
        return [index[str(y)] for y in values]

    train = TextDataset([str(t) for t in texts], encode(labels), list(names))
    test = TextDataset([str(t) for t in test_texts or []], encode(test_labels or []), list(names))
    return DatasetSplits(train=train, test=test, label_names=list(names), source={"kind": "memory"})


def _check_texts_and_labels(texts: Sequence[str], labels: Sequence[Any], test_texts: Sequence[str] | None,
                            test_labels: Sequence[Any] | None, noun: str) -> None:
    """The shape checks labelled_texts makes for both kinds of labels (``noun``: what a label is called)."""
    if isinstance(texts, str) or (test_texts is not None and isinstance(test_texts, str)):
        raise DataError("texts must be a sequence of strings, not a single string")
    if len(texts) != len(labels):
        raise DataError(f"got {len(texts)} texts but {len(labels)} {noun}")
    if (test_texts is None) != (test_labels is None):
        raise DataError("give test_texts and test_labels together")


def _multi_labelled_texts(texts: Sequence[str], labels: Sequence[Any], test_texts: Sequence[str] | None,
                          test_labels: Sequence[Any] | None, label_names: Sequence[str] | None) -> DatasetSplits:
    _check_texts_and_labels(texts, labels, test_texts, test_labels, "label lists")

    def as_lists(values: Sequence[Any]) -> list[list[str]]:
        if any(isinstance(row, str) or not hasattr(row, "__iter__") for row in values):
            raise DataError("with multi_label each label must be a collection of labels, e.g. ['a', 'b'] or []")
        return [list(dict.fromkeys(str(y) for y in row)) for row in values]

    rows, test_rows = as_lists(labels), as_lists(test_labels or [])
    names = [str(n) for n in label_names] if label_names is not None else sorted({y for r in rows for y in r})
    if len(names) < 2:
        raise DataError(f"the labels have {len(names)} distinct value(s); classification needs at least 2")
    unknown = sorted({y for r in rows + test_rows for y in r} - set(names))
    if unknown:
        raise DataError(f"label(s) {', '.join(map(repr, unknown[:5]))} are not among the classes "
                        f"{', '.join(map(repr, names[:10]))}")
    train = TextDataset([str(t) for t in texts], multi_hot(rows, names), list(names), multi_label=True)
    test = TextDataset([str(t) for t in test_texts or []], multi_hot(test_rows, names), list(names),
                       multi_label=True)
    return DatasetSplits(train=train, test=test, label_names=list(names),
                         source={"kind": "memory", "multi_label": True})


def splits_from_source(source: dict[str, Any]) -> DatasetSplits:
    """Rebuild the splits described by a :attr:`DatasetSplits.source` (e.g. saved with a model).

    To point at data that has moved, pass an updated copy, e.g. ``{**source, "data_dir": new}``.
    A labelled file whose content changed since ``source`` was recorded gives a
    :class:`DataWarning`.

    Raises:
        DataError: a malformed ``source`` or anything :func:`load_dataset_splits` raises.
    """
    if not isinstance(source, dict) or "kind" not in source:
        raise DataError("the recorded dataset source is missing or malformed; pass the dataset explicitly")
    kind = source["kind"]
    if kind == "20newsgroups":
        return load_dataset_splits(DataSource(data_dir=source.get("data_dir"), strip=source.get("strip") or ()))
    settings = {"text_column": source.get("text_column", "text"), "label_column": source.get("label_column", "label"),
                "test_ratio": source.get("test_ratio", 0.2), "seed": source.get("seed", 42),
                "multi_label": bool(source.get("multi_label"))}
    if kind == "hf_dataset":
        return load_dataset_splits(DataSource(dataset=source.get("dataset"), **settings))
    if kind == "file":
        if not source.get("train_file"):
            raise DataError("the recorded dataset source names no train_file; pass the dataset explicitly")
        splits = load_dataset_splits(DataSource(train_file=source["train_file"], test_file=source.get("test_file"),
                                                **settings))
        for key in ("train", "test"):
            recorded, now = source.get(f"{key}_sha256"), splits.source.get(f"{key}_sha256")
            if recorded and now and recorded != now:
                warnings.warn(DataWarning(f"{splits.source[f'{key}_file']} changed since it was recorded "
                                          "with the model; results may not be comparable"), stacklevel=2)
        return splits
    if kind == "memory":
        raise DataError("the model was trained on texts given in memory; point evaluate at data with "
                        "--train-file/--test-file (or --data-dir for 20 Newsgroups)")
    raise DataError(f"unknown dataset source kind {kind!r}; expected '20newsgroups', 'file' or 'hf_dataset'")


@dataclass
class SplitSets:
    """The train, validation and test sets of a run, and where they came from."""

    train: TextDataset
    validation: TextDataset
    test: TextDataset
    label_names: list[str]
    source: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> TextDataset:
        """``train``, ``validation`` or ``test`` by name."""
        if name not in ("train", "validation", "test"):
            raise DataError(f"unknown split {name!r}; choose train, validation or test")
        return getattr(self, name)


def config_dataset(config: Config) -> DatasetSplits:
    """The train and test splits of the dataset ``config`` names (20 Newsgroups, a file or a dataset)."""
    return load_dataset_splits(DataSource.of(config))


def splits_for(config: Config, splits: DatasetSplits | None = None) -> SplitSets:
    """The train, validation and test sets of a run with ``config``.

    The dataset (``splits``, or the one ``config`` names) keeps its own test split; a
    seeded, stratified ``validation_ratio`` share of its training split is held out for
    validation; then ``max_train_samples`` and ``max_eval_samples`` subsample (stratified,
    seeded). The same config always gives the same documents.
    """
    if splits is None:
        splits = config_dataset(config)
    if splits.train.multi_label != config.multi_label:
        raise DataError("the data is multi-label but multi_label is off; pass --multi-label" if splits.train.multi_label
                        else "multi_label is on but the data has one label per document; drop --multi-label "
                        "or give each document a list of labels")
    train, validation = stratified_split(splits.train, config.validation_ratio, config.seed)
    return SplitSets(
        train=stratified_subset(train, config.max_train_samples, config.seed),
        validation=stratified_subset(validation, config.max_eval_samples, config.seed),
        test=stratified_subset(splits.test, config.max_eval_samples, config.seed),
        label_names=list(splits.label_names),
        source=splits.source,
    )
