"""Tests of the data stages (corpora, batching, stats): 20 Newsgroups, files, splits, tokens, batches."""

from __future__ import annotations

import json
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from gpt2clf.data.batching import (
    LengthGroupedSampler,
    PaddingCollator,
    TokenizedDataset,
    length_sorted_batches,
    load_tokenizer,
    tokenize_texts,
)
from gpt2clf.data.labelled_files import iter_text_column, load_labelled_file
from gpt2clf.data.newsgroups import load_20newsgroups
from gpt2clf.data.splits import DataSource, load_dataset_splits, splits_from_source
from gpt2clf.data.stats import DatasetStats, dataset_stats
from gpt2clf.data.text_dataset import DatasetSplits, DataWarning, TextDataset, stratified_split, stratified_subset
from gpt2clf.errors import DataError, ModelLoadError
from gpt2clf.report.plots import plot_dataset_stats

# scikit-learn's target_names: the newsgroup folders in sorted order.
NEWSGROUPS = [
    "alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware", "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles",
    "rec.sport.baseball", "rec.sport.hockey", "sci.crypt", "sci.electronics", "sci.med", "sci.space",
    "soc.religion.christian", "talk.politics.guns", "talk.politics.mideast", "talk.politics.misc",
    "talk.religion.misc",
]
EOS = 50256


# --- 20 Newsgroups -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def news(archive_path: Path) -> Iterator[dict[str, TextDataset]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GPT2CLF_20NG", raising=False)  # the tests below choose the data themselves
        yield {subset: load_20newsgroups(subset, archive_path) for subset in ("train", "test")}


@pytest.fixture(scope="module")
def sklearn_news(tmp_path_factory: pytest.TempPathFactory, archive_path: Path) -> tuple[Path, Path]:
    """(data_home, extracted folder): scikit-learn's real fetch_20newsgroups, run offline.

    Only the download is replaced, by a link to the local archive. scikit-learn extracts
    it with its own code (into a folder kept for the extracted-folder tests), then reads,
    caches and shuffles it as it always does.
    """
    import sklearn.datasets._twenty_newsgroups as twenty

    home = tmp_path_factory.mktemp("sklearn-home")
    extracted = tmp_path_factory.mktemp("extracted")
    real_extract = twenty.tarfile_extractall

    def local_archive(remote, dirname=None, n_retries=3, delay=1.0):
        target = Path(dirname) / remote.filename
        target.symlink_to(archive_path)
        return str(target)

    def extract_and_keep(tar, path):
        real_extract(tar, path=str(extracted))
        for folder in ("20news-bydate-train", "20news-bydate-test"):
            (Path(path) / folder).symlink_to(extracted / folder, target_is_directory=True)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(twenty, "_fetch_remote", local_archive)
        mp.setattr(twenty, "tarfile_extractall", extract_and_keep)
        twenty.fetch_20newsgroups(data_home=home, subset="train")  # builds scikit-learn's cache
    assert len(list((extracted / "20news-bydate-test").iterdir())) == 20  # sklearn removed only links
    return home, extracted


def test_archive_sizes_and_label_names(news: dict[str, TextDataset]) -> None:
    assert len(news["train"]) == 11314
    assert len(news["test"]) == 7532
    for ds in news.values():
        assert ds.label_names == NEWSGROUPS
        assert set(ds.labels) == set(range(20))
        assert all(isinstance(t, str) and t for t in ds.texts)


@pytest.mark.parametrize(("subset", "strip"), [("test", ()), ("train", ()),
                                               ("test", ("headers", "footers", "quotes"))])
def test_identical_to_sklearn_fetch_20newsgroups(
    news: dict[str, TextDataset], sklearn_news: tuple[Path, Path], archive_path: Path, subset: str,
    strip: tuple[str, ...],
) -> None:
    from sklearn.datasets import fetch_20newsgroups

    expected = fetch_20newsgroups(data_home=sklearn_news[0], subset=subset, remove=strip,
                                  download_if_missing=False)
    # Strip parts in another order and as a list: scikit-learn applies them in a fixed order.
    ours = load_20newsgroups(subset, archive_path, strip=list(reversed(strip)))
    assert ours.label_names == list(expected.target_names) == NEWSGROUPS
    assert ours.labels == expected.target.tolist()
    assert ours.texts == expected.data


def test_extracted_folder_and_archive_folder_give_the_same_data(
    news: dict[str, TextDataset], sklearn_news: tuple[Path, Path], archive_path: Path
) -> None:
    from_folder = load_20newsgroups("test", sklearn_news[1])
    from_parent = load_20newsgroups("test", archive_path.parent)  # the folder holding the archive
    for ds in (from_folder, from_parent):
        assert ds.texts == news["test"].texts
        assert ds.labels == news["test"].labels
        assert ds.label_names == NEWSGROUPS
    stripped = load_20newsgroups("train", sklearn_news[1], strip=["quotes"])
    assert stripped.texts == load_20newsgroups("train", archive_path, strip=["quotes"]).texts


def test_env_var_names_the_data(news: dict[str, TextDataset], archive_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT2CLF_20NG", str(archive_path))
    ds = load_20newsgroups("test")
    assert ds.labels == news["test"].labels
    splits = load_dataset_splits()
    assert len(splits.train) == 11314 and splits.source["data_dir"] is None
    assert splits.source["resolved"] == str(archive_path.resolve())


def test_known_post_is_in_its_class(news: dict[str, TextDataset]) -> None:
    test = news["test"]
    hits = [i for i, text in enumerate(test.texts) if "Subject: X-Face?" in text and "Rick Miller" in text]
    assert len(hits) == 1
    assert test.label_names[test.labels[hits[0]]] == "comp.windows.x"


def test_strip_headers(news: dict[str, TextDataset], archive_path: Path) -> None:
    raw = news["test"]
    stripped = load_20newsgroups("test", archive_path, strip=["headers"])
    assert stripped.labels == raw.labels
    assert sum(t.startswith("From:") for t in raw.texts) > 0.9 * len(raw)
    assert sum(t.startswith("From:") for t in stripped.texts) < 0.01 * len(raw)
    i = next(i for i, t in enumerate(raw.texts) if "Subject: X-Face?" in t)
    assert "From: Rick Miller" in raw.texts[i]
    assert "From:" not in stripped.texts[i] and "Subject:" not in stripped.texts[i]
    assert stripped.texts[i].startswith("I'm not familiar")


def test_20newsgroups_errors(news: dict[str, TextDataset], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_20newsgroups("train", tmp_path / "nope.tar.gz")
    with pytest.raises(DataError, match="20news-bydate-train"):
        load_20newsgroups("train", tmp_path)  # an empty folder
    garbage = tmp_path / "20news-bydate.tar.gz"
    garbage.write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="not a readable 20 Newsgroups archive"):
        load_20newsgroups("train", garbage)
    other = tmp_path / "other.tar.gz"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("hello")
    with tarfile.open(other, "w:gz") as tar:
        tar.add(tmp_path / "docs", arcname="docs")
    with pytest.raises(DataError, match="not the 20 Newsgroups bydate archive"):
        load_20newsgroups("train", other)
    partial = tmp_path / "partial"
    (partial / "20news-bydate-train" / "sci.space").mkdir(parents=True)
    (partial / "20news-bydate-train" / "sci.space" / "1").write_bytes(b"From: a\n\nOrbit \xe9")
    assert load_20newsgroups("train", partial).texts == ["From: a\n\nOrbit \xe9"]  # latin1
    with pytest.raises(DataError, match="has no 20news-bydate-test/ folder"):
        load_20newsgroups("test", partial)
    with pytest.raises(DataError, match="subset"):
        load_20newsgroups("all", tmp_path)
    with pytest.raises(DataError, match="strip"):
        load_20newsgroups("train", tmp_path, strip=["signature"])


def test_online_failure_says_how_to_work_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import sklearn.datasets

    def offline(**kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.delenv("GPT2CLF_20NG", raising=False)
    monkeypatch.setattr(sklearn.datasets, "fetch_20newsgroups", offline)
    with pytest.raises(DataError, match="GPT2CLF_20NG") as info:
        load_20newsgroups("train")
    assert "\n" not in str(info.value) and "--data-dir" in str(info.value)


# --- tokenizer and tokenization ------------------------------------------------------------


def test_tokenizer_basics(tokenizer, tokenizer_path: Path) -> None:
    assert tokenize_texts(["Hello world"], tokenizer, 16) == [[15496, 995]]
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.pad_token_id == EOS
    assert tokenizer.padding_side == "right"
    left = load_tokenizer(str(tokenizer_path), padding_side="left")
    assert left.padding_side == "left" and left.pad_token_id == EOS
    left.padding_side = "right"  # each call returns its own copy
    assert load_tokenizer(str(tokenizer_path), padding_side="left").padding_side == "left"


def test_missing_tokenizer_raises_model_load_error(tmp_path: Path) -> None:
    for name in (str(tmp_path / "missing"), str(tmp_path)):  # absent folder; folder without files
        with pytest.raises(ModelLoadError, match="--tokenizer") as info:
            load_tokenizer(name)
        assert "\n" not in str(info.value)


def test_tokenize_truncates_and_never_returns_empty(tokenizer) -> None:
    long = " ".join(["word"] * 500)
    full = tokenize_texts([long], tokenizer, 10_000)[0]
    odd = ["", "   ", "a\x00b\x1f\x7f", "\ud800 lone surrogate", "日本語 🙂"]
    ids = tokenize_texts([long, *odd], tokenizer, 32)
    assert len(full) == 500 and ids[0] == full[:32]
    assert ids[1] == [EOS]
    assert all(1 <= len(x) <= 32 for x in ids)
    with pytest.raises(TypeError):
        tokenize_texts("not a list", tokenizer, 8)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(max_size=200), min_size=1, max_size=8), max_length=st.integers(1, 40))
def test_tokenize_any_unicode(tokenizer, texts: list[str], max_length: int) -> None:
    ids = tokenize_texts(texts, tokenizer, max_length, batch_size=3)
    assert len(ids) == len(texts)
    for doc in ids:
        assert 1 <= len(doc) <= max_length
        assert all(0 <= t < len(tokenizer) for t in doc)


# --- collator ------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_collator(side: str) -> None:
    ds = TokenizedDataset.from_token_lists([[5, 6, 7], [8], [9, 10]], labels=[2, 0, 1])
    batch = PaddingCollator(pad_token_id=99, padding_side=side)([ds[1], ds[2]])
    assert batch["input_ids"].shape == (2, 2)  # the batch's longest, not max_length
    assert all(t.dtype == torch.long for t in batch.values())
    if side == "right":
        assert batch["input_ids"].tolist() == [[8, 99], [9, 10]]
        assert batch["attention_mask"].tolist() == [[1, 0], [1, 1]]
    else:
        assert batch["input_ids"].tolist() == [[99, 8], [9, 10]]
        assert batch["attention_mask"].tolist() == [[0, 1], [1, 1]]
    assert batch["labels"].tolist() == [0, 1]
    assert batch["index"].tolist() == [1, 2]
    full = PaddingCollator(0, side)([ds[0], ds[1], ds[2]])
    assert full["attention_mask"].sum(1).tolist() == [3, 1, 2]


def test_collator_without_labels() -> None:
    ds = TokenizedDataset.from_token_lists([[1, 2], [3]])
    assert ds.lengths == [2, 1] and "labels" not in ds[0]
    batch = PaddingCollator(0)([ds[0], ds[1]])
    assert set(batch) == {"input_ids", "attention_mask", "index"}


# --- samplers ------------------------------------------------------------------------------


def _waste(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded


def test_length_grouped_sampler_single_replica() -> None:
    lengths = np.random.default_rng(0).integers(1, 1000, size=1003).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=16, seed=7, megabatch_factor=8)
    before = torch.random.get_rng_state()
    order = list(sampler)
    assert torch.equal(before, torch.random.get_rng_state())  # global RNG untouched
    assert sorted(order) == list(range(1003)) and len(sampler) == 1003
    torch.manual_seed(123)  # the global seed does not matter either
    assert list(LengthGroupedSampler(lengths, 16, seed=7, megabatch_factor=8)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order
    resumed = LengthGroupedSampler(lengths, 16, seed=7, megabatch_factor=8)
    resumed.set_epoch(1)
    assert list(resumed) == list(sampler)

    batches = [order[i:i + 16] for i in range(0, len(order), 16)]
    plain = list(LengthGroupedSampler(lengths, 16, seed=7, group_by_length=False))
    assert sorted(plain) == list(range(1003)) and plain != list(range(1003))
    random_batches = [plain[i:i + 16] for i in range(0, len(plain), 16)]
    assert _waste(batches, lengths) < 0.25 * _waste(random_batches, lengths)
    # Grouped batches still come in shuffled order, not longest-first.
    maxima = [max(lengths[i] for i in b) for b in batches[:-1]]
    assert maxima != sorted(maxima, reverse=True)
    identity = LengthGroupedSampler(lengths, 16, shuffle=False, group_by_length=False)
    assert list(identity) == list(range(1003))
    evaluation = LengthGroupedSampler(lengths, 16, shuffle=False)  # grouped, not shuffled
    assert evaluation.batches() == length_sorted_batches(lengths, 16)


def test_dataloader_batches_are_the_grouped_batches() -> None:
    lengths = [(i * 37) % 50 + 1 for i in range(203)]
    ds = TokenizedDataset.from_token_lists([[1] * n for n in lengths], labels=[0] * len(lengths))
    sampler = LengthGroupedSampler(ds.lengths, batch_size=8, seed=3, megabatch_factor=4)
    loader = DataLoader(ds, batch_size=8, sampler=sampler, collate_fn=PaddingCollator(0))
    assert [b["index"].tolist() for b in loader] == sampler.batches()
    assert len(sampler.batches()[-1]) == 203 % 8  # the short batch comes last


@pytest.mark.parametrize("drop_last", [False, True])
def test_length_grouped_sampler_distributed(drop_last: bool) -> None:
    lengths = np.random.default_rng(1).integers(1, 500, size=203).tolist()
    ranks = [LengthGroupedSampler(lengths, 8, seed=5, num_replicas=2, rank=r, drop_last=drop_last,
                                  megabatch_factor=4) for r in range(2)]
    orders = [list(s) for s in ranks]
    assert len(orders[0]) == len(orders[1]) == len(ranks[0]) == len(ranks[1])
    assert len(orders[0]) % 8 == 0
    together = orders[0] + orders[1]
    if drop_last:
        assert len(together) == 192 and len(set(together)) == 192
    else:
        assert set(together) == set(range(203)) and len(together) == 208
    per_rank_batches = [[o[i:i + 8] for i in range(0, len(o), 8)] for o in orders]
    assert per_rank_batches[0] == ranks[0].batches()
    plain = list(LengthGroupedSampler(lengths, 8, seed=5, group_by_length=False))
    random_waste = _waste([plain[i:i + 8] for i in range(0, len(plain), 8)], lengths)
    assert _waste(per_rank_batches[0] + per_rank_batches[1], lengths) < 0.5 * random_waste


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 120), batch=st.integers(1, 9), replicas=st.integers(1, 4), drop=st.booleans(),
       shuffle=st.booleans(), group=st.booleans(), epoch=st.integers(0, 3))
def test_sampler_properties(n: int, batch: int, replicas: int, drop: bool, shuffle: bool, group: bool,
                            epoch: int) -> None:
    lengths = [(i * 7919) % 97 for i in range(n)]
    samplers = [LengthGroupedSampler(lengths, batch, shuffle=shuffle, group_by_length=group, seed=1,
                                     num_replicas=replicas, rank=r, drop_last=drop, megabatch_factor=3)
                for r in range(replicas)]
    for s in samplers:
        s.set_epoch(epoch)
    orders = [list(s) for s in samplers]
    assert all(len(o) == len(s) for o, s in zip(orders, samplers, strict=True))
    assert len({len(o) for o in orders}) == 1
    together = [i for o in orders for i in o]
    if drop:
        assert len(set(together)) == len(together) == n // (replicas * batch) * replicas * batch
    elif replicas == 1:
        assert sorted(together) == list(range(n))
    else:
        assert set(together) == set(range(n)) and len(together) % (replicas * batch) == 0


def test_length_sorted_batches() -> None:
    lengths = [3, 9, 1, 9, 4, 7, 2]
    batches = length_sorted_batches(lengths, 3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(7)) and [len(b) for b in batches] == [3, 3, 1]
    assert flat == [1, 3, 5, 4, 0, 6, 2]  # longest first, ties in input order
    assert length_sorted_batches([], 4) == []


# --- labelled files ------------------------------------------------------------------------


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_csv_with_custom_columns(tmp_path: Path) -> None:
    content = 'id,body,category\n1,"hello, world",pos\n2,"two\nlines",neg\n\n3,x, pos \n'
    path = _write(tmp_path / "d.csv", content)
    texts, labels = load_labelled_file(path, text_column="body", label_column="category")
    assert texts == ["hello, world", "two\nlines", "x"]
    assert labels == ["pos", "neg", "pos"]


@pytest.mark.parametrize("suffix", [".tsv", ".tab"])
def test_tsv(tmp_path: Path, suffix: str) -> None:
    path = _write(tmp_path / f"d{suffix}", "label\ttext\n1\tfirst, with comma\n2\tsecond\n")
    assert load_labelled_file(path) == (["first, with comma", "second"], ["1", "2"])


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_jsonl(tmp_path: Path, suffix: str) -> None:
    lines = [{"t": "a\u2028b", "y": 1}, {"t": "c", "y": "x"}, {"t": "d", "y": 2.5, "extra": True}]
    content = "\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\n\n"
    path = _write(tmp_path / f"d{suffix}", content)
    assert load_labelled_file(path, "t", "y") == (["a\u2028b", "c", "d"], ["1", "x", "2.5"])


def test_utf8_bom_and_invalid_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", b"\xef\xbb\xbftext,label\ncaf\xe9 \xff,a\nok,b\n")
    with pytest.warns(DataWarning, match="replaced 2 bytes"):
        texts, labels = load_labelled_file(path)
    assert texts == ["caf\ufffd \ufffd", "ok"] and labels == ["a", "b"]


def test_empty_texts_are_skipped_with_a_warning(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "text,label\n   ,a\nkeep,b\n,c\nalso,a\n")
    with pytest.warns(DataWarning, match="skipped 2 rows"):
        assert load_labelled_file(path) == (["keep", "also"], ["b", "a"])
    all_empty = _write(tmp_path / "e.csv", "text,label\n ,a\n,b\n")
    with pytest.raises(DataError, match="all 2 rows have an empty text"):
        load_labelled_file(all_empty)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("empty.csv", "", "is empty"),
    ("blank.jsonl", "\n\n", "is empty"),
    ("header.csv", "text,label\n", "no data rows"),
    ("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c" "label"}\n',
     "line 3 is not valid JSON"),
    ("list.jsonl", '["text", "label"]\n', "line 1 is a JSON list"),
    ("fields.csv", "text,label\na,b\nc,d,e\n", "line 3 has 3 fields"),
    ("cols.csv", "body,category\na,b\n", "no column 'text'; the header has columns 'body', 'category'"),
    ("cols.jsonl", '{"body": "a", "label": "x"}\n', "no 'text' key; its keys are 'body', 'label'"),
    ("nolabel.csv", "text,label\na,x\nb,\n", "row 2 \\(line 3\\) has no value in label column 'label'"),
    ("nolabel.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', "line 2 has no value in label"),
    ("nulllabel.jsonl", '{"text": "a", "label": null}\n', "line 1 has no value in label"),
    ("data.txt", "text,label\na,b\n", "unsupported file type '.txt'; use one of .csv, .tsv"),
])
def test_labelled_file_errors(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = _write(tmp_path / name, content)
    with pytest.raises(DataError, match=message) as info:
        load_labelled_file(path)
    assert "\n" not in str(info.value)


def test_iter_text_column_streams_every_row(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "c.csv", 'body,x\n"one, two",1\n,2\nthree,3\n')
    assert list(iter_text_column(csv_path, "body")) == ["one, two", "", "three"]  # empty rows kept
    jsonl = _write(tmp_path / "c.jsonl", '{"text": "a"}\n{"text": null}\n\n{"text": 5}\n')
    assert list(iter_text_column(jsonl)) == ["a", "", "5"]
    lazy = iter_text_column(tmp_path / "nope.jsonl")  # a generator: errors come on iteration
    with pytest.raises(DataError, match="not found"):
        next(lazy)
    with pytest.raises(DataError, match="no column 'text'; the header has columns 'body', 'x'"):
        next(iter_text_column(csv_path))
    bad = _write(tmp_path / "b.tsv", b"text\nfine\nbad \xff\n")
    with pytest.warns(DataWarning, match="replaced 1 bytes"):
        assert list(iter_text_column(bad)) == ["fine", "bad \ufffd"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_labelled_file(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="not found"):
        load_dataset_splits(DataSource(train_file=tmp_path / "missing.jsonl"))


# --- splits --------------------------------------------------------------------------------


def _labelled_csv(path: Path, counts: dict[str, int]) -> Path:
    rows = ["text,label"] + [f"doc {label} {i},{label}" for label, n in counts.items() for i in range(n)]
    return _write(path, "\n".join(rows) + "\n")


def test_splits_from_file_are_stratified_and_seeded(tmp_path: Path) -> None:
    path = _labelled_csv(tmp_path / "d.csv", {"b": 50, "a": 30, "10": 20})
    splits = load_dataset_splits(DataSource(train_file=path, test_ratio=0.2, seed=1))
    assert splits.label_names == ["10", "a", "b"]  # sorted as strings
    assert len(splits.train) == 80 and len(splits.test) == 20
    assert Counter(splits.test.labels) == {2: 10, 1: 6, 0: 4}
    assert not set(splits.train.texts) & set(splits.test.texts)
    again = load_dataset_splits(DataSource(train_file=path, test_ratio=0.2, seed=1))
    other = load_dataset_splits(DataSource(train_file=path, test_ratio=0.2, seed=2))
    assert again.test.texts == splits.test.texts and other.test.texts != splits.test.texts
    assert json.loads(json.dumps(splits.source)) == splits.source


def test_splits_with_test_file_and_round_trip(tmp_path: Path) -> None:
    train = _write(tmp_path / "train.jsonl", "".join(json.dumps({"text": f"t{i}", "label": i % 3}) + "\n"
                                                     for i in range(12)))
    test = _write(tmp_path / "test.tsv", "text\tlabel\nx\t2\ny\t0\n")
    splits = load_dataset_splits(DataSource(train_file=train, test_file=test))
    assert len(splits.train) == 12 and splits.test.texts == ["x", "y"] and splits.test.labels == [2, 0]
    assert splits.source["test_file"] == str(test.resolve())
    rebuilt = splits_from_source(json.loads(json.dumps(splits.source)))
    assert isinstance(rebuilt, DatasetSplits)
    assert rebuilt.train == splits.train and rebuilt.test == splits.test
    assert rebuilt.label_names == splits.label_names
    no_test = load_dataset_splits(DataSource(train_file=train, test_ratio=0.25, seed=3))
    assert splits_from_source(no_test.source).test == no_test.test
    _write(train, train.read_text() + json.dumps({"text": "new", "label": 1}) + "\n")
    with pytest.warns(DataWarning, match="changed since"):
        splits_from_source(splits.source)
    with pytest.raises(DataError, match="unknown dataset source kind"):
        splits_from_source({"kind": "parquet"})


def test_20newsgroups_source_round_trip(news: dict[str, TextDataset], archive_path: Path) -> None:
    splits = load_dataset_splits(DataSource(data_dir=archive_path, strip=["headers"]))
    assert splits.source["kind"] == "20newsgroups" and splits.source["strip"] == ["headers"]
    assert splits.label_names == NEWSGROUPS
    rebuilt = splits_from_source(json.loads(json.dumps(splits.source)))
    assert rebuilt.test.texts == splits.test.texts and rebuilt.train.labels == news["train"].labels


def test_data_source_holds_the_configs_data_fields_and_its_rules() -> None:
    """DataSource.of reads a Config's data fields; the train_file/test_file/dataset rule is the Config's own."""
    import dataclasses

    from gpt2clf.config import DATASET_FIELDS, Config
    from gpt2clf.errors import ConfigError

    config = Config(train_file="a.csv", text_column=["subject", "body"], multi_label=True, test_ratio=0.3, seed=7)
    source = DataSource.of(config)
    assert (source.train_file, source.text_column, source.multi_label, source.test_ratio, source.seed) == (
        "a.csv", ["subject", "body"], True, 0.3, 7)
    assert set(DATASET_FIELDS) < {f.name for f in dataclasses.fields(DataSource)} <= set(Config.__dataclass_fields__)
    for bad in ({"test_file": "t.csv"}, {"train_file": "a.csv", "dataset": "imdb"}):
        with pytest.raises(DataError) as refused_here:
            DataSource(**bad)
        with pytest.raises(ConfigError) as refused_by_config:
            Config(**bad).validate()
        assert str(refused_here.value) == str(refused_by_config.value)


def test_split_errors(tmp_path: Path) -> None:
    one_class = _labelled_csv(tmp_path / "one.csv", {"a": 5})
    with pytest.raises(DataError, match="at least 2"):
        load_dataset_splits(DataSource(train_file=one_class))
    train = _labelled_csv(tmp_path / "train.csv", {"a": 5, "b": 5})
    test = _labelled_csv(tmp_path / "test.csv", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match="'zebra' do not occur in the train file"):
        load_dataset_splits(DataSource(train_file=train, test_file=test))
    with pytest.raises(DataError, match="test_file needs train_file"):
        load_dataset_splits(DataSource(test_file=test))


def test_stratified_split_and_subset() -> None:
    labels = [0] * 60 + [1] * 30 + [2] * 9 + [3]  # class 3 has one member: unstratified fallback
    ds = TextDataset([f"d{i}" for i in range(100)], labels, ["a", "b", "c", "d"])
    rest, held = stratified_split(ds, 0.3, seed=0)
    assert len(rest) == 70 and len(held) == 30
    assert sorted(rest.texts + held.texts) == sorted(ds.texts)
    stratified = ds.subset(range(99))
    rest, held = stratified_split(stratified, 0.2, seed=0)
    assert Counter(held.labels) == {0: 12, 1: 6, 2: 2}
    assert rest.texts == sorted(rest.texts, key=lambda t: int(t[1:]))  # order kept
    sub = stratified_subset(stratified, 33, seed=0)
    assert len(sub) == 33 and Counter(sub.labels) == {0: 20, 1: 10, 2: 3}
    assert stratified_subset(ds, None, 0) is ds and stratified_subset(ds, 500, 0) is ds
    assert len(stratified_subset(ds, 2, seed=0)) == 2  # fewer than the classes: still 2 docs
    with pytest.raises(DataError):
        stratified_split(ds, 1.5, 0)


# --- statistics ----------------------------------------------------------------------------


def test_dataset_stats_and_plot(news: dict[str, TextDataset], tokenizer, tmp_path: Path) -> None:
    splits = DatasetSplits(train=stratified_subset(news["train"], 300, 0),
                           test=stratified_subset(news["test"], 100, 0),
                           label_names=NEWSGROUPS, source={"kind": "20newsgroups"})
    stats = dataset_stats(splits, tokenizer, max_length=256)
    assert isinstance(stats, DatasetStats)
    assert stats["num_classes"] == 20 and stats["label_names"] == NEWSGROUPS
    assert stats["max_length"] == 256 and stats["tokenizer"].endswith("gpt2-tokenizer")
    text = json.dumps(stats)
    assert len(text) < 10_000  # raw lengths stay out of the JSON
    for name, ds in (("train", splits.train), ("test", splits.test)):
        info = stats["splits"][name]
        assert info["documents"] == len(ds)
        assert list(info["per_class"]) == NEWSGROUPS and sum(info["per_class"].values()) == len(ds)
        tokens = info["tokens"]
        assert tokens["min"] <= tokens["p50"] <= tokens["p90"] <= tokens["p99"] <= tokens["max"]
        assert 0.0 < tokens["over_max_length"] < 1.0
        lengths = np.asarray(stats.lengths[name])
        assert len(lengths) == len(ds) and tokens["max"] > 256  # measured without truncation
        assert tokens["over_max_length"] == pytest.approx((lengths > 256).mean())
        assert 250 < tokens["p50"] < 500  # 20 Newsgroups posts: median ~370 GPT-2 tokens

    png = tmp_path / "plots" / "stats.png"
    plot_dataset_stats(stats, png)
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    plain = tmp_path / "plain.png"
    plot_dataset_stats(json.loads(text), plain)  # without lengths: class chart only
    assert plain.read_bytes().startswith(b"\x89PNG")
    assert not [p for p in png.parent.iterdir() if p.name != "stats.png"]  # atomic write left no temp


def test_no_output_and_no_stray_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _labelled_csv(tmp_path / "d.csv", {"a": 4, "b": 4})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset_splits(DataSource(train_file=path, test_ratio=0.25))
    assert capsys.readouterr() == ("", "")
