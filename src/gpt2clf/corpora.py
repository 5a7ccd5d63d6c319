"""Corpora: labelled text from 20 Newsgroups or a file, split into train, validation and test.

Text enters gpt2clf here and leaves as :class:`TextDataset` objects (texts, integer labels,
label names); tokenization is the next stage (:mod:`gpt2clf.batching`).

* :func:`load_20newsgroups` reads the 20 Newsgroups "bydate" corpus from a local archive or
  folder (or scikit-learn's download cache) and gives exactly what
  :func:`sklearn.datasets.fetch_20newsgroups` gives: same texts, order and label names.
* :func:`load_labelled_file` reads a CSV, TSV or JSONL file of labelled text.
* :func:`load_dataset_splits` turns either into train and test :class:`TextDataset`\\ s plus a
  JSON-able ``source`` (absolute paths) that :func:`splits_from_source` can rebuild them from later.
* :func:`splits_for` gives the train, validation and test sets a :class:`~gpt2clf.config.Config`
  names: the seeded validation carve-out, then the sample limits. Training and evaluation
  both go through it, so they always see the same documents.

Nothing here prints or exits: user mistakes raise :class:`~gpt2clf.errors.DataError` with a
one-line message, and recoverable oddities (skipped empty rows, replaced bytes) are reported
as :class:`DataWarning`.

Example::

    >>> from gpt2clf.corpora import load_dataset_splits
    >>> splits = load_dataset_splits(data_dir="../shared/data/20news-bydate.tar.gz")  # doctest: +SKIP
    >>> len(splits.train), len(splits.test), len(splits.label_names)  # doctest: +SKIP
    (11314, 7532, 20)
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
import tarfile
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt2clf.config import STRIP_CHOICES
from gpt2clf.errors import DataError, first_line

if TYPE_CHECKING:
    from gpt2clf.config import Config

__all__ = [
    "DataWarning",
    "DatasetSplits",
    "SplitSets",
    "TextDataset",
    "iter_text_column",
    "labelled_texts",
    "load_20newsgroups",
    "load_dataset_splits",
    "load_labelled_file",
    "splits_for",
    "splits_from_source",
    "stratified_split",
    "stratified_subset",
]


class DataWarning(UserWarning):
    """Something in the data was fixed up or skipped (empty texts, undecodable bytes)."""


# ---------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------


@dataclass
class TextDataset:
    """Texts with integer labels that index into ``label_names``."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"TextDataset got {len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> TextDataset:
        """A new dataset of the documents at ``indices`` (in that order), same label names."""
        return TextDataset(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            label_names=list(self.label_names),
        )


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
# ---------------------------------------------------------------------------------------

NEWS_ARCHIVE_NAME = "20news-bydate.tar.gz"
NEWS_FOLDERS = {"train": "20news-bydate-train", "test": "20news-bydate-test"}
# (texts, labels, label names) as immutable tuples, safe to share from an lru_cache
_RawSplit = tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]
# (texts, labels, label names) in load_files order; read-only once cached
_Unshuffled = tuple[list[str], list[int], list[str]]
_NEWS_HINT = "pass --data-dir (or set GPT2CLF_20NG) to a local 20news-bydate.tar.gz or its extracted folder"


def load_20newsgroups(subset: str, data_dir: str | Path | None = None,
                      strip: Sequence[str] = ()) -> TextDataset:
    """One split of 20 Newsgroups, identical to ``sklearn.datasets.fetch_20newsgroups``.

    Same texts, order, labels and label names as ``fetch_20newsgroups(subset=subset,
    remove=strip)`` with its defaults (``shuffle=True, random_state=42``).

    Args:
        subset: ``"train"`` (11,314 posts) or ``"test"`` (7,532 posts).
        data_dir: the ``20news-bydate.tar.gz`` archive, a folder holding it, or a folder
            with the extracted ``20news-bydate-train/`` and ``20news-bydate-test/``. None:
            the environment variable ``GPT2CLF_20NG``, else scikit-learn's own download cache
            (which downloads the archive once).
        strip: any of ``headers``, ``footers``, ``quotes``; removed with scikit-learn's own
            ``strip_newsgroup_*`` functions, as ``fetch_20newsgroups(remove=...)`` does.

    The archive is read directly, without extracting it (about 2 s for both splits; the
    same as reading 18,846 extracted files, and nothing is written to disk). Loaded splits
    are cached in-process per path, size and modification time, so loading again is
    instant; every call returns fresh lists.

    Raises:
        DataError: unknown subset or strip part, a missing path, something that is not the
            20 Newsgroups bydate data, or a failed download.
    """
    if subset not in NEWS_FOLDERS:
        raise DataError(f"20 Newsgroups subset must be 'train' or 'test', got {subset!r}")
    parts = _normalise_strip(strip)
    kind, path = _resolve_news_source(data_dir)
    if kind == "online":
        texts, labels, names = _fetch_news_online(subset, parts)
    else:
        if kind == "folder" and not (path / NEWS_FOLDERS[subset]).is_dir():
            raise DataError(f"{path} has no {NEWS_FOLDERS[subset]}/ folder; {_NEWS_HINT}")
        target = path / NEWS_FOLDERS[subset] if kind == "folder" else path
        stat = target.stat()
        texts, labels, names = _load_news_split(kind, str(path), stat.st_size, stat.st_mtime_ns, subset,
                                                parts)
    return TextDataset(texts=list(texts), labels=list(labels), label_names=list(names))


def _normalise_strip(strip: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(strip, str):  # a lone "headers" is a common slip for ("headers",)
        strip = [strip]
    unknown = [part for part in strip if part not in STRIP_CHOICES]
    if unknown:
        raise DataError(f"strip accepts {', '.join(STRIP_CHOICES)}; got {unknown[0]!r}")
    return tuple(part for part in STRIP_CHOICES if part in strip)


def _resolve_news_source(data_dir: str | Path | None) -> tuple[str, Path]:
    """("online" | "archive" | "folder", path) for a ``data_dir`` argument."""
    origin = "data_dir"
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get("GPT2CLF_20NG") or None
        origin = "GPT2CLF_20NG"
    if data_dir is None:
        return "online", Path()
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DataError(f"20 Newsgroups data not found: {path} ({origin}) does not exist; {_NEWS_HINT}")
    path = path.resolve()
    if path.is_file():
        return "archive", path
    if any((path / folder).is_dir() for folder in NEWS_FOLDERS.values()):
        return "folder", path
    if (path / NEWS_ARCHIVE_NAME).is_file():
        return "archive", path / NEWS_ARCHIVE_NAME
    raise DataError(
        f"{path} ({origin}) holds neither {NEWS_ARCHIVE_NAME} nor the extracted "
        f"{NEWS_FOLDERS['train']}/ and {NEWS_FOLDERS['test']}/ folders; {_NEWS_HINT}"
    )


@functools.lru_cache(maxsize=8)
def _load_news_split(kind: str, path: str, size: int, mtime_ns: int, subset: str,
                     strip: tuple[str, ...]) -> _RawSplit:
    """One split as fetch_20newsgroups gives it (``size`` and ``mtime_ns`` only key the cache)."""
    from sklearn.utils import check_random_state

    if kind == "archive":
        data, target, names = _read_news_archive(path, size, mtime_ns)[subset]
    else:
        data, target, names = _read_news_folder(Path(path) / NEWS_FOLDERS[subset])
    # fetch_20newsgroups(shuffle=True, random_state=42) shuffles what load_files returned.
    indices = np.arange(len(data))
    check_random_state(42).shuffle(indices)
    texts = _apply_strip([data[i] for i in indices], strip)
    return tuple(texts), tuple(int(target[i]) for i in indices), tuple(names)


def _read_news_folder(folder: Path) -> _Unshuffled:
    """``load_files(folder, encoding="latin1")``: exactly what fetch_20newsgroups caches."""
    from sklearn.datasets import load_files

    try:
        bunch = load_files(str(folder), encoding="latin1")
    except OSError as err:
        raise DataError(f"cannot read 20 Newsgroups folder {folder} ({first_line(err)}); "
                        f"{_NEWS_HINT}") from err
    if not len(bunch.data):
        raise DataError(f"{folder} holds no newsgroup folders with posts; {_NEWS_HINT}")
    return list(bunch.data), bunch.target.tolist(), list(bunch.target_names)


@functools.lru_cache(maxsize=2)
def _read_news_archive(path: str, size: int, mtime_ns: int) -> dict[str, _Unshuffled]:
    """Both splits straight from the archive, in ``load_files`` order (before its shuffle).

    ``load_files`` takes the class folders sorted, the files in each sorted, then shuffles
    them with ``random_state=0``; reading the archive in memory and doing the same is as
    fast as reading extracted files and needs no extraction.
    """
    from sklearn.utils import check_random_state

    classes: dict[str, set[str]] = {subset: set() for subset in NEWS_FOLDERS}
    files: dict[str, dict[tuple[str, str], bytes]] = {subset: {} for subset in NEWS_FOLDERS}
    subset_of = {folder: subset for subset, folder in NEWS_FOLDERS.items()}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if len(parts) < 2 or parts[0] not in subset_of:
                    continue
                subset = subset_of[parts[0]]
                if len(parts) == 2 and member.isdir():
                    classes[subset].add(parts[1])
                elif len(parts) == 3 and member.isfile():
                    classes[subset].add(parts[1])
                    handle = tar.extractfile(member)
                    files[subset][(parts[1], parts[2])] = handle.read() if handle else b""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"{path} is not a readable 20 Newsgroups archive ({first_line(err)}); "
                        f"{_NEWS_HINT}") from err
    missing = [f"{NEWS_FOLDERS[s]}/" for s in NEWS_FOLDERS if not files[s]]
    if missing:
        raise DataError(f"{path} is not the 20 Newsgroups bydate archive (no {' or '.join(missing)} "
                        f"with posts inside); {_NEWS_HINT}")
    result = {}
    for subset in NEWS_FOLDERS:
        names = sorted(classes[subset])
        keys = [(name, file) for name in names for file in sorted(f for c, f in files[subset] if c == name)]
        order = np.arange(len(keys))
        check_random_state(0).shuffle(order)  # load_files(shuffle=True, random_state=0)
        label_of = {name: i for i, name in enumerate(names)}
        result[subset] = ([files[subset][keys[i]].decode("latin1") for i in order],
                          [label_of[keys[i][0]] for i in order], names)
    return result


@functools.lru_cache(maxsize=4)
def _fetch_news_online(subset: str, strip: tuple[str, ...]) -> _RawSplit:
    from sklearn.datasets import fetch_20newsgroups

    try:
        bunch = fetch_20newsgroups(subset=subset, remove=strip)
    except OSError as err:  # URLError, timeouts, SSL errors and HTTP errors are all OSErrors
        raise DataError(f"downloading 20 Newsgroups failed ({first_line(err)}); {_NEWS_HINT}") from err
    return tuple(bunch.data), tuple(int(t) for t in bunch.target), tuple(bunch.target_names)


def _apply_strip(texts: list[str], strip: tuple[str, ...]) -> list[str]:
    from sklearn.datasets._twenty_newsgroups import (
        strip_newsgroup_footer,
        strip_newsgroup_header,
        strip_newsgroup_quoting,
    )

    functions = {"headers": strip_newsgroup_header, "footers": strip_newsgroup_footer,
                 "quotes": strip_newsgroup_quoting}
    for part in strip:  # already in scikit-learn's order
        texts = [functions[part](text) for text in texts]
    return texts


# ---------------------------------------------------------------------------------------
# Labelled text files
# ---------------------------------------------------------------------------------------

_FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def load_labelled_file(path: str | Path, text_column: str = "text",
                       label_column: str = "label") -> tuple[list[str], list[str]]:
    """Texts and their labels (as written, as strings) from a CSV, TSV or JSONL file.

    The format follows the extension: ``.csv``; ``.tsv`` or ``.tab``; ``.jsonl`` or
    ``.ndjson`` (one JSON object per line). CSV and TSV files need a header row. Labels keep
    their spelling (surrounding whitespace removed; JSON numbers and booleans as written in
    JSON, e.g. ``1``, ``2.5``, ``true``). Rows whose text is empty or whitespace only are
    skipped with a :class:`DataWarning`; bytes that are not valid UTF-8 become U+FFFD, also
    with a :class:`DataWarning` that counts them. A UTF-8 byte-order mark is ignored.

    Raises:
        DataError: missing file, unsupported extension, no rows, a malformed line, a missing
            column, a row without a label, or no non-empty text at all.
    """
    path, fmt = _check_data_file(path)
    reader = _RowReader(path, fmt, text_column, label_column)
    texts: list[str] = []
    labels: list[str] = []
    empty = 0
    for where, doc, label in reader:
        if doc is None or not doc.strip():
            empty += 1
            continue
        if not label:
            raise DataError(f"{path}: {where} has no value in label column {label_column!r}; "
                            "every row needs a label")
        texts.append(doc)
        labels.append(label)
    reader.warn_replaced()
    if not texts:
        raise DataError(f"{path}: all {empty} rows have an empty text in column {text_column!r}")
    if empty:
        message = f"{path}: skipped {empty} rows whose {text_column!r} is empty or whitespace"
        warnings.warn(DataWarning(message), stacklevel=2)
    return texts, labels


def iter_text_column(path: str | Path, text_column: str = "text") -> Iterator[str]:
    """Stream the texts of a CSV, TSV or JSONL file, one per row, in file order.

    For prediction: nothing is skipped (an empty or null text yields ``""``), so the n-th
    text is the n-th row; the file is read row by row, never whole. Formats, decoding and
    errors are those of :func:`load_labelled_file`; as this is a generator, errors surface
    on iteration (a missing file or column before the first text).
    """
    checked, fmt = _check_data_file(path)
    reader = _RowReader(checked, fmt, text_column, None)
    for _where, doc, _label in reader:
        yield doc or ""
    reader.warn_replaced()


def _check_data_file(path: str | Path) -> tuple[Path, str]:
    path = Path(path).expanduser()
    fmt = _FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; "
                        f"use one of {', '.join(_FILE_FORMATS)}")
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"{path} is not a file; pass a {fmt.upper()} file")
    return path, fmt


class _RowReader:
    """Streams ``(where, text, label)`` from a CSV/TSV/JSONL file (``label`` None when not asked).

    Undecodable bytes are read with ``surrogateescape`` (one lone surrogate per bad byte),
    counted and replaced by U+FFFD in the values handed out.
    """

    def __init__(self, path: Path, fmt: str, text_column: str, label_column: str | None) -> None:
        self.path, self.fmt = path, fmt
        self.text_column, self.label_column = text_column, label_column
        self.replaced = 0

    def __iter__(self) -> Iterator[tuple[str, str | None, str | None]]:
        # utf-8-sig drops a byte-order mark (spreadsheet exports often start with one).
        with open(self.path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            rows = self._jsonl(handle) if self.fmt == "jsonl" else self._delimited(handle)
            for where, doc, label in rows:
                yield where, self._clean(doc), self._clean(label)

    def warn_replaced(self) -> None:
        if self.replaced:
            warnings.warn(DataWarning(f"{self.path}: replaced {self.replaced} bytes that are not valid UTF-8 "
                                      "with U+FFFD"), stacklevel=3)

    def _clean(self, value: str | None) -> str | None:
        if value is None or not _ESCAPED_BYTE.search(value):
            return value
        self.replaced += len(_ESCAPED_BYTE.findall(value))
        return _ESCAPED_BYTE.sub("\ufffd", value)

    def _delimited(self, handle: io.TextIOBase) -> Iterator[tuple[str, str | None, str | None]]:
        path, kind = self.path, self.fmt.upper()
        if csv.field_size_limit() < 2**31 - 1:  # the default 128 KiB limit rejects long documents
            csv.field_size_limit(2**31 - 1)
        reader = csv.reader(handle, delimiter="," if self.fmt == "csv" else "\t")
        header: list[str] | None = None
        wanted = [c for c in (self.text_column, self.label_column) if c is not None]
        count = 0
        try:
            for row in reader:
                if not row:  # blank line
                    continue
                if header is None:
                    header = row
                    missing = [c for c in wanted if c not in header]
                    if missing:
                        columns = ", ".join(repr(c) for c in header)
                        raise DataError(f"{path}: no column {missing[0]!r}; the header has columns {columns} "
                                        "(choose with --text-column/--label-column)")
                    text_at = header.index(self.text_column)
                    label_at = None if self.label_column is None else header.index(self.label_column)
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}: malformed {kind}: line {reader.line_num} has {len(row)} "
                                    f"fields but the header has {len(header)}; quote fields that contain "
                                    "the delimiter")
                count += 1
                label = None if label_at is None else row[label_at].strip()
                yield f"row {count} (line {reader.line_num})", row[text_at], label
        except csv.Error as err:
            raise DataError(f"{path}: malformed {kind} at line {reader.line_num}: "
                            f"{first_line(err)}") from err
        if header is None:
            raise DataError(f"{path} is empty; expected a header row naming the columns "
                            f"({', '.join(map(repr, wanted))})")
        if not count:
            raise DataError(f"{path} has a header but no data rows")

    def _jsonl(self, handle: io.TextIOBase) -> Iterator[tuple[str, str | None, str | None]]:
        path, count = self.path, 0
        # The file's own line iteration splits on newlines only; str.splitlines() would also
        # split inside JSON strings holding raw U+2028 and friends.
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {number} is not valid JSON ({err.msg} at column "
                                f"{err.colno})") from err
            if not isinstance(record, dict):
                raise DataError(f"{path}: line {number} is a JSON {type(record).__name__}, not an object "
                                f"with a {self.text_column!r} key")
            if self.text_column not in record:
                keys = ", ".join(repr(k) for k in record) or "(none)"
                raise DataError(f"{path}: line {number} has no {self.text_column!r} key; its keys are {keys} "
                                "(choose with --text-column)")
            where = f"line {number}"
            count += 1
            doc = _json_scalar(path, where, record[self.text_column], self.text_column)
            label = None
            if self.label_column is not None:
                label = _json_scalar(path, where, record.get(self.label_column), self.label_column)
                label = None if label is None else label.strip()
            yield where, doc, label
        if not count:
            raise DataError(f"{path} is empty; expected one JSON object per line")


def _json_scalar(path: Path, where: str, value: Any, column: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)  # as written: 1, 2.5, true
    raise DataError(f"{path}: {where}: {column!r} is a JSON {type(value).__name__}; "
                    "expected a string or number")


# ---------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------


def load_dataset_splits(
    *,
    train_file: str | Path | None = None,
    test_file: str | Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
    data_dir: str | Path | None = None,
    strip: Sequence[str] = (),
    test_ratio: float = 0.2,
    seed: int = 42,
) -> DatasetSplits:
    """Train and test splits of 20 Newsgroups (no ``train_file``) or of a labelled file.

    With ``train_file``, the label names are the train file's distinct labels sorted as
    strings; the test split is ``test_file`` or, without one, a seeded stratified
    ``test_ratio`` share of the train file. ``data_dir`` and ``strip`` only apply to 20
    Newsgroups; the columns, ``test_ratio`` and ``seed`` only to files.

    Raises:
        DataError: anything :func:`load_20newsgroups` or :func:`load_labelled_file` raises,
            fewer than two classes, or test labels that the train file does not have.
    """
    if train_file is None:
        if test_file is not None:
            raise DataError("test_file needs train_file (without train_file the dataset is 20 Newsgroups)")
        parts = _normalise_strip(strip)
        train = load_20newsgroups("train", data_dir, parts)
        test = load_20newsgroups("test", data_dir, parts)
        if train.label_names != test.label_names:
            raise DataError("the 20 Newsgroups train and test folders have different newsgroups; "
                            "re-extract the archive")
        kind, resolved = _resolve_news_source(data_dir)
        source: dict[str, Any] = {
            "kind": "20newsgroups",
            "data_dir": str(Path(data_dir).expanduser().resolve()) if data_dir else None,
            "resolved": None if kind == "online" else str(resolved),
            "strip": list(parts),
        }
        return DatasetSplits(train=train, test=test, label_names=list(train.label_names), source=source)

    train_path = Path(train_file).expanduser()
    texts, labels = load_labelled_file(train_path, text_column, label_column)
    label_names = sorted(set(labels))
    if len(label_names) < 2:
        raise DataError(f"{train_path}: column {label_column!r} has {len(label_names)} distinct label(s) "
                        f"({', '.join(map(repr, label_names))}); classification needs at least 2")
    index = {name: i for i, name in enumerate(label_names)}
    full = TextDataset(texts=texts, labels=[index[label] for label in labels], label_names=label_names)
    source = {
        "kind": "file",
        "train_file": str(train_path.resolve()),
        "test_file": None,
        "text_column": text_column,
        "label_column": label_column,
        "test_ratio": test_ratio,
        "seed": seed,
        "train_sha256": _sha256(train_path),
        "test_sha256": None,
    }
    if test_file is None:
        train, test = stratified_split(full, test_ratio, seed)
    else:
        test_path = Path(test_file).expanduser()
        test_texts, test_labels = load_labelled_file(test_path, text_column, label_column)
        unseen = sorted(set(test_labels) - set(index))
        if unseen:
            shown = ", ".join(repr(label) for label in unseen[:5]) + (", ..." if len(unseen) > 5 else "")
            raise DataError(f"{test_path}: label(s) {shown} do not occur in the train file {train_path}; "
                            "the model can only predict labels it was trained on")
        train = full
        test = TextDataset(texts=test_texts, labels=[index[label] for label in test_labels],
                           label_names=list(label_names))
        source["test_file"] = str(test_path.resolve())
        source["test_sha256"] = _sha256(test_path)
    return DatasetSplits(train=train, test=test, label_names=list(label_names), source=source)


def labelled_texts(texts: Sequence[str], labels: Sequence[Any], *, test_texts: Sequence[str] | None = None,
                   test_labels: Sequence[Any] | None = None,
                   label_names: Sequence[str] | None = None) -> DatasetSplits:
    """Splits from texts and labels held in memory (for :func:`gpt2clf.training.fit`).

    Labels may be of any type; they are named by ``str(label)``. ``label_names`` fixes the
    classes and their order (default: the distinct training labels, sorted as strings).
    Without a test set the test split is empty (a run then reports no test figures).

    Raises:
        DataError: lengths that differ, fewer than two classes, or a label outside ``label_names``.
    """
    if isinstance(texts, str) or (test_texts is not None and isinstance(test_texts, str)):
        raise DataError("texts must be a sequence of strings, not a single string")
    if len(texts) != len(labels):
        raise DataError(f"got {len(texts)} texts but {len(labels)} labels")
    if (test_texts is None) != (test_labels is None):
        raise DataError("give test_texts and test_labels together")
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
        return load_dataset_splits(data_dir=source.get("data_dir"), strip=source.get("strip") or ())
    if kind == "file":
        if not source.get("train_file"):
            raise DataError("the recorded dataset source names no train_file; pass the dataset explicitly")
        splits = load_dataset_splits(
            train_file=source["train_file"], test_file=source.get("test_file"),
            text_column=source.get("text_column", "text"), label_column=source.get("label_column", "label"),
            test_ratio=source.get("test_ratio", 0.2), seed=source.get("seed", 42),
        )
        for key in ("train", "test"):
            recorded, now = source.get(f"{key}_sha256"), splits.source.get(f"{key}_sha256")
            if recorded and now and recorded != now:
                warnings.warn(DataWarning(f"{splits.source[f'{key}_file']} changed since it was recorded "
                                          "with the model; results may not be comparable"), stacklevel=2)
        return splits
    if kind == "memory":
        raise DataError("the model was trained on texts given in memory; point evaluate at data with "
                        "--train-file/--test-file (or --data-dir for 20 Newsgroups)")
    raise DataError(f"unknown dataset source kind {kind!r}; expected '20newsgroups' or 'file'")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


# ---------------------------------------------------------------------------------------
# The splits a Config names
# ---------------------------------------------------------------------------------------


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


def splits_for(config: Config, splits: DatasetSplits | None = None) -> SplitSets:
    """The train, validation and test sets of a run with ``config``.

    The dataset (``splits``, or the one ``config`` names) keeps its own test split; a
    seeded, stratified ``validation_ratio`` share of its training split is held out for
    validation; then ``max_train_samples`` and ``max_eval_samples`` subsample (stratified,
    seeded). The same config always gives the same documents.
    """
    if splits is None:
        splits = load_dataset_splits(
            train_file=config.train_file, test_file=config.test_file, text_column=config.text_column,
            label_column=config.label_column, data_dir=config.data_dir, strip=config.strip,
            test_ratio=config.test_ratio, seed=config.seed,
        )
    train, validation = stratified_split(splits.train, config.validation_ratio, config.seed)
    return SplitSets(
        train=stratified_subset(train, config.max_train_samples, config.seed),
        validation=stratified_subset(validation, config.max_eval_samples, config.seed),
        test=stratified_subset(splits.test, config.max_eval_samples, config.seed),
        label_names=list(splits.label_names),
        source=splits.source,
    )
