"""The files of a Ray prediction job: finding the input, reading its rows on the workers, the output folder.

Data flow::

    --input PATH (a file, folder, glob, or a URI pyarrow reads: s3://, gs://, hdfs://)
      -> list_input_files (driver: sorted file names with a known extension)
      -> read_rows (one Ray task per file: gpt2clf.data.labelled_files' reader over a pyarrow stream)
         -> blocks of (id column or ``row``, the document's text)

Guarantees:

* a row's text is what ``gpt2clf predict --input`` reads from it (the same reader: decoding, joining
  of several text columns); a null or blank text stays so, for the model actor to mark as an error;
* without an id column, ``row`` is the 0-based position in the whole input (files in sorted order);
  with several files the driver counts each file's rows first (one extra read, in parallel tasks);
* the output folder is refused in one line when it holds anything, unless ``overwrite``; then only a
  folder of Parquet files (what this job writes) is replaced, never one holding other files. Local
  output is written beside the folder and moved into place at the end, so a failed job leaves no
  partial output and a rerun never adds rows to an old one.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gpt2clf.data.labelled_files import data_format, iter_id_text_rows
from gpt2clf.errors import DataError, UserError, first_line

__all__ = ["ROW_COLUMN", "TEXT_COLUMN", "check_output_folder", "count_rows", "is_uri", "list_input_files", "open_file",
           "read_rows", "row_offsets"]

ROW_COLUMN = "row"  # the 0-based input position, written when there is no id column
TEXT_COLUMN = "__gpt2clf_text"  # a read row's joined text, between the read tasks and the model actors
READ_CHUNK_ROWS = 256  # rows per block a read task hands on, by default: one block is one actor call
OUTPUT_SUFFIXES = (".parquet",)


def is_uri(path: str) -> bool:
    return "://" in path


def _filesystem(path: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    from pyarrow import fs

    if is_uri(path):
        try:
            return fs.FileSystem.from_uri(path)
        except Exception as err:  # ArrowInvalid, OSError: unknown scheme, no credentials, no such bucket
            raise DataError(f"cannot open {path}: {first_line(err)}") from err
    return fs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def open_file(path: str) -> Any:
    """A seekable binary file for a local path or a URI (what the read tasks and the model shipping read)."""
    filesystem, inner = _filesystem(path)
    return filesystem.open_input_file(inner)


def _join(path: str, item: str, inner: str) -> str:
    """The name to open ``item`` (listed under ``inner``, the in-filesystem path of ``path``) by: a URI stays
    a URI with its scheme and host (s3://bucket/..., hdfs://host:8020/...)."""
    if not is_uri(path):
        return item
    trimmed = path.rstrip("/")
    prefix = trimmed[:-len(inner.rstrip("/"))] if trimmed.endswith(inner.rstrip("/")) else path.split("://")[0] + "://"
    return prefix + item


def list_input_files(path: str) -> list[str]:
    """The input files ``path`` names, sorted: itself, the data files under a folder (hidden ones and those
    starting with ``_`` skipped, as Ray does), or a glob's matches. DataError when there are none."""
    from pyarrow import fs

    if not is_uri(path) and glob.has_magic(path):
        found = sorted(p for p in glob.glob(os.path.expanduser(path), recursive=True) if os.path.isfile(p))
    else:
        filesystem, inner = _filesystem(path)
        pattern = None
        if is_uri(path) and glob.has_magic(inner):  # s3://bucket/part-*.parquet
            pattern, inner = inner, inner.rsplit("/", 1)[0]
        info = filesystem.get_file_info(inner)
        if info.type == fs.FileType.NotFound:
            raise DataError(f"--input {path}: no such file or folder")
        if info.type == fs.FileType.File:
            return [path]
        listed = filesystem.get_file_info(fs.FileSelector(inner, recursive=pattern is None))
        found = sorted(_join(path, item.path, inner) for item in listed if item.type == fs.FileType.File
                       and (pattern is None or fnmatch.fnmatch(item.path, pattern)))
    found = [p for p in found if not Path(p.split("://")[-1]).name.startswith((".", "_"))
             and Path(p).suffix.lower() in (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".parquet")]
    if not found:
        raise DataError(f"--input {path}: no CSV, TSV, JSONL or Parquet files there")
    for name in found:
        data_format(name)  # the one extension rule (raises for none of them)
    return found


def read_rows(batch: dict[str, Any], *, text_columns: Sequence[str], id_column: str | None,
              chunk_rows: int = READ_CHUNK_ROWS) -> Iterator[Any]:
    """Ray Data ``map_batches`` function: for each ``path`` (and its first row's position ``offset``) in
    ``batch``, yield Arrow tables of (``id_column``, or ``row``, and the text) of ``chunk_rows`` rows (blocks
    that size spread over the model actors: an actor takes a whole block)."""
    import pyarrow as pa

    for path, offset in zip(batch["path"], batch["offset"], strict=True):
        ids: list[Any] = []
        texts: list[str | None] = []
        position = int(offset)
        for row_id, text in iter_id_text_rows(str(path), lambda p=str(path): open_file(p), text_columns, id_column):
            ids.append(row_id if id_column else position)
            texts.append(text)
            position += 1
            if len(texts) == chunk_rows:
                yield _rows_table(pa, ids, texts, id_column)
                ids, texts = [], []
        if texts:
            yield _rows_table(pa, ids, texts, id_column)


def _rows_table(pa: Any, ids: list[Any], texts: list[str | None], id_column: str | None) -> Any:
    key = id_column or ROW_COLUMN
    return pa.table({key: pa.array(ids, pa.string() if id_column else pa.int64()),
                     TEXT_COLUMN: pa.array(texts, pa.string())})


def count_rows(path: str, text_columns: Sequence[str]) -> int:
    """Rows in one input file, as :func:`read_rows` reads them."""
    return sum(1 for _ in iter_id_text_rows(path, lambda: open_file(path), text_columns))


def row_offsets(ray: Any, files: Sequence[str], text_columns: Sequence[str], counted: bool
                ) -> tuple[list[int], int | None]:
    """Each file's first row's position in the whole input, and the rows in all (None when not counted).

    With ``counted`` False (an id column) all 0; with one file 0 and no count; else every file is
    counted in parallel Ray tasks."""
    if not counted or len(files) == 1:
        return [0] * len(files), None
    counter = ray.remote(num_cpus=0.5)(count_rows)
    counts = ray.get([counter.remote(path, list(text_columns)) for path in files])
    return [sum(counts[:i]) for i in range(len(files))], sum(counts)


def check_output_folder(output: str, overwrite: bool) -> None:
    """Refuse an output folder that holds anything, unless ``overwrite`` and it holds only Parquet files."""
    from pyarrow import fs

    filesystem, inner = _filesystem(output)
    info = filesystem.get_file_info(inner)
    if info.type == fs.FileType.NotFound:
        return
    if info.type == fs.FileType.File:
        raise UserError(f"--output {output} is a file; give a folder for the Parquet files")
    held = filesystem.get_file_info(fs.FileSelector(inner, recursive=True))
    files = [item.path for item in held if item.type == fs.FileType.File]
    if not held:
        return
    if not overwrite:
        raise UserError(f"--output {output} is not empty ({len(files)} files); pass --overwrite to replace it, "
                        "or choose another folder")
    others = [p for p in files if not p.endswith(OUTPUT_SUFFIXES)]
    if others or len(files) < len(held):
        shown = Path(others[0]).name if others else "a sub-folder"
        raise UserError(f"--output {output} holds {shown}, which a prediction job does not write; --overwrite "
                        "replaces only a folder of Parquet files: choose another folder")
