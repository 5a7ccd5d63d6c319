"""Corpora: labelled text from 20 Newsgroups or a file, split into train, validation and test.

Text enters gpt2clf here and leaves as :class:`TextDataset` objects (texts, integer labels,
label names; for multi-label data each label is a multi-hot tuple); tokenization is the next
stage (:mod:`gpt2clf.data.batching`).

* :func:`load_20newsgroups` reads the 20 Newsgroups "bydate" corpus from a local archive or
  folder (or scikit-learn's download cache) and gives exactly what
  :func:`sklearn.datasets.fetch_20newsgroups` gives: same texts, order and label names.
* :func:`load_labelled_file` reads a CSV, TSV, JSONL or Parquet file of labelled text (one or
  several text columns; one label per row, or several with ``multi_label``).
* :func:`load_hf_dataset` reads a Hugging Face dataset through ``datasets.load_dataset`` (an
  optional dependency, imported only then).
* :func:`load_dataset_splits` turns either into train and test :class:`TextDataset`\\ s plus a
  JSON-able ``source`` (absolute paths) that :func:`splits_from_source` can rebuild them from later.
* :func:`splits_for` gives the train, validation and test sets a :class:`~gpt2clf.config.Config`
  names: the seeded validation carve-out, then the sample limits. Training and evaluation
  both go through it, so they always see the same documents.

Nothing here prints or exits: user mistakes raise :class:`~gpt2clf.errors.DataError` with a
one-line message, and recoverable oddities (skipped empty rows, replaced bytes) are reported
as :class:`DataWarning`.

Example::

    >>> from gpt2clf.data.corpora import load_dataset_splits
    >>> splits = load_dataset_splits(data_dir="../shared/data/20news-bydate.tar.gz")  # doctest: +SKIP
    >>> len(splits.train), len(splits.test), len(splits.label_names)  # doctest: +SKIP
    (11314, 7532, 20)
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import tarfile
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from gpt2clf.config import STRIP_CHOICES
from gpt2clf.errors import DataError, first_line
from gpt2clf.files import file_sha256

if TYPE_CHECKING:
    from gpt2clf.config import Config

__all__ = [
    "DataWarning",
    "DatasetSplits",
    "SplitSets",
    "TextDataset",
    "config_dataset",
    "data_format",
    "iter_id_text_rows",
    "iter_text_column",
    "join_fields",
    "labelled_texts",
    "load_20newsgroups",
    "load_dataset_splits",
    "load_hf_dataset",
    "load_labelled_file",
    "multi_hot",
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

_FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                 ".parquet": "parquet"}
MULTI_LABEL_SEPARATOR = "|"
"""Separates a document's labels in a CSV/TSV cell with ``multi_label`` (``sports|politics``)."""
# A label as read: one string, or (multi-label) a list of strings.
Label = str | list[str]


def join_fields(columns: Sequence[str], values: Sequence[str | None]) -> str | None:
    r"""One document from its text fields: a single field as it is; several as ``name: value``
    paragraphs in column order ("subject: Hi\n\nbody: ..."). None when every field is empty.

    Example::

        >>> join_fields(["subject", "body"], ["Hi", "Long time no see"])
        'subject: Hi\n\nbody: Long time no see'
        >>> join_fields(["body"], ["Long time no see"])
        'Long time no see'
    """
    if len(columns) == 1:
        return values[0]
    if all(value is None or not value.strip() for value in values):
        return None
    return "\n\n".join(f"{column}: {value or ''}" for column, value in zip(columns, values, strict=True))


def _columns(text_column: str | Sequence[str]) -> list[str]:
    return [text_column] if isinstance(text_column, str) else list(text_column)
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def load_labelled_file(path: str | Path, text_column: str | Sequence[str] = "text",
                       label_column: str = "label", *, multi_label: bool = False) -> tuple[list[str], list[Any]]:
    r"""Texts and their labels (as written, as strings) from a CSV, TSV, JSONL or Parquet file.

    The format follows the extension: ``.csv``; ``.tsv`` or ``.tab``; ``.jsonl`` or
    ``.ndjson`` (one JSON object per line); ``.parquet`` (read with pandas and pyarrow). CSV
    and TSV files need a header row. Labels keep their spelling (surrounding whitespace
    removed; JSON numbers and booleans as written in JSON, e.g. ``1``, ``2.5``, ``true``).
    Several ``text_column``\ s are joined per :func:`join_fields`. Rows whose text is empty or
    whitespace only are skipped with a :class:`DataWarning`; bytes that are not valid UTF-8
    become U+FFFD, also with a :class:`DataWarning` that counts them. A UTF-8 byte-order mark
    is ignored.

    With ``multi_label`` each label is a list of strings (possibly empty): a CSV/TSV cell
    ``a|b`` (see :data:`MULTI_LABEL_SEPARATOR`; an empty cell is no label), or a JSON list
    (JSONL, Parquet list column). Duplicates within a row are dropped.

    Example::

        >>> texts, labels = load_labelled_file("mail.csv", ["subject", "body"], "tags",
        ...                                    multi_label=True)  # doctest: +SKIP
        >>> labels[0]  # doctest: +SKIP
        ['billing', 'urgent']

    Raises:
        DataError: missing file, unsupported extension, no rows, a malformed line, a missing
            column, a row without a label, a multi-label cell that is not a list, or no
            non-empty text at all.
    """
    path, fmt = _check_data_file(path)
    reader = _RowReader(path, fmt, _columns(text_column), label_column, multi_label=multi_label)
    return _collect(reader, str(path), _columns(text_column), label_column, multi_label)


def _collect(reader: Any, name: str, columns: list[str], label_column: str,
             multi_label: bool) -> tuple[list[str], list[Any]]:
    """Texts and labels from ``(where, text, label)`` rows, skipping empty texts (with a warning)."""
    texts: list[str] = []
    labels: list[Any] = []
    empty = 0
    for where, doc, label in reader:
        if doc is None or not doc.strip():
            empty += 1
            continue
        if label is None or (not multi_label and not label):
            raise DataError(f"{name}: {where} has no value in label column {label_column!r}; "
                            "every row needs a label")
        texts.append(doc)
        labels.append(label)
    reader.warn_replaced()
    shown = " + ".join(repr(c) for c in columns)
    if not texts:
        raise DataError(f"{name}: all {empty} rows have an empty text in column {shown}")
    if empty:
        message = f"{name}: skipped {empty} rows whose {shown} is empty or whitespace"
        warnings.warn(DataWarning(message), stacklevel=3)
    if multi_label and not any(len(row) > 1 for row in labels):
        raise DataError(f"{name}: --multi-label, but no row has more than one label in column {label_column!r} "
                        f"(write them as a{MULTI_LABEL_SEPARATOR}b in CSV/TSV, a JSON list in JSONL); "
                        "did you mean single-label (drop --multi-label)?")
    return texts, labels


def iter_text_column(path: str | Path, text_column: str | Sequence[str] = "text") -> Iterator[str]:
    """Stream the texts of a CSV, TSV, JSONL or Parquet file, one per row, in file order.

    For prediction: nothing is skipped (an empty or null text yields ``""``), so the n-th
    text is the n-th row; CSV, TSV and JSONL are read row by row, never whole (Parquet reads
    the text columns at once). Formats, decoding, joining several columns and errors are
    those of :func:`load_labelled_file`; as this is a generator, errors surface on iteration
    (a missing file or column before the first text).
    """
    checked, fmt = _check_data_file(path)
    reader = _RowReader(checked, fmt, _columns(text_column), None)
    for _where, doc, _label in reader:
        yield doc or ""
    reader.warn_replaced()


def iter_id_text_rows(name: str, open_binary: Callable[[], BinaryIO], text_column: str | Sequence[str] = "text",
                      id_column: str | None = None) -> Iterator[tuple[str | None, str | None]]:
    """``(id, text)`` of each row of a CSV, TSV, JSONL or Parquet file opened by ``open_binary``, in file order.

    For prediction on files that are not on a local disk (a Ray worker reading ``s3://...``): ``name``
    (a path or URI) gives the format by its extension and names the file in errors. Formats, decoding,
    joining several text columns and errors are those of :func:`iter_text_column`, but a null or
    missing text stays None. The id is read as :func:`load_labelled_file` reads a label (text,
    surrounding whitespace removed, JSON numbers as written); None without ``id_column``.
    """
    reader = _RowReader(name, data_format(name), _columns(text_column), id_column, opener=open_binary)
    for _where, doc, row_id in reader:
        yield row_id, doc  # type: ignore[misc]
    reader.warn_replaced()


def data_format(path: str | Path) -> str:
    """csv, tsv, jsonl or parquet, from the extension of ``path``; :class:`DataError` for another."""
    suffix = Path(str(path)).suffix.lower()
    fmt = _FILE_FORMATS.get(suffix)
    if fmt is None:
        raise DataError(f"{path}: unsupported file type {suffix or '(no extension)'!r}; "
                        f"use one of {', '.join(_FILE_FORMATS)}")
    return fmt


def _check_data_file(path: str | Path) -> tuple[Path, str]:
    path = Path(path).expanduser()
    fmt = data_format(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"{path} is not a file; pass a {fmt.upper()} file")
    return path, fmt


class _RowReader:
    """Streams ``(where, text, label)`` from a CSV/TSV/JSONL/Parquet file (``label`` None when not
    asked; a list of strings with ``multi_label``).

    Undecodable bytes are read with ``surrogateescape`` (one lone surrogate per bad byte),
    counted and replaced by U+FFFD in the values handed out.
    """

    def __init__(self, path: Path | str, fmt: str, text_columns: list[str], label_column: str | None, *,
                 multi_label: bool = False, opener: Callable[[], BinaryIO] | None = None) -> None:
        self.path, self.fmt, self.opener = path, fmt, opener  # opener: the file's bytes (default: open path)
        self.text_columns, self.label_column = text_columns, label_column
        self.multi_label = multi_label
        self.replaced = 0

    def __iter__(self) -> Iterator[tuple[str, str | None, Label | None]]:
        if self.fmt == "parquet":
            source = self.opener() if self.opener else self.path
            yield from _RecordRows(str(self.path), self.text_columns, self.label_column, self.multi_label,
                                   _parquet_columns(self.path, self.text_columns, self.label_column, source))
            return
        # utf-8-sig drops a byte-order mark (spreadsheet exports often start with one).
        raw = self.opener() if self.opener else open(self.path, "rb")  # noqa: SIM115 (closed with handle)
        with io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            rows = self._jsonl(handle) if self.fmt == "jsonl" else self._delimited(handle)
            for where, doc, label in rows:
                if isinstance(label, list):
                    yield where, self._clean(doc), [self._clean(item) or "" for item in label]
                else:
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
        wanted = [c for c in (*self.text_columns, self.label_column) if c is not None]
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
                    text_at = [header.index(column) for column in self.text_columns]
                    label_at = None if self.label_column is None else header.index(self.label_column)
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}: malformed {kind}: line {reader.line_num} has {len(row)} "
                                    f"fields but the header has {len(header)}; quote fields that contain "
                                    "the delimiter")
                count += 1
                label: Label | None = None if label_at is None else row[label_at].strip()
                if self.multi_label and isinstance(label, str):
                    label = _split_labels(label)
                doc = join_fields(self.text_columns, [row[i] for i in text_at])
                yield f"row {count} (line {reader.line_num})", doc, label
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
                                f"with a {self.text_columns[0]!r} key")
            for column in self.text_columns:
                if column not in record:
                    keys = ", ".join(repr(k) for k in record) or "(none)"
                    raise DataError(f"{path}: line {number} has no {column!r} key; its keys are {keys} "
                                    "(choose with --text-column)")
            count += 1
            yield _record_row(path, f"line {number}", record, self.text_columns, self.label_column,
                              self.multi_label)
        if not count:
            raise DataError(f"{path} is empty; expected one JSON object per line")


def _split_labels(cell: str) -> list[str]:
    """``"a|b"`` -> ``["a", "b"]``: stripped, empties and repeats dropped, order kept."""
    parts = [part.strip() for part in cell.split(MULTI_LABEL_SEPARATOR)]
    return list(dict.fromkeys(part for part in parts if part))


def _plain(value: Any) -> Any:
    """A Parquet or Arrow cell as plain Python: NumPy scalars and arrays to Python, NaN to None."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, float) and value != value:  # NaN: a missing value in pandas
        return None
    if isinstance(value, tuple):
        return list(value)
    return value


def _record_row(path: Path | str, where: str, record: Any, text_columns: list[str], label_column: str | None,
                multi_label: bool) -> tuple[str, str | None, Label | None]:
    """``(where, text, label)`` of one JSON object, Parquet row or dataset row (a mapping)."""
    doc = join_fields(text_columns, [_json_scalar(path, where, _plain(record[c]), c) for c in text_columns])
    label: Label | None = None
    if label_column is not None:
        value = _plain(record.get(label_column))
        if multi_label and value is not None:
            if not isinstance(value, list):
                raise DataError(f"{path}: {where}: with --multi-label, {label_column!r} must be a list of labels "
                                f"such as [\"a\", \"b\"], not a {type(value).__name__} ({str(value)[:40]!r})")
            items = [_json_scalar(path, where, _plain(item), label_column) for item in value]
            label = list(dict.fromkeys(item.strip() for item in items if item is not None and item.strip()))
        else:
            scalar = _json_scalar(path, where, value, label_column, multi_hint=True)
            label = None if scalar is None else scalar.strip()
    return where, doc, label


def _json_scalar(path: Path | str, where: str, value: Any, column: str, *, multi_hint: bool = False) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)  # as written: 1, 2.5, true
    hint = " (for several labels per row pass --multi-label)" if multi_hint and isinstance(value, list) else ""
    raise DataError(f"{path}: {where}: {column!r} is a JSON {type(value).__name__}; "
                    f"expected a string or number{hint}")


def _parquet_columns(path: Path | str, text_columns: list[str], label_column: str | None,
                     source: Any = None) -> dict[str, list[Any]]:
    """The wanted columns of a Parquet file (read from ``source``, a path or binary file; default ``path``)
    as lists (column name -> values)."""
    source = path if source is None else source
    try:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(source)
        names = parquet.schema_arrow.names
    except ImportError as err:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from err
    except Exception as err:  # pyarrow raises ArrowInvalid (a ValueError) and OSError subclasses
        raise DataError(f"{path} is not a readable Parquet file ({first_line(err)})") from err
    wanted = [c for c in (*text_columns, label_column) if c is not None]
    missing = [c for c in wanted if c not in names]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r}; the Parquet file has columns "
                        f"{', '.join(map(repr, names))} (choose with --text-column/--label-column)")
    try:
        table = parquet.read(columns=list(dict.fromkeys(wanted)))
    except Exception as err:
        raise DataError(f"{path} is not a readable Parquet file ({first_line(err)})") from err
    return {name: table.column(name).to_pylist() for name in dict.fromkeys(wanted)}


class _RecordRows:
    """``(where, text, label)`` rows from columns held in memory (Parquet, Hugging Face datasets)."""

    def __init__(self, name: str, text_columns: list[str], label_column: str | None, multi_label: bool,
                 columns: dict[str, list[Any]]) -> None:
        self.name, self.text_columns, self.label_column = name, text_columns, label_column
        self.multi_label, self.columns = multi_label, columns

    def __iter__(self) -> Iterator[tuple[str, str | None, Label | None]]:
        names = list(self.columns)
        count = len(self.columns[names[0]]) if names else 0
        if not count:
            raise DataError(f"{self.name} has no rows")
        for i in range(count):
            record = {name: self.columns[name][i] for name in names}
            yield _record_row(self.name, f"row {i + 1}", record, self.text_columns, self.label_column,
                              self.multi_label)

    def warn_replaced(self) -> None:
        """Arrow strings are valid UTF-8 already: nothing was replaced."""


# ---------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------


def load_hf_dataset(name: str, text_column: str | Sequence[str] = "text", label_column: str = "label", *,
                    multi_label: bool = False) -> dict[str, tuple[list[str], list[Any]]]:
    """The labelled splits of a Hugging Face dataset: split name -> (texts, labels as strings).

    ``name`` is ``NAME`` or ``NAME:CONFIG`` (as ``datasets.load_dataset(NAME, CONFIG)``; a
    local dataset folder works too). ``ClassLabel`` columns give their label names, not
    their integers; a list column gives several labels per row with ``multi_label``. Rows
    are read as :func:`load_labelled_file` reads a file's (same joining, skipping and errors).

    Example::

        >>> splits = load_hf_dataset("imdb")  # doctest: +SKIP
        >>> sorted(splits), splits["train"][1][:2]  # doctest: +SKIP
        (['test', 'train', 'unsupervised'], ['neg', 'neg'])

    Raises:
        DataError: ``datasets`` is not installed, the dataset cannot be loaded (unknown name,
            hub unreachable), a column is missing, or anything :func:`load_labelled_file` raises.
    """
    try:
        import datasets
    except ImportError as err:
        raise DataError("--dataset needs the Hugging Face datasets library: pip install 'gpt2clf[datasets]' "
                        "(or pip install datasets)") from err
    path, _, config_name = name.partition(":")
    if Path(name).expanduser().exists():  # a local folder whose name holds a colon
        path, config_name = name, ""
    try:
        loaded = datasets.load_dataset(path, config_name or None)
    except Exception as err:  # offline hub, unknown name or config, broken files: all one-line errors
        raise DataError(f"cannot load dataset {name!r} with datasets.load_dataset ({type(err).__name__}: "
                        f"{first_line(err)}); check the name, NAME:CONFIG and the network (or HF_HUB_OFFLINE)"
                        ) from err
    columns = _columns(text_column)
    result: dict[str, tuple[list[str], list[Any]]] = {}
    for split, table in dict(loaded).items():
        names = list(table.column_names)
        missing = [c for c in (*columns, label_column) if c not in names]
        if missing:
            raise DataError(f"dataset {name!r} split {split!r} has no column {missing[0]!r}; its columns are "
                            f"{', '.join(map(repr, names))} (choose with --text-column/--label-column)")
        values = {c: list(table[c]) for c in dict.fromkeys((*columns, label_column))}
        values[label_column] = _named_labels(table.features.get(label_column) if hasattr(table, "features")
                                             else None, values[label_column])
        rows = _RecordRows(f"dataset {name!r} split {split!r}", columns, label_column, multi_label, values)
        if len(values[label_column]):
            result[split] = _collect(rows, f"dataset {name!r} split {split!r}", columns, label_column, multi_label)
    return result


def _named_labels(feature: Any, values: list[Any]) -> list[Any]:
    """Integer ``ClassLabel`` values (or lists of them) replaced by their names; -1 (no label) by None."""
    inner = getattr(feature, "feature", None)
    namer = feature if hasattr(feature, "int2str") else inner if hasattr(inner, "int2str") else None
    if namer is None:
        return values

    def name(value: Any) -> Any:
        return None if value is None or value < 0 else namer.int2str(int(value))

    return [[name(v) for v in value] if isinstance(value, (list, tuple)) else name(value) for value in values]


def load_dataset_splits(
    *,
    train_file: str | Path | None = None,
    test_file: str | Path | None = None,
    text_column: str | Sequence[str] = "text",
    label_column: str = "label",
    data_dir: str | Path | None = None,
    strip: Sequence[str] = (),
    test_ratio: float = 0.2,
    seed: int = 42,
    multi_label: bool = False,
    dataset: str | None = None,
) -> DatasetSplits:
    """Train and test splits of 20 Newsgroups (no ``train_file``), a labelled file, or a
    Hugging Face ``dataset`` (NAME or NAME:CONFIG).

    With ``train_file``, the label names are the train file's distinct labels sorted as
    strings; the test split is ``test_file`` or, without one, a seeded stratified
    ``test_ratio`` share of the train file. A ``dataset`` gives its ``train`` split and its
    ``test`` split (or, without one, a ``test_ratio`` share of ``train``). ``data_dir`` and
    ``strip`` only apply to 20 Newsgroups; the columns, ``test_ratio``, ``seed`` and
    ``multi_label`` only to files and datasets.

    Raises:
        DataError: anything :func:`load_20newsgroups`, :func:`load_labelled_file` or
            :func:`load_hf_dataset` raises, fewer than two classes, or test labels that the
            training data does not have.
    """
    extra_source: dict[str, Any] = {"multi_label": True} if multi_label else {}
    stored_column: Any = text_column if isinstance(text_column, str) or len(text_column) != 1 else text_column[0]
    stored_column = stored_column if isinstance(stored_column, str) else list(stored_column)
    if dataset is not None:
        if train_file is not None:
            raise DataError("give either train_file or dataset, not both")
        splits = load_hf_dataset(dataset, text_column, label_column, multi_label=multi_label)
        if "train" not in splits:
            raise DataError(f"dataset {dataset!r} has no labelled 'train' split (it has: "
                            f"{', '.join(splits) or 'none'})")
        source = {"kind": "hf_dataset", "dataset": dataset, "text_column": stored_column,
                  "label_column": label_column, "test_ratio": test_ratio, "seed": seed, **extra_source}
        return _splits_from_rows(splits["train"], splits.get("test"), f"dataset {dataset!r}", label_column,
                                 multi_label, test_ratio, seed, source)
    if train_file is None:
        if test_file is not None:
            raise DataError("test_file needs train_file (without train_file the dataset is 20 Newsgroups)")
        return _newsgroups_splits(data_dir, strip)
    return _file_splits(Path(train_file).expanduser(), None if test_file is None else Path(test_file).expanduser(),
                        text_column=text_column, label_column=label_column, multi_label=multi_label,
                        test_ratio=test_ratio, seed=seed, recorded={"text_column": stored_column, **extra_source})


def _newsgroups_splits(data_dir: str | Path | None, strip: Sequence[str]) -> DatasetSplits:
    """20 Newsgroups' own train and test splits, and where they were read from."""
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


def _file_splits(train_path: Path, test_path: Path | None, *, text_column: str | Sequence[str], label_column: str,
                 multi_label: bool, test_ratio: float, seed: int, recorded: dict[str, Any]) -> DatasetSplits:
    """Splits of a labelled train file (and test file); ``source`` records the files, their checksums, the
    settings, and ``recorded`` (the text column as stored, and the caller's extra fields)."""
    rows = load_labelled_file(train_path, text_column, label_column, multi_label=multi_label)
    source = {"kind": "file", "train_file": str(train_path.resolve()), "test_file": None,
              "text_column": recorded["text_column"], "label_column": label_column, "test_ratio": test_ratio,
              "seed": seed, "train_sha256": file_sha256(train_path), "test_sha256": None,
              **{k: v for k, v in recorded.items() if k != "text_column"}}
    test_rows = None
    if test_path is not None:
        test_rows = load_labelled_file(test_path, text_column, label_column, multi_label=multi_label)
        source["test_file"] = str(test_path.resolve())
        source["test_sha256"] = file_sha256(test_path)
    return _splits_from_rows(rows, test_rows, str(train_path), label_column, multi_label, test_ratio, seed,
                             source, test_name=str(test_path) if test_path is not None else None)


def _splits_from_rows(rows: tuple[list[str], list[Any]], test_rows: tuple[list[str], list[Any]] | None,
                      name: str, label_column: str, multi_label: bool, test_ratio: float, seed: int,
                      source: dict[str, Any], test_name: str | None = None) -> DatasetSplits:
    """Train and test TextDatasets from rows as read; the test split is carved out when not given."""
    texts, labels = rows
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
        train, test = stratified_split(full, test_ratio, seed)
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
    return DatasetSplits(train=train, test=test, label_names=list(label_names), source=source)


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
        return load_dataset_splits(data_dir=source.get("data_dir"), strip=source.get("strip") or ())
    if kind == "hf_dataset":
        return load_dataset_splits(
            dataset=source.get("dataset"), text_column=source.get("text_column", "text"),
            label_column=source.get("label_column", "label"), test_ratio=source.get("test_ratio", 0.2),
            seed=source.get("seed", 42), multi_label=bool(source.get("multi_label")),
        )
    if kind == "file":
        if not source.get("train_file"):
            raise DataError("the recorded dataset source names no train_file; pass the dataset explicitly")
        splits = load_dataset_splits(
            train_file=source["train_file"], test_file=source.get("test_file"),
            text_column=source.get("text_column", "text"), label_column=source.get("label_column", "label"),
            test_ratio=source.get("test_ratio", 0.2), seed=source.get("seed", 42),
            multi_label=bool(source.get("multi_label")),
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
    raise DataError(f"unknown dataset source kind {kind!r}; expected '20newsgroups', 'file' or 'hf_dataset'")


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


def config_dataset(config: Config) -> DatasetSplits:
    """The train and test splits of the dataset ``config`` names (20 Newsgroups, a file or a dataset)."""
    return load_dataset_splits(
        train_file=config.train_file, test_file=config.test_file, text_column=config.text_column,
        label_column=config.label_column, data_dir=config.data_dir, strip=config.strip,
        test_ratio=config.test_ratio, seed=config.seed, multi_label=config.multi_label, dataset=config.dataset,
    )


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
