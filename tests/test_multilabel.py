"""Multi-label classification, several text columns, Parquet files and Hugging Face datasets.

Generated data makes the answer unambiguous: each text holds zero, one or two of three
keywords, and its labels are exactly the keywords present. A tiny random GPT-2, frozen, with
attention pooling learns them in a few epochs.
"""

from __future__ import annotations

import json
import random
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpt2clf.cli import main
from gpt2clf.config import Config
from gpt2clf.data.labelled_files import iter_text_column, join_fields, load_labelled_file
from gpt2clf.data.splits import DataSource, labelled_texts, load_dataset_splits
from gpt2clf.errors import DataError
from gpt2clf.infer.evaluation import compute_multilabel_metrics, tune_thresholds
from keyword_corpus import FILLER, keyword_document

KEYWORDS = {"space": "rocket", "sport": "football", "music": "guitar"}


def keyword_rows(n: int, seed: int = 0) -> list[tuple[str, str, list[str]]]:
    """(subject, body, labels): the body holds the keywords of the labels (zero, one or two)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        labels = sorted(rng.sample(list(KEYWORDS), i % 3))
        rows.append((f"note {i}", keyword_document(rng, [KEYWORDS[label] for label in labels], FILLER, 8), labels))
    return rows


def train_flags(tokenizer_path: Path, backbone: Path, *extra: str) -> list[str]:
    return ["--backbone", str(backbone), "--tokenizer", str(tokenizer_path), "--max-length", "24", "--epochs", "8",
            "--batch-size", "16", "--freeze", "backbone", "--head-learning-rate", "1e-2", "--n-embed", "32",
            "--n-heads", "2", "--n-blocks", "1", "--pooling", "attention", "--precision", "32-true",
            "--warmup-ratio", "0", "--no-progress", *extra]


# --- data ------------------------------------------------------------------------------
def test_several_text_columns_are_joined_with_their_names_and_one_column_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "mail.csv"
    path.write_text("subject,body,label\nHello,first body,a\nAgain,,b\n,,a\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="skipped 1 rows"):
        texts, labels = load_labelled_file(path, ["subject", "body"])
    assert texts == ["subject: Hello\n\nbody: first body", "subject: Again\n\nbody: "]
    assert labels == ["a", "b"]
    with pytest.warns(UserWarning, match="skipped 1 rows whose 'subject'"):
        assert load_labelled_file(path, "subject")[0] == ["Hello", "Again"]  # one column: no "subject: " prefix
    assert list(iter_text_column(path, ["body"])) == ["first body", "", ""]
    assert join_fields(["body"], ["as is"]) == "as is"


def test_text_column_flags_repeat_and_old_string_configs_still_load(tmp_path: Path) -> None:
    old = tmp_path / "config.yaml"
    old.write_text("text_column: body\n", encoding="utf-8")
    assert Config.from_yaml(old).text_column == ["body"]
    assert Config(text_column="a,b").text_column == ["a,b"]  # column names may hold commas
    assert Config().updated(text_column=["subject", "body"]).text_column == ["subject", "body"]
    assert Config().updated(strip="headers,quotes").strip == ["headers", "quotes"]


def test_multi_label_files_read_pipes_in_csv_and_lists_in_jsonl_and_parquet(tmp_path: Path) -> None:
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text("text,label\nx,a|b\ny,\nz, b | a |b\n", encoding="utf-8")
    assert load_labelled_file(csv_path, multi_label=True)[1] == [["a", "b"], [], ["b", "a"]]
    jsonl = tmp_path / "tags.jsonl"
    jsonl.write_text('{"text": "x", "label": ["a", "b"]}\n{"text": "y", "label": []}\n', encoding="utf-8")
    assert load_labelled_file(jsonl, multi_label=True)[1] == [["a", "b"], []]
    parquet = tmp_path / "tags.parquet"
    pd.DataFrame({"t": ["x", "y", "z"], "tags": [["a", "b"], ["b"], []]}).to_parquet(parquet)
    splits = load_dataset_splits(DataSource(train_file=parquet, text_column="t", label_column="tags",
                                            multi_label=True, test_ratio=0.34))
    assert splits.label_names == ["a", "b"] and splits.train.multi_label
    assert sorted(splits.train.labels + splits.test.labels) == [(0, 0), (0, 1), (1, 1)]


def test_parquet_single_label_files_and_their_errors(tmp_path: Path) -> None:
    parquet = tmp_path / "reviews.parquet"
    pd.DataFrame({"body": ["good", "bad", None, "fine"], "stars": [5, 1, 3, 4]}).to_parquet(parquet)
    with pytest.warns(UserWarning, match="skipped 1 rows"):
        texts, labels = load_labelled_file(parquet, "body", "stars")
    assert texts == ["good", "bad", "fine"] and labels == ["5", "1", "4"]
    assert list(iter_text_column(parquet, "body")) == ["good", "bad", "", "fine"]
    with pytest.raises(DataError, match="no column 'text'; the Parquet file has columns 'body', 'stars'"):
        load_labelled_file(parquet)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_labelled_file(tmp_path / "broken.parquet")


def test_multi_label_mistakes_are_named(tmp_path: Path) -> None:
    jsonl = tmp_path / "scalar.jsonl"
    jsonl.write_text('{"text": "x", "label": ["a", "b"]}\n{"text": "y", "label": "a"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2: with --multi-label, 'label' must be a list"):
        load_labelled_file(jsonl, multi_label=True)
    single = tmp_path / "single.csv"
    single.write_text("text,label\nx,a\ny,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no row has more than one label.*did you mean single-label"):
        load_labelled_file(single, multi_label=True)
    lists = tmp_path / "lists.jsonl"
    lists.write_text('{"text": "x", "label": ["a", "b"]}\n', encoding="utf-8")
    with pytest.raises(DataError, match="pass --multi-label"):
        load_labelled_file(lists)


def test_hugging_face_datasets_are_read_through_load_dataset(monkeypatch) -> None:
    """An offline stand-in for ``datasets``: a ClassLabel column comes back as label names."""

    class ClassLabel:
        names = ("neg", "pos")

        def int2str(self, value: int) -> str:
            return self.names[value]

    class Split(dict):
        column_names = property(lambda self: list(self))
        features = property(lambda self: {"label": ClassLabel()})

    calls = []

    def load_dataset(path, name=None):
        calls.append((path, name))
        return {"train": Split(sentence=[f"text {i}" for i in range(10)], label=[i % 2 for i in range(10)]),
                "test": Split(sentence=["a", "b"], label=[1, 0])}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    splits = load_dataset_splits(DataSource(dataset="glue:sst2", text_column="sentence"))
    assert calls == [("glue", "sst2")]
    assert splits.label_names == ["neg", "pos"] and splits.test.labels == [1, 0] and len(splits.train) == 10
    assert splits.source["kind"] == "hf_dataset" and splits.source["dataset"] == "glue:sst2"
    with pytest.raises(DataError, match="has no column 'text'; its columns are 'sentence', 'label'"):
        load_dataset_splits(DataSource(dataset="glue:sst2"))


def test_dataset_without_the_datasets_library_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match="needs the Hugging Face datasets library"):
        load_dataset_splits(DataSource(dataset="imdb"))


# --- metrics ---------------------------------------------------------------------------
def test_thresholds_maximise_each_labels_f1_and_metrics_use_them() -> None:
    probs = np.array([[0.3, 0.9], [0.1, 0.8], [0.35, 0.2], [0.05, 0.6]])
    gold = [(1, 1), (0, 1), (1, 0), (0, 1)]
    thresholds = tune_thresholds(probs, gold)
    assert thresholds[0] == pytest.approx(0.3) and 0.25 < thresholds[1] <= 0.6
    at_half = compute_multilabel_metrics(probs, gold, ["a", "b"])
    tuned = compute_multilabel_metrics(probs, gold, ["a", "b"], thresholds)
    assert at_half.subset_accuracy == 0.5 and tuned.subset_accuracy == 1.0 and tuned.micro_f1 == 1.0
    assert tuned.hamming_loss == 0.0 and "micro_f1" in tuned.to_dict()
    assert "micro_f1" not in compute_multilabel_metrics.__globals__["EvaluationResult"](
        accuracy=1, macro_f1=1, loss=0, num_documents=1, label_names=["a"]).to_dict()


# --- training --------------------------------------------------------------------------
def test_fit_learns_several_labels_per_text_in_memory(tokenizer_path: Path, tiny_backbone: Path,
                                                      tmp_path: Path) -> None:
    from gpt2clf import Config, fit
    from gpt2clf.infer.predictor import Predictor

    train, test = keyword_rows(300), keyword_rows(60, seed=1)
    data = labelled_texts([b for _, b, _ in train], [y for _, _, y in train], test_texts=[b for _, b, _ in test],
                          test_labels=[y for _, _, y in test], multi_label=True)
    config = Config(backbone=str(tiny_backbone), tokenizer=str(tokenizer_path), max_length=16, epochs=12, batch_size=16,
                    freeze="backbone", head_learning_rate=1e-2, n_embed=32, n_heads=2, n_blocks=1,
                    pooling="attention", precision="32-true", warmup_ratio=0.0, multi_label=True)
    result = fit(config, data)
    test_figures = result.metrics["test"]
    # Chance: always predicting the commonest set scores subset accuracy 1/3; a coin per label 1/8.
    assert test_figures["micro_f1"] >= 0.8 and test_figures["subset_accuracy"] >= 0.6, test_figures
    assert result.test_probabilities is not None and result.test_probabilities.shape == (60, 3)
    assert len(result.thresholds or []) == 3
    result.save(tmp_path / "model")
    predictor = Predictor.from_folder(tmp_path / "model", precision="32-true")
    assert predictor.multi_label and predictor.thresholds == pytest.approx(result.thresholds)
    first, second = predictor.predict(["a rocket and a guitar on the moon", "the of and to in"])
    assert sorted(first.labels) == ["music", "space"] and second.labels == []
    assert first.to_dict()["labels"] == first.labels


def test_cli_trains_evaluates_and_predicts_multi_label_from_two_text_columns(
        tokenizer_path: Path, tiny_backbone: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = keyword_rows(300)
    data = tmp_path / "notes.csv"
    pd.DataFrame({"subject": [s for s, _, _ in rows], "body": [b for _, b, _ in rows],
                  "tags": ["|".join(y) for _, _, y in rows]}).to_csv(data, index=False)
    run = tmp_path / "run"
    assert main(["train", "--train-file", str(data), "--text-column", "subject", "--text-column", "body",
                 "--label-column", "tags", "--multi-label", "--output", str(run), *train_flags(tokenizer_path,
                                                                                               tiny_backbone)]) == 0
    assert "test micro-F1" in capsys.readouterr().out
    recorded = json.loads((run / "model" / "config.json").read_text())["extra"]
    assert recorded["config"]["text_column"] == ["subject", "body"] and set(recorded["thresholds"]) == set(KEYWORDS)

    assert main(["evaluate", str(run / "model"), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["multi_label"] and figures["num_documents"] == 60
    assert figures["micro_f1"] >= 0.8 and figures["subset_accuracy"] >= 0.6, figures

    inputs = tmp_path / "new.jsonl"
    inputs.write_text(json.dumps({"subject": "note x", "body": "a football and a rocket"}) + "\n", encoding="utf-8")
    assert main(["predict", str(run / "model"), "--input", str(inputs), "--text-column", "subject",
                 "--text-column", "body", "--json"]) == 0
    prediction = json.loads(capsys.readouterr().out)
    assert sorted(prediction["labels"]) == ["space", "sport"]
    assert set(prediction["probabilities"]) == set(KEYWORDS)
