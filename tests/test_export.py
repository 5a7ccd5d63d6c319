"""ONNX export and ``predict --runtime onnx``: parity with PyTorch, graph signature, refusals.

One tiny model is trained through the CLI (left padding, attention pooling: the harder
masking case), exported once per module, and checked three ways: onnxruntime run by hand
on the tokenized text, ``predict --runtime onnx``, and the file's own graph and metadata.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt2clf.cli import main
from keyword_corpus import keyword_document

TEXTS = [
    "goal team match",
    "the linux kernel driver crashed on my gpu after the update, what now",
    "bake the bread",
    "",
    "cheese " * 80,  # longer than max_length 32: truncated
]
WORDS = {
    "sport": ["goal", "team", "match", "score", "player", "league", "coach"],
    "tech": ["cpu", "driver", "kernel", "linux", "gpu", "memory", "code"],
    "food": ["pasta", "sauce", "bake", "oven", "recipe", "cheese", "bread"],
}
SRC = Path(__file__).parents[1] / "src"


@pytest.fixture(scope="module")
def trained_model_dir(tiny_backbone: Path, tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for 2 epochs on generated text (left padding, attention pooling)."""
    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(60):  # 3-20 words all of the class's own vocabulary, no filler
        label = list(WORDS)[i % 3]
        rows.append(keyword_document(rng, [], WORDS[label], (3, 20)) + "," + label)
    tmp = tmp_path_factory.mktemp("onnx-train")
    (tmp / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    code = main(["train", "--train-file", str(tmp / "train.csv"), "--backbone", str(tiny_backbone),
                 "--tokenizer", str(tokenizer_path), "--max-length", "32", "--epochs", "2", "--batch-size", "8",
                 "--n-embed", "32", "--n-heads", "2", "--n-blocks", "1", "--padding-side", "left",
                 "--pooling", "attention", "--output", str(tmp / "run"), "--no-progress"])
    assert code == 0
    return tmp / "run" / "model"


@pytest.fixture(scope="module")
def exported(trained_model_dir: Path) -> tuple[Path, dict]:
    """The trained model exported to its default location, with the CLI's JSON report."""
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["export", str(trained_model_dir), "--format", "onnx", "--json",
                     "--check-texts", "pasta with cheese sauce", "gpu memory"])
    assert code == 0
    return trained_model_dir / "model.onnx", json.loads(out.getvalue())


def predict_json(capsys: pytest.CaptureFixture, model_dir: Path, *extra: str) -> list[dict]:
    code = main(["predict", str(model_dir), *TEXTS, "--json", "--top-k", "3", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return [json.loads(line) for line in captured.out.splitlines()]


def test_export_report_states_parity_within_1e_3(exported: tuple[Path, dict]) -> None:
    path, report = exported
    assert path.is_file() and report["output"] == str(path)
    assert report["max_abs_probability_diff"] <= 1e-3
    assert report["texts_checked"] == 9  # 7 built-in samples + 2 --check-texts
    assert len(report["batch_shapes_checked"]) >= 2  # more than one (batch, seq) shape ran through the graph
    assert report["label_names"] == ["food", "sport", "tech"]


def test_onnxruntime_on_tokenized_text_matches_torch_predict_json(exported: tuple[Path, dict],
                                                                 trained_model_dir: Path, capsys) -> None:
    import onnxruntime as ort

    from gpt2clf.data.batching import load_tokenizer, tokenize_texts

    path, _ = exported
    tokenizer = load_tokenizer(str(trained_model_dir), padding_side="left")
    tokens = tokenize_texts(TEXTS, tokenizer, 32)
    longest = max(map(len, tokens))
    ids = np.full((len(tokens), longest), tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, t in enumerate(tokens):  # left padding, as the model was trained
        ids[row, longest - len(t):] = t
        mask[row, longest - len(t):] = 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)

    torch_rows = predict_json(capsys, trained_model_dir)
    names = list(torch_rows[0]["probabilities"])
    expected = np.array([[row["probabilities"][n] for n in names] for row in torch_rows])
    assert probs.shape == expected.shape == (len(TEXTS), 3)
    assert np.abs(probs - expected).max() <= 1e-3


def test_predict_runtime_onnx_matches_torch_output(exported: tuple[Path, dict], trained_model_dir: Path,
                                                   capsys) -> None:
    torch_rows = predict_json(capsys, trained_model_dir)
    onnx_rows = predict_json(capsys, trained_model_dir, "--runtime", "onnx", "--batch-size", "2")
    assert [r["id"] for r in onnx_rows] == [r["id"] for r in torch_rows]
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    for ours, theirs in zip(onnx_rows, torch_rows, strict=True):
        assert ours.keys() == theirs.keys()
        assert list(ours["probabilities"]) == list(theirs["probabilities"])
        for name, p in theirs["probabilities"].items():
            assert abs(ours["probabilities"][name] - p) <= 1e-3
        assert [t["label"] for t in ours["top_k"]] == [t["label"] for t in theirs["top_k"]]


def test_predict_runtime_onnx_plain_output_has_the_torch_format(exported: tuple[Path, dict],
                                                               trained_model_dir: Path, capsys) -> None:
    assert main(["predict", str(trained_model_dir), "bake the bread"]) == 0
    torch_line = capsys.readouterr().out
    assert main(["predict", str(trained_model_dir), "bake the bread", "--runtime", "onnx"]) == 0
    onnx_line = capsys.readouterr().out
    assert torch_line.split("\t")[:2] == onnx_line.split("\t")[:2]  # id and label
    assert len(onnx_line.split("\t")) == 3


def test_exported_graph_has_dynamic_int64_inputs_float_logits_and_opset_18(exported: tuple[Path, dict]) -> None:
    import onnx

    path, _ = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["input_ids", "attention_mask"]
    for kind in inputs.values():
        assert kind.elem_type == onnx.TensorProto.INT64
        dims = kind.shape.dim
        assert len(dims) == 2 and all(d.dim_param and not d.dim_value for d in dims)
    assert [d.dim_param for d in inputs["input_ids"].shape.dim] == ["batch", "seq"]
    (output,) = model.graph.output
    assert output.name == "logits" and output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch, labels = output.type.tensor_type.shape.dim
    assert batch.dim_param == "batch" and labels.dim_value == 3


def test_exported_metadata_lets_a_runtime_work_without_torch(exported: tuple[Path, dict],
                                                            trained_model_dir: Path) -> None:
    from gpt2clf.infer.onnx_runtime import read_onnx_metadata

    path, _ = exported
    meta = read_onnx_metadata(path)
    assert meta.label_names == ["food", "sport", "tech"]
    assert (meta.max_length, meta.padding_side, meta.format_version) == (32, "left", 1)
    from gpt2clf.data.batching import load_tokenizer

    assert meta.pad_token_id == load_tokenizer(str(trained_model_dir)).pad_token_id


def test_untrained_right_padded_model_exports_to_another_path(tiny_model_dir: Path, tmp_path: Path,
                                                              capsys) -> None:
    from gpt2clf.infer.export import export_onnx
    from gpt2clf.infer.onnx_runtime import OnnxPredictor
    from gpt2clf.infer.predictor import Predictor

    out = tmp_path / "deploy" / "tiny.onnx"
    report = export_onnx(tiny_model_dir, out)
    assert report.max_abs_probability_diff <= 1e-3 and report.padding_side == "right"
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.onnx"]  # no temporary files left
    onnx_probs = OnnxPredictor.from_folder(tiny_model_dir, out, batch_size=3).predict_proba(TEXTS)
    torch_probs = Predictor.from_folder(tiny_model_dir, device="cpu").predict_proba(TEXTS).numpy()
    assert np.abs(onnx_probs - torch_probs).max() <= 1e-3


def test_export_wrapper_matches_model_forward_for_every_pooling(tiny_backbone: Path) -> None:
    import torch

    from gpt2clf.infer.export import _export_wrapper
    from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier

    torch.manual_seed(0)
    ids = torch.randint(0, 500, (3, 7))
    padded = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [0] * 5 + [1] * 2])
    for pooling in ("last", "mean", "attention"):
        spec = ClassifierSpec(num_labels=2, n_embed=32, n_heads=2, n_blocks=2, pooling=pooling)
        model = GPT2Classifier.from_backbone(str(tiny_backbone), spec).eval()
        wrapper = _export_wrapper(model)
        with torch.no_grad():
            for mask in (torch.ones_like(ids), padded):
                torch.testing.assert_close(wrapper(ids, mask), model(ids, mask), rtol=1e-5, atol=1e-6)


def test_export_that_does_not_match_torch_is_refused_and_the_old_file_kept(
        exported: tuple[Path, dict], tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A wrong graph (the trained model's, for the untrained folder) fails parity: nothing replaces OUTPUT."""
    import gpt2clf.infer.export as export_module

    wrong_graph, _ = exported
    monkeypatch.setattr(export_module, "_export_graph",
                        lambda model, tokens, metadata, path, opset: shutil.copyfile(wrong_graph, path))
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")
    with pytest.raises(export_module.ExportError, match=r"does not match PyTorch: max \|Δprobability\|"):
        export_module.export_onnx(tiny_model_dir, out)
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary files left


def copy_with_config(model_dir: Path, dest: Path, **config: object) -> Path:
    shutil.copytree(model_dir, dest)
    meta = json.loads((dest / "config.json").read_text())
    meta["extra"].setdefault("config", {}).update(config)
    (dest / "config.json").write_text(json.dumps(meta))
    return dest


@pytest.fixture
def bad_inputs(tiny_model_dir: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    chunked = copy_with_config(tiny_model_dir, tmp_path / "chunked", long_documents="chunks")
    fused = copy_with_config(tiny_model_dir, tmp_path / "fused", fusion="tfidf")
    no_onnx = copy_with_config(tiny_model_dir, tmp_path / "plain")
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(b"not a protobuf")
    return {
        "unknown format": (["export", str(tiny_model_dir), "--format", "tflite"], "unknown export --format"),
        "opset below 18": (["export", str(tiny_model_dir), "--opset", "17"], "--opset must be 18"),
        "chunked long documents": (["export", str(chunked)], "long_documents='chunks'"),
        "tf-idf fusion": (["export", str(fused), "--format", "onnx"], "fusion='tfidf'"),
        "missing model folder": (["export", str(tmp_path / "nope")], "not found"),
        "missing onnx file": (["predict", str(no_onnx), "x", "--runtime", "onnx"], "no ONNX model at"),
        "missing --onnx-model": (["predict", str(tiny_model_dir), "x", "--runtime", "onnx", "--onnx-model",
                                  str(tmp_path / "none.onnx")], "no ONNX model at"),
        "not an onnx file": (["predict", str(tiny_model_dir), "x", "--runtime", "onnx", "--onnx-model",
                              str(not_onnx)], "onnxruntime cannot load"),
        "unknown runtime": (["predict", str(tiny_model_dir), "x", "--runtime", "tensorrt"], "unknown --runtime"),
        "onnx with int8": (["predict", str(tiny_model_dir), "x", "--runtime", "onnx", "--int8"], "--int8"),
        "onnx-model without onnx runtime": (["predict", str(tiny_model_dir), "x", "--onnx-model", str(not_onnx)],
                                            "--runtime onnx"),
        "fused model at predict time": (["predict", str(fused), "x", "--runtime", "onnx"], "fusion='tfidf'"),
    }


def test_every_bad_export_or_onnx_input_gives_one_line_and_exit_2(bad_inputs, capsys) -> None:
    failures = []
    for name, (argv, needle) in bad_inputs.items():
        code = main(argv)
        err = capsys.readouterr().err.strip()
        lines = err.splitlines()
        if code != 2 or len(lines) != 1 or not lines[0].startswith("gpt2clf: error: ") or needle not in err:
            failures.append(f"{name}: exit {code}, stderr {err[-300:]!r}")
    assert not failures, "\n".join(failures)


def test_stale_export_of_a_retrained_folder_is_refused(exported: tuple[Path, dict], trained_model_dir: Path,
                                                       tmp_path: Path, capsys) -> None:
    path, _ = exported
    other = copy_with_config(trained_model_dir, tmp_path / "other", seed=7)  # config.json differs
    code = main(["predict", str(other), "x", "--runtime", "onnx", "--onnx-model", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "exported from another model" in err and len(err.strip().splitlines()) == 1


def test_runtime_onnx_without_onnxruntime_says_how_to_install(tiny_model_dir: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("onnxruntime is not installed (test stub)")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(SRC)]), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "gpt2clf.cli", "predict", str(tiny_model_dir), "some text",
                             "--runtime", "onnx"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        'gpt2clf: error: --runtime onnx needs onnxruntime: pip install "gpt2clf[onnx]"']
    assert result.stdout == ""


def test_export_help_lists_options_and_examples(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--format", "--output", "--opset", "--check-texts", "--json", "examples:"):
        assert option in out
