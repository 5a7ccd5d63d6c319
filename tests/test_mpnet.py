"""Every path with an MPNet backbone (all-mpnet-base-v2's architecture), over a tiny random MPNet.

MPNet differs from GPT-2 where it matters to gpt2clf: its pad id is 1, its learned positions
are numbered from pad id + 1 (like RoBERTa), its attention also adds a relative position bias,
and its tokenizer wraps every window in ``<s> ... </s>``. The tokenizer here is transformers'
own ``MPNetTokenizer`` (the class all-mpnet-base-v2 loads: lower-casing BERT normaliser,
WordPiece, ``<s>``/``</s>`` template) built from a 96-entry vocabulary (the task's words, letters
and ``##`` letter pieces) with MPNet's special ids (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2), so no
405 MB download is needed. The GPT-2 tokenizer in ../shared would have tested none of this.

Three training runs cover each recipe, long-document mode and pooling at least once:

===  ======================  =========  =========  =======  ======  =======
run  training                documents  pooling    padding  fusion  through
===  ======================  =========  =========  =======  ======  =======
A    frozen (feature cache)  truncate   attention  left     none    fit
B    top 1 layer (cache)     head-tail  mean       right    tfidf   CLI
C    full fine-tuning        chunks     last       right    none    fit
===  ======================  =========  =========  =======  ======  =======

A is then exported to ONNX, served, explained and loaded the fast way (no transformers); B
is evaluated and reported; C predicts long documents alone and together. Padding invariance
of the bare model (left and right, alone and batched, every pooling) is tested with the other
families in ``tests/test_model.py``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

import keyword_corpus as corpus
from gpt2clf import Config, fit
from gpt2clf.cli import main
from gpt2clf.data.batching import Windowing, encode_documents, load_tokenizer, tokenize_texts
from gpt2clf.data.json_tokenizer import JsonTokenizer, load_json_tokenizer
from gpt2clf.data.newsgroups import load_20newsgroups
from gpt2clf.data.splits import labelled_texts
from gpt2clf.infer.predictor import Predictor
from gpt2clf.model.backbone import BackboneAdapter, backbone_from_config
from gpt2clf.model.classifier import GPT2Classifier
from gpt2clf.model.mpnet_body import MPNetBody, native_mpnet_reason
from gpt2clf.report.explain import explain
from gpt2clf.serve.app import ServeSettings, create_app

KEYWORDS = {"sport": "goal", "tech": "kernel", "food": "pasta"}
FILLER = corpus.FILLER[:16]  # also the toy tokenizer's words
SPECIALS = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]  # MPNet's ids 0-4: pad id 1
LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
MAX_LENGTH = 24


def keyword_texts(n: int, seed: int, words: tuple[int, int] = (3, 14)) -> tuple[list[str], list[str]]:
    """Filler words with the class keyword at a random place: only the keyword tells the class."""
    return corpus.keyword_texts(n, KEYWORDS, FILLER, words, seed=seed)


@pytest.fixture(scope="module")
def mpnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random MPNet with its tokenizer in one folder, as all-mpnet-base-v2 ships."""
    vocab = [*SPECIALS, *FILLER, *KEYWORDS.values(), *LETTERS, *(f"##{c}" for c in LETTERS)]
    tokenizer = MPNetTokenizer(vocab={token: i for i, token in enumerate(dict.fromkeys(vocab))},
                               model_max_length=128)
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=130)
    folder = tmp_path_factory.mktemp("mpnet")
    MPNetModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def small_config(backbone: Path, **changes) -> Config:
    values = dict(backbone=str(backbone), max_length=MAX_LENGTH, epochs=4, batch_size=16, n_embed=32, n_heads=2,
                  n_blocks=1, head_learning_rate=1e-2, learning_rate=1e-3, precision="32-true",
                  warmup_ratio=0.0, seed=0)
    values.update(changes)
    return Config(**values)


def probabilities(folder: Path, texts: list[str]) -> torch.Tensor:
    return Predictor.from_folder(folder, device="cpu", precision="32-true").predict_proba(texts)


# --- the three runs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frozen_run(mpnet_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Run A: frozen backbone, truncate, attention pooling, left padding; saved to a folder."""
    texts, labels = keyword_texts(150, seed=0)
    test_texts, test_labels = keyword_texts(30, seed=1)
    data = labelled_texts(texts, labels, test_texts=test_texts, test_labels=test_labels)
    result = fit(small_config(mpnet_dir, freeze="backbone", pooling="attention", padding_side="left", epochs=8),
                 data)
    folder = tmp_path_factory.mktemp("mpnet-frozen") / "model"
    result.save(folder)
    return result, folder, test_texts


@pytest.fixture(scope="module")
def top_layer_run(mpnet_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run B, through the CLI: the top layer trained from cached layer-1 states, head-tail, mean pooling, TF-IDF."""
    root = tmp_path_factory.mktemp("mpnet-top")
    texts, labels = keyword_texts(150, seed=2, words=(3, 40))
    rows = ["text,label", *(f"{t},{y}" for t, y in zip(texts, labels, strict=True))]
    (root / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    code = main(["train", "--train-file", str(root / "train.csv"), "--backbone", str(mpnet_dir),
                 "--max-length", str(MAX_LENGTH), "--train-top-layers", "1", "--long-documents", "head-tail",
                 "--pooling", "mean", "--fusion", "tfidf", "--validation-ratio", "0.2", "--epochs", "3",
                 "--batch-size", "16", "--n-embed", "32", "--n-heads", "2", "--n-blocks", "1",
                 "--precision", "32-true", "--no-progress", "--no-report", "--output", str(root / "run")])
    assert code == 0
    return root / "run"


@pytest.fixture(scope="module")
def full_run(mpnet_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Run C: full fine-tuning, chunks of 24 tokens (at most 3), last-token pooling; saved to a folder."""
    texts, labels = keyword_texts(90, seed=3, words=(3, 50))
    test_texts, test_labels = keyword_texts(12, seed=4, words=(30, 60))
    data = labelled_texts(texts, labels, test_texts=test_texts, test_labels=test_labels)
    result = fit(small_config(mpnet_dir, freeze="none", long_documents="chunks", max_chunks=3, pooling="last",
                              epochs=2), data)
    folder = tmp_path_factory.mktemp("mpnet-full") / "model"
    result.save(folder)
    return result, folder, test_texts


# --- training ---------------------------------------------------------------------------------
def test_max_length_is_limited_to_the_positions_after_the_offset(mpnet_dir: Path) -> None:
    """130 position embeddings, real tokens numbered from pad id + 1 = 2: 128 tokens fit, 129 are refused."""
    from gpt2clf.errors import ConfigError
    from gpt2clf.training.inputs import build_model

    assert build_model(small_config(mpnet_dir, max_length=128), ["a", "b"]).adapter.max_positions == 128
    with pytest.raises(ConfigError, match="max_length 129 is more than the backbone's 128 positions"):
        build_model(small_config(mpnet_dir, max_length=129), ["a", "b"])


def test_frozen_mpnet_learns_and_its_folder_reproduces_the_cached_run(frozen_run) -> None:
    result, folder, test_texts = frozen_run
    assert result.model.backbone.config.model_type == "mpnet"
    assert result.metrics["test"]["accuracy"] >= 0.8, result.metrics  # chance: 1/3
    assert all(not p.requires_grad for p in result.model.backbone.parameters())
    # Training scored the test set from float16-cached backbone states; the folder runs MPNet afresh.
    torch.testing.assert_close(probabilities(folder, test_texts), result.test_probabilities, atol=2e-3, rtol=0)


def test_top_layer_run_trains_only_the_top_layer_and_its_cache_matches_a_fresh_pass(top_layer_run: Path,
                                                                                   mpnet_dir: Path) -> None:
    metrics = json.loads((top_layer_run / "metrics.json").read_text())
    assert metrics["fusion"]["components"]["test"]["network"]["documents"] == metrics["test"]["documents"]
    model = GPT2Classifier.from_pretrained(top_layer_run / "model")
    original = MPNetModel.from_pretrained(mpnet_dir)
    layers = BackboneAdapter(model.backbone).layers()
    assert torch.equal(layers[0].attention.attn.q.weight, original.encoder.layer[0].attention.attn.q.weight)
    assert not torch.equal(layers[1].attention.attn.q.weight, original.encoder.layer[1].attention.attn.q.weight)
    # The cached path (layer-1 states, then the top layer) equals one full pass, to float rounding.
    ids = torch.tensor([[0, 7, 30, 9, 2], [0, 11, 2, 1, 1]])
    mask = (ids != 1).long()
    adapter = BackboneAdapter(model.backbone)
    with torch.no_grad():
        split = adapter.from_layer(adapter.hidden_states(ids, mask, num_layers=1), mask, 1)
        whole = adapter.hidden_states(ids, mask)
    torch.testing.assert_close(split[mask.bool()], whole[mask.bool()], atol=1e-5, rtol=0)


def test_full_fine_tuning_changes_the_backbone_and_reloads_exactly(full_run, mpnet_dir: Path) -> None:
    result, folder, test_texts = full_run
    original = MPNetModel.from_pretrained(mpnet_dir)
    trained = result.model.backbone
    assert not torch.equal(trained.embeddings.word_embeddings.weight, original.embeddings.word_embeddings.weight)
    assert not torch.equal(trained.encoder.layer[0].output.dense.weight, original.encoder.layer[0].output.dense.weight)
    # No feature cache when fine-tuning: training's test probabilities come from the same forward pass.
    torch.testing.assert_close(probabilities(folder, test_texts), result.test_probabilities, atol=1e-5, rtol=0)


def test_chunked_documents_predict_the_same_alone_and_together(full_run) -> None:
    _, folder, test_texts = full_run
    predictor = Predictor.from_folder(folder, device="cpu", precision="32-true")
    assert predictor.windowing.mode == "chunks"
    tokens = predictor.tokenizer(test_texts[0], add_special_tokens=False)["input_ids"]
    assert len(tokens) > MAX_LENGTH  # this text really is read in several windows
    alone = torch.cat([predictor.predict_proba([t]) for t in test_texts[:4]])
    torch.testing.assert_close(predictor.predict_proba(test_texts[:4]), alone, atol=1e-5, rtol=0)


# --- evaluate, predict, report ----------------------------------------------------------------------
def test_evaluate_reproduces_the_runs_fused_test_figures(top_layer_run: Path, capsys) -> None:
    assert main(["evaluate", str(top_layer_run / "model"), "--json", "--precision", "32-true"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    recorded = json.loads((top_layer_run / "metrics.json").read_text())["test"]
    assert evaluated["num_documents"] == recorded["documents"]
    assert evaluated["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-9)
    assert evaluated["loss"] == pytest.approx(recorded["loss"], abs=2e-3)  # cache (float16) vs fresh pass
    assert set(evaluated["components"]) >= {"network", "tfidf"}


def test_report_is_written_for_the_mpnet_run(top_layer_run: Path) -> None:
    assert main(["report", str(top_layer_run)]) == 0
    page = (top_layer_run / "report.html").read_text(encoding="utf-8")
    assert "mpnet" in page.lower() and "head-tail" in page and "tfidf" in page.lower()


def test_predict_cli_json_matches_the_predictor(frozen_run, capsys) -> None:
    _, folder, test_texts = frozen_run
    assert main(["predict", str(folder), *test_texts[:3], "--json", "--precision", "32-true"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = probabilities(folder, test_texts[:3])
    names = list(rows[0]["probabilities"])
    got = torch.tensor([[row["probabilities"][n] for n in names] for row in rows])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


# --- serve, explain ---------------------------------------------------------------------------------
def test_serve_classifies_and_explains_like_the_predictor(frozen_run) -> None:
    _, folder, test_texts = frozen_run
    predictor = Predictor.from_folder(folder, device="cpu", precision="32-true")
    expected = predictor.predict_proba(test_texts[:4])
    with TestClient(create_app(predictor, ServeSettings(), model_dir=folder)) as client:
        info = client.get("/v1/model").json()
        assert info["labels"] == predictor.label_names and info["max_length"] == MAX_LENGTH
        response = client.post("/v1/classify", json={"texts": test_texts[:4]})
        assert response.status_code == 200, response.text
        explained = client.post("/v1/explain", json={"text": test_texts[0], "steps": 8})
        assert explained.status_code == 200, explained.text
    got = torch.tensor([[p["probabilities"][n] for n in predictor.label_names]
                        for p in response.json()["predictions"]])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert explained.json()["tokens"][0] == "<s>" and explained.json()["tokens"][-1] == "</s>"


@pytest.mark.parametrize("method", ["integrated-gradients", "attention"])
def test_explain_points_at_the_keyword(frozen_run, method: str) -> None:
    _, folder, _ = frozen_run
    predictor = Predictor.from_folder(folder, device="cpu", precision="32-true")
    texts, labels = keyword_texts(4, seed=9)
    hits = 0
    for text, label in zip(texts, labels, strict=True):
        exp = explain(predictor, text, method=method, steps=16)
        assert exp.tokens[0] == "<s>" and exp.tokens[-1] == "</s>" and len(exp.attributions) == len(exp.tokens)
        if method == "integrated-gradients":
            # Completeness: the attributions add up to the logit difference from the all-pad baseline.
            assert abs(sum(exp.attributions) - exp.logit_difference) <= 0.05 * abs(exp.logit_difference) + 1e-3
        if exp.label == label:
            top = max(range(len(exp.tokens)), key=lambda i: abs(exp.attributions[i]))
            hits += exp.tokens[top] == KEYWORDS[label]
    if method == "integrated-gradients":
        assert hits >= 3, hits


# --- ONNX -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_export(frozen_run) -> dict:
    _, folder, _ = frozen_run
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["export", str(folder), "--format", "onnx", "--json", "--check-texts", "goal of the kernel"]) == 0
    return json.loads(out.getvalue())


def test_onnx_export_matches_torch_with_left_padding(onnx_export: dict) -> None:
    assert onnx_export["padding_side"] == "left"
    assert onnx_export["max_abs_probability_diff"] <= 1e-4
    assert len({tuple(shape) for shape in onnx_export["batch_shapes_checked"]}) >= 2


def test_predict_runtime_onnx_matches_torch(frozen_run, onnx_export: dict, capsys) -> None:
    _, folder, test_texts = frozen_run
    texts = [*test_texts[:5], "a", " ".join(["pasta"] * 40)]  # different lengths: padded left in one batch
    rows = {}
    for runtime in ("torch", "onnx"):
        assert main(["predict", str(folder), *texts, "--json", "--runtime", runtime, "--precision", "32-true"]) == 0
        rows[runtime] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = list(rows["torch"][0]["probabilities"])
    torch_p, onnx_p = (np.array([[r["probabilities"][n] for n in names] for r in rows[k]]) for k in ("torch", "onnx"))
    assert torch_p.shape == (len(texts), 3)
    assert np.abs(torch_p - onnx_p).max() <= 1e-4


# --- fast start: MPNet without transformers ----------------------------------------------------------
def saved_config(config: MPNetConfig) -> dict:
    return json.loads(config.to_json_string(use_diff=False))


def test_native_mpnet_body_gives_transformers_hidden_states() -> None:
    torch.manual_seed(0)
    # 160 slots: distances past 128, the last logarithmic bucket, are in play.
    config = MPNetConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=170)
    reference = MPNetModel(config).eval()
    native = MPNetBody(saved_config(config))
    native.load_state_dict(reference.state_dict(), strict=True)
    native.eval()
    ours, theirs = BackboneAdapter(native), BackboneAdapter(reference)
    assert ours.describe_positions() == theirs.describe_positions()  # the same feature-cache key part
    ids = torch.randint(3, 120, (4, 160), generator=torch.Generator().manual_seed(1))
    for side in ("right", "left"):
        mask = torch.ones_like(ids)
        for row, n in enumerate((160, 90, 7, 1)):
            if side == "right":
                mask[row, n:] = 0
            else:
                mask[row, :160 - n] = 0
        real = mask.bool()
        with torch.no_grad():
            full = ours.hidden_states(ids, mask)
            assert torch.isfinite(full).all()
            torch.testing.assert_close(full[real], theirs.hidden_states(ids, mask)[real], atol=1e-5, rtol=0)
            lower = ours.hidden_states(ids, mask, num_layers=2)
            torch.testing.assert_close(lower[real], theirs.hidden_states(ids, mask, num_layers=2)[real], atol=1e-5,
                                       rtol=0)
            torch.testing.assert_close(ours.from_layer(lower, mask, 2)[real], full[real], atol=1e-5, rtol=0)
    with torch.no_grad():  # no position ids: MPNet's own numbering from the pad id
        torch.testing.assert_close(native(ids)[0], reference(input_ids=ids).last_hidden_state, atol=1e-5, rtol=0)


@pytest.mark.parametrize("change", [{"hidden_act": "relu"}, {"relative_attention_num_buckets": 16}])
def test_mpnet_options_the_native_body_lacks_go_through_transformers(change: dict) -> None:
    config = saved_config(MPNetConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=40, **change))
    assert native_mpnet_reason(config) is not None
    assert type(backbone_from_config(config, origin="test", native=True)).__name__ == "MPNetModel"


def test_json_tokenizer_gives_the_mpnet_tokenizers_ids_on_real_posts(mpnet_dir: Path, archive_path: Path) -> None:
    fast, slow = load_json_tokenizer(mpnet_dir), load_tokenizer(str(mpnet_dir))
    assert isinstance(fast, JsonTokenizer) and type(slow).__name__.startswith("MPNetTokenizer")
    texts = [*load_20newsgroups("test", archive_path).texts[:60], "", " ", "caf\u00e9 \U0001f600", "lone \ud800 half"]
    for max_length in (1, 2, 3, 16, 128):  # below the two special tokens tokenizers does not truncate
        assert tokenize_texts(texts, fast, max_length) == tokenize_texts(texts, slow, max_length)
    for windowing in (Windowing(16, "chunks", max_chunks=3), Windowing(16, "head-tail")):
        assert encode_documents(texts, fast, windowing) == encode_documents(texts, slow, windowing)
    assert (fast.pad_token_id, fast.eos_token_id) == (slow.pad_token_id, slow.eos_token_id) == (1, 2)
    for text in texts[:10]:
        assert fast(text, return_offsets_mapping=True, truncation=True, max_length=20)["offset_mapping"] == \
            [tuple(span) for span in slow(text, return_offsets_mapping=True, truncation=True,
                                          max_length=20)["offset_mapping"]]


def test_fast_start_mpnet_predictor_gives_the_same_probabilities(frozen_run) -> None:
    _, folder, test_texts = frozen_run
    texts = [*test_texts[:8], "a", ""]
    fast = Predictor.from_folder(folder, precision="32-true")
    slow = Predictor.from_folder(folder, precision="32-true", fast_start=False)
    assert isinstance(fast.model.backbone, MPNetBody) and isinstance(fast.tokenizer, JsonTokenizer)
    assert type(slow.model.backbone).__name__ == "MPNetModel"
    assert fast.tokenizer.padding_side == "left"
    torch.testing.assert_close(fast.predict_proba(texts), slow.predict_proba(texts), atol=1e-5, rtol=0)


def test_a_one_text_mpnet_predict_process_never_imports_transformers(frozen_run) -> None:
    _, folder, _ = frozen_run
    probe = (
        "import sys, json\n"
        "from gpt2clf.cli import main\n"
        "code = main(['predict', sys.argv[1], 'the goal', '--json'])\n"
        "heavy = sorted(m for m in ('transformers', 'lightning', 'sklearn', 'scipy') if m in sys.modules)\n"
        "print(json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", probe, str(folder)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert json.loads(done.stderr.strip().splitlines()[-1]) == {"code": 0, "heavy": []}, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["label"] in KEYWORDS
