"""Hugging Face datasets: the labelled splits of ``datasets.load_dataset(NAME, CONFIG)``.

:func:`load_hf_dataset` reads every labelled split of a hub (or local) dataset into texts and
labels as strings (``ClassLabel`` integers become their names), row by row as
:mod:`~gpt2clf.data.labelled_files` reads a file's. ``datasets`` is an optional dependency,
imported only here and only when called. Nothing here prints or exits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpt2clf.data.labelled_files import RecordRows, collect_rows, column_list
from gpt2clf.errors import DataError, first_line

__all__ = ["load_hf_dataset"]


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
    columns = column_list(text_column)
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
        rows = RecordRows(f"dataset {name!r} split {split!r}", columns, label_column, multi_label, values)
        if len(values[label_column]):
            result[split] = collect_rows(rows, f"dataset {name!r} split {split!r}", columns, label_column, multi_label)
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
