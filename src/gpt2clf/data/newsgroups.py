"""The 20 Newsgroups "bydate" corpus, read exactly as scikit-learn's ``fetch_20newsgroups`` gives it.

:func:`load_20newsgroups` reads one split from a local archive or extracted folder (or
scikit-learn's download cache) into a :class:`~gpt2clf.data.text_dataset.TextDataset`: the same
texts, order, labels and label names as ``fetch_20newsgroups``. Splits read are cached in-process
per path, size and modification time. Nothing here prints or exits; mistakes raise
:class:`~gpt2clf.errors.DataError` with a one-line message that says how to point at the data.
"""

from __future__ import annotations

import functools
import os
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpt2clf.config import STRIP_CHOICES
from gpt2clf.data.text_dataset import TextDataset
from gpt2clf.errors import DataError, first_line

__all__ = ["NEWS_ARCHIVE_NAME", "NEWS_FOLDERS", "load_20newsgroups", "normalise_strip", "resolve_news_source"]

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
    parts = normalise_strip(strip)
    kind, path = resolve_news_source(data_dir)
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


def normalise_strip(strip: Sequence[str] | str) -> tuple[str, ...]:
    """The strip parts asked for, checked, in the order scikit-learn applies them."""
    if isinstance(strip, str):  # a lone "headers" is a common slip for ("headers",)
        strip = [strip]
    unknown = [part for part in strip if part not in STRIP_CHOICES]
    if unknown:
        raise DataError(f"strip accepts {', '.join(STRIP_CHOICES)}; got {unknown[0]!r}")
    return tuple(part for part in STRIP_CHOICES if part in strip)


def resolve_news_source(data_dir: str | Path | None) -> tuple[str, Path]:
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
