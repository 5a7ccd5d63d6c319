"""Labelled text files: CSV, TSV, JSONL and Parquet, read row by row into texts and labels.

:func:`load_labelled_file` gives a file's texts and labels as written (one label per row, or a
list with ``multi_label``); :func:`iter_text_column` streams the texts alone for prediction, and
:func:`iter_documents` the documents predict and explain are given (arguments, text files, a corpus).
:func:`join_fields` is the one way several text columns become one document (files, Hugging Face
datasets and the scikit-learn estimator all use it). Rows are read by :class:`_RowReader` (files)
or :class:`RecordRows` (columns in memory: Parquet, Hugging Face datasets); :func:`collect_rows`
applies the same skipping and checks to both.

Guarantees: bytes that are not UTF-8 become U+FFFD and empty texts are skipped, each reported as a
:class:`~gpt2clf.data.text_dataset.DataWarning` that counts them; every malformed line, missing
column or missing label is a one-line :class:`~gpt2clf.errors.DataError` naming the file and row.
Nothing here prints or exits.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from gpt2clf.data.text_dataset import DataWarning
from gpt2clf.errors import DataError, first_line

__all__ = ["MULTI_LABEL_SEPARATOR", "RecordRows", "collect_rows", "column_list", "data_format", "iter_documents",
           "iter_id_text_rows", "iter_text_column", "join_fields", "load_labelled_file", "read_text_file"]

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


def column_list(text_column: str | Sequence[str]) -> list[str]:
    """One text column or several, as a list of column names."""
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
    reader = _RowReader(path, fmt, column_list(text_column), label_column, multi_label=multi_label)
    return collect_rows(reader, str(path), column_list(text_column), label_column, multi_label)


def collect_rows(reader: Any, name: str, columns: list[str], label_column: str,
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
    reader = _RowReader(checked, fmt, column_list(text_column), None)
    for _where, doc, _label in reader:
        yield doc or ""
    reader.warn_replaced()


def read_text_file(path: str | Path) -> str:
    """One document: a text file's whole content (bytes that are not UTF-8 become U+FFFD)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"--file {path}: no such file")
    return file.read_bytes().decode("utf-8", errors="replace")


def iter_documents(texts: Sequence[str], files: Sequence[str | Path] = (), corpus: str | Path | None = None,
                   text_column: str | Sequence[str] = "text") -> Iterator[tuple[str, str]]:
    """``(id, text)`` of documents given in three ways, in this order, streamed: ``texts`` (ids ``arg:0``,
    ``arg:1``, ...), whole text ``files`` (id: the path) and the rows of a ``corpus`` file (ids
    ``CORPUS:0``, ...; read by :func:`iter_text_column`)."""
    for i, text in enumerate(texts):
        yield f"arg:{i}", text
    for path in files:
        yield str(path), read_text_file(path)
    if corpus:
        for i, text in enumerate(iter_text_column(corpus, text_column)):
            yield f"{corpus}:{i}", text


def iter_id_text_rows(name: str, open_binary: Callable[[], BinaryIO], text_column: str | Sequence[str] = "text",
                      id_column: str | None = None) -> Iterator[tuple[str | None, str | None]]:
    """``(id, text)`` of each row of a CSV, TSV, JSONL or Parquet file opened by ``open_binary``, in file order.

    For prediction on files that are not on a local disk (a Ray worker reading ``s3://...``): ``name``
    (a path or URI) gives the format by its extension and names the file in errors. Formats, decoding,
    joining several text columns and errors are those of :func:`iter_text_column`, but a null or
    missing text stays None. The id is read as :func:`load_labelled_file` reads a label (text,
    surrounding whitespace removed, JSON numbers as written); None without ``id_column``.
    """
    reader = _RowReader(name, data_format(name), column_list(text_column), id_column, opener=open_binary)
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
            yield from RecordRows(str(self.path), self.text_columns, self.label_column, self.multi_label,
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


class RecordRows:
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
