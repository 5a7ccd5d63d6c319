"""The command line: help text, and one clear message with exit code 2 for every user error.

Each bad input below is run through ``gpt2clf.cli.main`` as a user would type it. It must
print ``gpt2clf: error: ...`` (or argparse's usage error) on stderr with no traceback, exit
with code 2, and leave an existing run folder byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from gpt2clf.cli import main


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bad_inputs(archive_path: Path, tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path,
               tiny_model_dir: Path):
    """(name, argv, expected message fragment) for 40+ kinds of bad input."""
    tmp = tmp_path_factory.mktemp("bad")
    good_csv = write(tmp / "good.csv", "text,label\nhello there,a\nsomething else,b\nmore words,a\nfinal,b\n")
    one_class = write(tmp / "one.csv", "text,label\nx,a\ny,a\n")
    test_only = write(tmp / "test_only.csv", "text,label\nx,a\ny,zzz\n")
    empty_texts = write(tmp / "blank.csv", "text,label\n  ,a\n\t,b\n")
    malformed = write(tmp / "bad.jsonl", '{"text": "ok", "label": "a"}\n{"text": "broken\n')
    ragged = write(tmp / "ragged.tsv", "text\tlabel\nx\ta\ty\tb\textra\n")
    no_label = write(tmp / "nolabel.jsonl", '{"text": "x", "label": "a"}\n{"text": "y"}\n')
    empty = write(tmp / "empty.csv", "")
    header_only = write(tmp / "header.csv", "text,label\n")
    not_tar = write(tmp / "not-an-archive.tar.gz", b"definitely not gzip")
    not_20ng = tmp / "some-folder"
    not_20ng.mkdir()
    bad_yaml = write(tmp / "bad.yaml", "learning_rate: [1, 2\n")
    unknown_key = write(tmp / "unknown.yaml", "learning_rat: 0.1\n")
    wrong_type = write(tmp / "type.yaml", "batch_size: many\n")
    list_yaml = write(tmp / "list.yaml", "- 1\n- 2\n")
    scalar_tags = write(tmp / "tags.jsonl", '{"text": "x", "label": ["a", "b"]}\n{"text": "y", "label": "a"}\n')
    import pandas as pd

    parquet = tmp / "data.parquet"
    pd.DataFrame({"body": ["x", "y"], "label": ["a", "b"]}).to_parquet(parquet)

    # Broken copies of a good model folder.
    def broken_model(name: str, edit) -> Path:
        folder = tmp / name
        folder.mkdir()
        for file in tiny_model_dir.iterdir():
            (folder / file.name).write_bytes(file.read_bytes())
        edit(folder)
        return folder

    def truncate(folder: Path) -> None:
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    def corrupt(folder: Path) -> None:
        weights = folder / "model.safetensors"
        weights.write_bytes(b"\x00" * 64 + weights.read_bytes()[64:])

    def mismatch(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config["spec"]["n_blocks"] += 1
        (folder / "config.json").write_text(json.dumps(config))

    truncated = broken_model("truncated", truncate)
    corrupted = broken_model("corrupted", corrupt)
    mismatched = broken_model("mismatched", mismatch)
    no_weights = broken_model("no-weights", lambda f: (f / "model.safetensors").unlink())
    bad_json = broken_model("bad-json", lambda f: (f / "config.json").write_text("{not json"))
    no_config = broken_model("no-config", lambda f: (f / "config.json").unlink())

    m = str(tiny_model_dir)
    data = ["--data-dir", str(archive_path)]
    quick = ["--backbone", str(tiny_backbone), "--tokenizer", str(tokenizer_path), "--dry-run", *data]
    return [
        ("multi-label jsonl cell not a list", ["data", "stats", "--train-file", str(scalar_tags), "--multi-label"],
         "must be a list"),
        ("multi-label on single-label file", ["data", "stats", "--train-file", str(good_csv), "--multi-label"],
         "did you mean single-label"),
        ("unknown parquet column", ["data", "stats", "--train-file", str(parquet)], "no column 'text'"),
        ("dataset without datasets", ["data", "stats", "--dataset", "imdb"], "datasets library"),
        ("dataset and train file", ["data", "stats", "--dataset", "imdb", "--train-file", str(good_csv)],
         "either train_file or dataset"),
        ("text column twice", ["data", "stats", "--train-file", str(good_csv), "--text-column", "text",
                               "--text-column", "text"], "twice"),
        ("multi-label with fusion", ["train", "--multi-label", "--fusion", "tfidf", "--dry-run"], "single-label"),
        # data paths and files
        ("missing data dir", ["data", "stats", "--data-dir", str(tmp / "nope")], "not found"),
        ("folder that is not 20NG", ["data", "stats", "--data-dir", str(not_20ng)], "20news"),
        ("file that is not an archive", ["data", "stats", "--data-dir", str(not_tar)], ""),
        ("missing train file", ["data", "stats", "--train-file", str(tmp / "none.csv")], "not found"),
        ("empty csv", ["data", "stats", "--train-file", str(empty)], "empty"),
        ("header-only csv", ["data", "stats", "--train-file", str(header_only)], ""),
        ("malformed jsonl", ["data", "stats", "--train-file", str(malformed)], "line 2"),
        ("ragged tsv", ["data", "stats", "--train-file", str(ragged)], ""),
        ("missing text column", ["data", "stats", "--train-file", str(good_csv), "--text-column", "body"], "text"),
        ("missing label column", ["data", "stats", "--train-file", str(good_csv), "--label-column", "y"], "label"),
        ("missing label value", ["data", "stats", "--train-file", str(no_label)], ""),
        ("one class", ["data", "stats", "--train-file", str(one_class)], "at least 2"),
        ("label only in test", ["data", "stats", "--train-file", str(good_csv), "--test-file", str(test_only)],
         "zzz"),
        ("all texts blank", ["data", "stats", "--train-file", str(empty_texts)], ""),
        ("unknown extension", ["data", "stats", "--train-file", str(write(tmp / "x.xlsx", "a"))], ".csv"),
        ("test file without train file", ["data", "stats", "--test-file", str(good_csv)], "train_file"),
        ("bad strip part", ["data", "stats", "--strip", "signatures", *data], "strip"),
        ("missing tokenizer", ["data", "stats", "--train-file", str(good_csv), "--tokenizer", str(tmp / "tok")],
         "tokenizer"),
        # configuration
        ("unknown preset", ["train", "--preset", "nope", *quick], "preset"),
        ("missing config file", ["train", "--config", str(tmp / "none.yaml"), *quick], "not found"),
        ("invalid yaml", ["train", "--config", str(bad_yaml), *quick], "YAML"),
        ("unknown config key", ["train", "--config", str(unknown_key), *quick], "learning_rat"),
        ("wrong type in yaml", ["train", "--config", str(wrong_type), *quick], "batch_size"),
        ("yaml not a mapping", ["train", "--config", str(list_yaml), *quick], "mapping"),
        ("negative learning rate", ["train", "--learning-rate", "-1e-3", *quick], "learning_rate"),
        ("batch size 0", ["train", "--batch-size", "0", *quick], "batch_size"),
        ("batch size not a number", ["train", "--batch-size", "abc", *quick], "batch_size"),
        ("dropout above 1", ["train", "--dropout", "1.5", *quick], "dropout"),
        ("width not divisible by heads", ["train", "--n-embed", "65", "--n-heads", "2", *quick], "divisible"),
        ("unknown pooling", ["train", "--pooling", "max", *quick], "pooling"),
        ("unknown precision", ["train", "--precision", "8", *quick], "precision"),
        ("unknown flag", ["train", "--learning-rat", "1", *quick], ""),
        ("max length above positions", ["train", "--max-length", "4096", *quick], "positions"),
        ("missing backbone", ["train", "--backbone", str(tmp / "no-model"), "--dry-run", *data], "backbone"),
        ("gpu on a cpu machine", ["train", "--accelerator", "gpu", "--output", str(tmp / "gpu"),
                                  "--backbone", str(tiny_backbone), "--tokenizer", str(tokenizer_path),
                                  "--train-file", str(good_csv), "--test-file", str(good_csv)], ""),
        ("train without output", ["train", "--backbone", str(tiny_backbone)], "--output"),
        ("resume with nothing to resume", ["train", "--output", str(tmp / "fresh"), "--resume"], "resume"),
        # model folders
        ("missing model folder", ["predict", str(tmp / "no-such-model"), "hi"], "not found"),
        ("model without weights", ["predict", str(no_weights), "hi"], "model.safetensors"),
        ("model without config", ["predict", str(no_config), "hi"], "config.json"),
        ("model config not json", ["predict", str(bad_json), "hi"], "config.json"),
        ("truncated weights", ["predict", str(truncated), "hi"], "model.safetensors"),
        ("corrupted weights", ["predict", str(corrupted), "hi"], "model.safetensors"),
        ("config not matching weights", ["predict", str(mismatched), "hi"], ""),
        ("evaluate a missing model", ["evaluate", str(tmp / "no-such-model")], "not found"),
        # prediction inputs
        ("nothing to predict", ["predict", m], "nothing to classify"),
        ("top-k 0", ["predict", m, "--top-k", "0", "hi"], "top-k"),
        ("missing --file", ["predict", m, "--file", str(tmp / "nope.txt")], "nope.txt"),
        ("missing --input", ["predict", m, "--input", str(tmp / "nope.jsonl")], "not found"),
        ("--input without the column", ["predict", m, "--input", str(good_csv), "--text-column", "body"], "body"),
        ("evaluate on labels the model lacks", ["evaluate", m, "--train-file", str(test_only)], ""),
        # devices, accelerators, strategies and precisions this (GPU-less) machine cannot run
        ("predict on cuda", ["predict", m, "--device", "cuda", "hi"], "no CUDA device here"),
        ("predict on cuda:7", ["predict", m, "--device", "cuda:7", "hi"], "--device cpu"),
        ("evaluate on cuda", ["evaluate", m, "--device", "cuda", "--train-file", str(good_csv)], "no CUDA device"),
        ("predict on a tpu", ["predict", m, "--device", "tpu", "hi"], "unknown device 'tpu'"),
        ("predict on a made-up device", ["predict", m, "--device", "banana", "hi"], "cpu, cuda"),
        ("predict in float16 on a cpu", ["predict", m, "--precision", "16-mixed", "hi"], "needs a GPU"),
        ("predict with an unknown precision", ["predict", m, "--precision", "fp8", "hi"], "precision"),
        ("int8 with bf16", ["predict", m, "--int8", "--precision", "bf16-mixed", "hi"], "int8"),
        ("predict batch size 0", ["predict", m, "--batch-size", "0", "hi"], "--batch-size"),
        ("evaluate batch size 0", ["evaluate", m, "--batch-size", "0", "--train-file", str(good_csv)],
         "--batch-size"),
        ("unknown strategy", ["train", "--strategy", "banana", *quick], "unknown strategy 'banana'"),
        ("unknown accelerator", ["train", "--accelerator", "quantum", *quick], "accelerator"),
        ("tpu accelerator", ["train", "--accelerator", "tpu", *quick], "not available"),
        ("cuda accelerator", ["train", "--accelerator", "cuda", *quick], "no CUDA GPU"),
        ("float16 training on a cpu", ["train", "--precision", "16-mixed", "--accelerator", "cpu", *quick],
         "needs a GPU"),
        ("a device list on the cpu", ["train", "--devices", "0,1", "--accelerator", "cpu", *quick], "devices"),
        ("devices not a number", ["train", "--devices", "many", *quick], "devices"),
        ("zero nodes", ["train", "--num-nodes", "0", *quick], "num_nodes"),
        ("unknown split", ["evaluate", m, "--split", "dev"], ""),
    ]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_bad_input_gives_one_message_and_exit_2(archive_path: Path, tokenizer_path: Path, bad_inputs, capsys,
                                                      tmp_path: Path, tiny_backbone: Path, monkeypatch) -> None:
    # "dataset without datasets" needs the package missing: make it so, whatever this environment has.
    monkeypatch.setitem(sys.modules, "datasets", None)
    # An existing run folder that every command below is also pointed at must not change.
    run_dir = tmp_path / "existing-run"
    write(run_dir / "config.yaml", "seed: 1\n")
    write(run_dir / "metrics.json", "{}\n")
    before = snapshot(run_dir)
    assert len(bad_inputs) >= 40
    failures = []
    for name, argv, fragment in bad_inputs:
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own usage errors
            code = exit_.code
        err = capsys.readouterr().err
        if code != 2 or "Traceback" in err or not err.strip() or fragment.lower() not in err.lower():
            failures.append(f"{name}: exit {code}, stderr: {err.strip()[-400:]!r}")
        elif "usage:" not in err:
            assert err.count("gpt2clf: error:") == 1, (name, err)
    # The same run folder as an --output is refused, then checked unchanged.
    code = main(["train", "--backbone", str(tiny_backbone), "--tokenizer", str(tokenizer_path), "--data-dir",
                 str(archive_path),
                 "--output", str(run_dir)])
    if code != 2:
        failures.append(f"existing run: exit {code}")
    assert not failures, "\n".join(failures)
    assert snapshot(run_dir) == before


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="not found"):
        main(["--debug", "data", "stats", "--data-dir", str(tmp_path / "nope")])


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_help_lists_options_with_defaults_and_examples(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    if command == "train":
        for option in ("--backbone", "--tokenizer", "--batch-size", "--max-length", "--learning-rate", "--epochs",
                       "--n-embed", "--n-heads", "--n-blocks", "--dropout", "--pooling", "--warmup-ratio",
                       "--weight-decay", "--seed", "--precision", "--devices", "--strategy", "--num-nodes",
                       "--resume", "--dry-run", "--max-train-samples", "--data-dir", "--train-file"):
            assert option in out, option
        assert "(default: 1e-05)" not in out and "(default: 2e-05)" in out


def test_train_flag_groups_are_the_config_sections(capsys, monkeypatch) -> None:
    """Each Config field (but preset, which has its own flag) is a train flag in the group its section comment
    names; the sections are read from config.py, so a new field needs no list kept by hand."""
    import dataclasses

    from gpt2clf.config import Config
    from gpt2clf.flags import training_field_groups

    groups = dict(training_field_groups())
    assert list(groups) == ["data", "tokenization and batching", "model", "optimisation",
                            "hardware and reproducibility"]
    grouped = [name for names in groups.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(Config) if f.name != "preset")
    assert "train_file" in groups["data"] and "learning_rate" in groups["optimisation"]
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    sections = out.split("\nmodel:\n")
    assert "--train-file" in sections[0] and "--n-heads" in sections[1].split("\noptimisation:\n")[0]


def test_shared_inference_flags_have_one_default_in_every_command(capsys, monkeypatch) -> None:
    from gpt2clf.config import InferenceSettings, field_help

    monkeypatch.setenv("COLUMNS", "1000")  # no line wrapping (which may split a word at a hyphen)
    docs, defaults = field_help(InferenceSettings), InferenceSettings()
    commands = {"predict": ["batch_size", "device", "precision"], "evaluate": ["batch_size", "device", "precision"],
                "serve": ["batch_size", "device", "precision"], "explain": ["device"]}
    for command, names in commands.items():
        with pytest.raises(SystemExit):
            main([command, "--help"])
        shown = " ".join(capsys.readouterr().out.split())
        for name in names:
            usage = f"--{name.replace('_', '-')} {name.upper()}"
            assert f"{usage} {docs[name]} (default: {getattr(defaults, name)})" in shown, (command, name)
    assert (defaults.batch_size, defaults.device, defaults.precision) == (64, "auto", "auto")


def test_bf16_on_a_cpu_without_bf16_hardware_is_warned_about(archive_path: Path, tokenizer_path: Path,
                                                             tiny_backbone: Path, capsys) -> None:
    from gpt2clf.infer.runtime import cpu_has_native_bf16

    args = ["train", "--backbone", str(tiny_backbone), "--tokenizer", str(tokenizer_path), "--data-dir",
            str(archive_path),
            "--max-train-samples", "40", "--max-eval-samples", "20", "--max-length", "64", "--accelerator", "cpu",
            "--dry-run", "--json"]
    for precision in ("32-true", "bf16-mixed"):
        assert main([*args, "--precision", precision]) == 0
        err = capsys.readouterr().err
        expected = precision == "bf16-mixed" and not cpu_has_native_bf16()
        assert ("gpt2clf: warning: --precision bf16-mixed on a CPU without native bf16" in err) == expected, err


def test_train_without_a_preset_picks_the_recipe_for_the_hardware(tokenizer_path: Path, tiny_backbone: Path,
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No --preset: the cpu recipe on a machine without CUDA, best with one, the plain defaults once the user
    sets a recipe's own setting; one line on stderr says which and why, and config.yaml records it."""
    import torch
    import yaml

    from gpt2clf.cli import build_parser, config_from_args

    texts = [f"{word} " * 5 + "and some filler words here" for word in ("rocket", "guitar", "hockey") * 40]
    labels = ["space", "music", "sport"] * 40
    rows = "".join(f"{t},{y}\n" for t, y in zip(texts, labels, strict=True))
    csv = write(tmp_path / "train.csv", "text,label\n" + rows)
    common = ["train", "--train-file", str(csv), "--backbone", str(tiny_backbone), "--tokenizer", str(tokenizer_path)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*common, "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "recipe     cpu" in captured.out
    assert "recipe: cpu (" in captured.err and "because there is no CUDA GPU" in captured.err

    lines: list[str] = []
    assert config_from_args(build_parser().parse_args([*common, "--freeze", "none"]), lines.append).preset == "none"
    assert "because you set --freeze" in lines[-1]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = config_from_args(build_parser().parse_args(common), lines.append)
    assert (gpu.preset, gpu.freeze, gpu.long_documents, gpu.fusion) == ("best", "none", "chunks", "tfidf")
    assert "because a CUDA GPU is present" in lines[-1]
    assert config_from_args(build_parser().parse_args([*common, "--preset", "blog"]), lines.append).preset == "blog"
    assert config_from_args(build_parser().parse_args([*common, "--preset", "none"]), lines.append).preset == "none"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "run"
    assert main([*common, "--no-progress", "--no-report", "--output", str(run)]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["preset"] == "cpu"


# --- progress of evaluate and predict: a bar on stderr, nothing but results on stdout -------------
@pytest.fixture(scope="module")
def forty_documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A labelled train/test pair and a JSON-lines input, 40 short documents each (labels of tiny_model_dir)."""
    tmp = tmp_path_factory.mktemp("progress")
    rows = [(f"document number {i} about caf\u00e9 and things", "abc"[i % 3]) for i in range(40)]
    table = "text,label\n" + "".join(f"{text},{label}\n" for text, label in rows)
    return {"train": write(tmp / "train.csv", table), "test": write(tmp / "test.csv", table),
            "input": write(tmp / "input.jsonl", "".join(json.dumps({"text": text}) + "\n" for text, _ in rows))}


def test_evaluate_shows_progress_on_stderr_and_keeps_stdout_json(tiny_model_dir: Path, forty_documents, capsys,
                                                                 monkeypatch) -> None:
    import gpt2clf.report.progress_bar

    monkeypatch.setattr(gpt2clf.report.progress_bar, "PROGRESS_DELAY_S", 0.0)  # draw at once, however fast the run
    args = ["evaluate", str(tiny_model_dir), "--train-file", str(forty_documents["train"]),
            "--test-file", str(forty_documents["test"]), "--batch-size", "4", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["num_documents"] == 40
    assert "evaluate test: 100%" in captured.err and " 40/40 [" in captured.err and " docs/s]" in captured.err
    assert main([*args, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["num_documents"] == 40
    assert "docs" not in captured.err


def test_streaming_predict_shows_documents_done_and_rate(tiny_model_dir: Path, forty_documents, capsys,
                                                         monkeypatch) -> None:
    import gpt2clf.report.progress_bar

    monkeypatch.setattr(gpt2clf.report.progress_bar, "PROGRESS_DELAY_S", 0.0)
    args = ["predict", str(tiny_model_dir), "--input", str(forty_documents["input"]), "--batch-size", "4", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["id"] for r in records] == [f"{forty_documents['input']}:{i}" for i in range(40)]
    assert "predict: 40 docs [" in captured.err and " docs/s]" in captured.err  # no total: a stream
    assert main([*args, "--no-progress"]) == 0
    assert "docs" not in capsys.readouterr().err


def test_the_library_reports_progress_and_prints_nothing(tiny_model_dir: Path, forty_documents, capsys) -> None:
    from gpt2clf.infer.evaluation import evaluate_folder
    from gpt2clf.infer.predictor import Predictor

    reports: list[tuple[int, int | None]] = []
    result = evaluate_folder(tiny_model_dir, data_overrides={"train_file": str(forty_documents["train"]),
                                                             "test_file": str(forty_documents["test"])},
                             batch_size=4, progress=lambda done, total: reports.append((done, total)))
    assert result.num_documents == 40
    assert reports[0] == (0, 40) and reports[-1] == (40, 40) and len(reports) == 11  # 0, then each batch of 4
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    reports.clear()
    predictor = Predictor.from_folder(tiny_model_dir, batch_size=4)
    texts = [f"text {i}" for i in range(10)]
    assert len(list(predictor.predict(iter(texts), chunk_size=6, progress=lambda *r: reports.append(r)))) == 10
    assert reports == [(0, None), (4, None), (6, None), (6, None), (10, None)]  # chunks of 6: batches 4+2, 4
    assert capsys.readouterr() == ("", "")


def test_a_dataset_the_hub_cannot_give_is_one_message_and_exit_2(monkeypatch, capsys) -> None:
    """With the datasets package present (a stand-in here, so the test does not depend on the environment),
    a dataset that cannot be loaded (offline, misspelt) is still one line and exit 2."""
    import types

    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'imdb' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert main(["data", "stats", "--dataset", "imdb"]) == 2
    err = capsys.readouterr().err
    assert err.count("gpt2clf: error:") == 1 and "cannot load dataset 'imdb'" in err and "Traceback" not in err
