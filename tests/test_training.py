"""End-to-end training, evaluation and prediction on the real 20 Newsgroups archive.

A tiny random GPT-2 (built from a GPT2Config and saved with save_pretrained, so it loads
through the same from_pretrained path as a hub id) stands in for the pretrained one.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt2clf.cli import main
from gpt2clf.infer.predictor import Predictor
from keyword_corpus import keyword_texts as corpus_texts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def quick_train_args(archive_path: Path, tokenizer_path: Path):
    """``quick_train_args(backbone, output, *extra)``: the flags of a small but real 20 Newsgroups run."""
    return functools.partial(_quick_train_args, archive_path, tokenizer_path)


@pytest.fixture(scope="session")
def small_train_args(quick_train_args):
    """``small_train_args(backbone, output, *extra)``: smaller still, for the checks that compare runs with each
    other rather than with chance. No report: it has tests of its own, and here it would only cost time (about
    10 s a run)."""
    return lambda backbone, output, *extra: quick_train_args(backbone, output, "--no-report", *extra,
                                                             documents=300, eval_documents=150, max_length=64,
                                                             epochs=2)


def _quick_train_args(archive_path: Path, tokenizer_path: Path, backbone: Path, output: Path, *extra: str,
                      documents: int = 2000, eval_documents: int = 300, max_length: int = 128,
                      epochs: int = 3) -> list[str]:
    """A small but real 20 Newsgroups run: a tiny random GPT-2 learns from the first tokens of each post.

    A random backbone has to learn its token embeddings from scratch, hence the high learning
    rates (pretrained GPT-2 wants the defaults)."""
    return [
        "train", "--backbone", str(backbone), "--tokenizer", str(tokenizer_path), "--data-dir", str(archive_path),
        "--max-train-samples", str(documents), "--max-eval-samples", str(eval_documents),
        "--max-length", str(max_length), "--epochs", str(epochs), "--learning-rate", "1e-3",
        "--head-learning-rate", "3e-3", "--n-embed", "64",
        "--n-heads", "2", "--n-blocks", "1", "--batch-size", "16", "--pooling", "mean", "--no-progress",
        "--precision", "32-true", "--output", str(output), *extra,
    ]


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2clf.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, **kwargs)


@pytest.fixture(scope="module")
def trained_run(quick_train_args, tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "t"
    assert main(quick_train_args(tiny_backbone, run_dir)) == 0
    return run_dir


def test_training_beats_chance_and_writes_a_complete_run_folder(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    # 20 classes: chance is 0.05.
    assert metrics["test"]["accuracy"] >= 0.20, metrics
    assert metrics["test"]["documents"] == 300
    assert (trained_run / "config.yaml").is_file()
    assert (trained_run / "logs" / "metrics.csv").is_file()
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (trained_run / "model" / name).is_file(), name


def test_evaluate_reproduces_the_runs_test_metrics(trained_run: Path, capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    # The precision the run used (quick_train_args: 32-true): the same settings give the same figures.
    assert main(["evaluate", str(trained_run / "model"), "--json", "--precision", "32-true", "--output",
                 str(tmp_path / "eval")]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert result["num_documents"] == 300
    assert result["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    assert result["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-4)
    assert set(result["per_class"]) == set(result["label_names"])
    png = (tmp_path / "eval" / "confusion_matrix.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_predict_json_probabilities_sum_to_one(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(trained_run / "model"), "--json", "some text", "Windows 3.1 driver crash"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        row = json.loads(line)
        assert row["label"] in row["probabilities"]
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)


def test_probabilities_do_not_depend_on_batch_neighbours(trained_run: Path) -> None:
    # In float32 the masking makes neighbours irrelevant to rounding level; under bf16 autocast
    # other batch shapes round differently (about 1e-3, see the next test).
    predictor = Predictor.from_folder(trained_run / "model", batch_size=4, device="cpu", precision="32-true")
    docs = ["short one", "a much longer document " * 30, "graphics card and monitor", "hockey playoffs tonight"]
    together = predictor.predict_proba(docs)
    for i, doc in enumerate(docs):
        torch.testing.assert_close(predictor.predict_proba([doc])[0], together[i], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("native_bf16", ["0", "1"])
def test_auto_precision_stays_close_to_float32(archive_path: Path, trained_run: Path, monkeypatch,
                                               native_bf16: str) -> None:
    """``auto`` picks bf16 autocast only where the CPU has bf16 hardware; either way probabilities
    stay within 0.01 of float32 and the top label does not change."""
    from gpt2clf.data.newsgroups import load_20newsgroups

    monkeypatch.setenv("GPT2CLF_CPU_BF16", native_bf16)
    auto = Predictor.from_folder(trained_run / "model", device="cpu")
    assert auto.precision == ("bf16-mixed" if native_bf16 == "1" else "32-true")
    reference = Predictor.from_folder(trained_run / "model", device="cpu", precision="32-true")
    texts = load_20newsgroups("test", archive_path).texts[:48]
    fast, exact = auto.predict_proba(texts), reference.predict_proba(texts)
    assert float((fast - exact).abs().max()) <= 0.01
    # The top label is the same wherever float32 itself is not (nearly) tied between two labels.
    top2 = exact.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.02
    assert clear.sum() >= 30  # most of them (38 of 48 here): the check has teeth
    assert torch.equal(fast.argmax(-1)[clear], exact.argmax(-1)[clear])


def test_training_uses_fused_adamw(trained_run: Path) -> None:
    # One kernel per optimiser step instead of a Python loop over tensors (BENCHMARKS.md).
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert groups and all(group["fused"] for group in groups)


def test_int8_inference_agrees_with_float32(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(trained_run / "model")
    scores = {}
    for extra in ([], ["--int8"]):
        assert main(["evaluate", model, "--json", "--device", "cpu", *extra]) == 0
        scores[bool(extra)] = json.loads(capsys.readouterr().out)
    assert scores[True]["num_documents"] == 300
    assert abs(scores[True]["accuracy"] - scores[False]["accuracy"]) <= 0.03, scores
    assert scores[True]["loss"] == pytest.approx(scores[False]["loss"], abs=0.05)
    assert scores[True]["loss"] != scores[False]["loss"]  # the int8 copy really ran
    assert main(["predict", model, "--json", "--int8", "--device", "cpu", "hockey playoffs tonight"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_int8_is_refused_off_the_cpu(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(trained_run / "model"), "--int8", "--device", "cuda", "text"]) == 2
    assert "int8 inference runs on the CPU" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_run(small_train_args, tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "small"
    assert main(small_train_args(tiny_backbone, run_dir)) == 0
    return run_dir


def test_same_seed_gives_same_metrics(small_train_args, tiny_backbone: Path, small_run: Path, tmp_path: Path) -> None:
    assert main(small_train_args(tiny_backbone, tmp_path / "again")) == 0
    first = json.loads((small_run / "metrics.json").read_text())
    second = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert first["test"] == second["test"]
    assert first["validation"] == second["validation"]


def test_sigkill_then_resume_matches_an_uninterrupted_run(small_train_args, tiny_backbone: Path, small_run: Path,
                                                          tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    args = small_train_args(tiny_backbone, run_dir)
    process = subprocess.Popen([sys.executable, "-m", "gpt2clf.cli", *args], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)  # mid-way through epoch 2
    process.wait()
    assert not (run_dir / "metrics.json").exists()
    from gpt2clf.training.loop import finished_epochs

    assert finished_epochs(last) == 1  # so the resumed run's estimate counts one epoch of training, not two
    assert finished_epochs(small_run / "checkpoints" / "last.ckpt") == 2

    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = json.loads((small_run / "metrics.json").read_text())
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["test"] == expected["test"]
    assert got["validation"] == expected["validation"]


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_the_start(small_train_args, tiny_backbone: Path,
                                                                          small_run: Path,
                                                                          tmp_path: Path) -> None:
    """As after a kill in the feature cache pass: the folder holds config.yaml and no checkpoint."""
    run_dir = tmp_path / "early"
    run_dir.mkdir()
    shutil.copy(small_run / "config.yaml", run_dir / "config.yaml")
    assert main([*small_train_args(tiny_backbone, run_dir), "--resume"]) == 0
    expected = json.loads((small_run / "metrics.json").read_text())
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["test"] == expected["test"]
    assert got["validation"] == expected["validation"]


def test_resuming_with_a_changed_setting_is_refused_by_the_library_as_by_the_cli(small_train_args,
        tiny_backbone: Path, small_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gpt2clf import Config, train
    from gpt2clf.errors import UserError

    before = {p: p.stat().st_mtime_ns for p in small_run.rglob("*") if p.is_file()}
    assert main([*small_train_args(tiny_backbone, small_run), "--epochs", "5", "--resume"]) == 2
    cli_message = capsys.readouterr().err.strip().removeprefix("gpt2clf: error: ")
    assert "--epochs (2 -> 5)" in cli_message
    with pytest.raises(UserError) as refused:
        train(Config.from_yaml(small_run / "config.yaml").updated(epochs=5), small_run, resume=True)
    assert str(refused.value) == cli_message
    # Where the run runs may change; nothing was written by either refusal.
    assert {p: p.stat().st_mtime_ns for p in small_run.rglob("*") if p.is_file()} == before


def test_ctrl_c_stops_cleanly_with_a_resumable_checkpoint(small_train_args, tiny_backbone: Path,
                                                          tmp_path: Path) -> None:
    run_dir = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, "-m", "gpt2clf.cli", *small_train_args(tiny_backbone, run_dir)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # a background shell may have left SIGINT ignored; a terminal would not
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    state = torch.load(last, map_location="cpu", weights_only=True)  # complete and free of pickled code
    # A checkpoint of this 2-epoch run after at least one optimiser step (epoch counts from 0).
    assert state["epoch"] in range(2) and state["global_step"] >= 1 and "gpt2clf_rng_states" in state


def test_two_process_ddp_on_cpu_writes_one_model(quick_train_args, tiny_backbone: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    args = quick_train_args(tiny_backbone, run_dir, "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
                            "--max-eval-samples", "100", "--no-report", documents=200, max_length=64, epochs=1)
    result = run_cli(*args, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    models = [p for p in run_dir.rglob("model.safetensors")]
    assert models == [run_dir / "model" / "model.safetensors"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["documents"] == 100


@pytest.fixture
def estimate_on_small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimate timed on its 4-row warm-up batches only, for tests that check something else: timing
    real-shaped batches (up to ``REAL_BATCH_SECONDS`` a call) of a 139M model, or of bf16 emulated on a CPU
    without native bf16, would cost tens of seconds."""
    from gpt2clf.training import plan as preflight

    monkeypatch.setattr(preflight, "REAL_BATCH_SECONDS", 0.0)


def test_dry_run_blog_counts_the_seed_parameters(archive_path: Path, tokenizer_path: Path, gpt2_small_backbone: Path,
                                                 capsys,
                                                 estimate_on_small_batches: None) -> None:
    # The count is checked here, not the estimate; 32-token rows change no parameter (the backbone keeps
    # its 1,024 positions).
    code = main(["train", "--preset", "blog", "--backbone", str(gpt2_small_backbone), "--tokenizer",
                 str(tokenizer_path),
                 "--data-dir", str(archive_path), "--max-train-samples", "200", "--max-eval-samples", "100",
                 "--max-length", "32", "--dry-run", "--json"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["parameters"]["total"] == pytest.approx(138.6e6, abs=0.5e6)
    assert plan["parameters"]["trainable"] == plan["parameters"]["total"]
    assert plan["data"]["num_classes"] == 20
    assert plan["config"]["n_heads"] == 2 and plan["config"]["learning_rate"] == 1e-5
    assert plan["config"]["n_embed"] == 768 and plan["config"]["dropout"] == 0.2


def test_existing_run_is_refused_without_overwrite(quick_train_args, trained_run: Path, tiny_backbone: Path,
                                                   capsys) -> None:
    before = (trained_run / "metrics.json").read_bytes()
    assert main(quick_train_args(tiny_backbone, trained_run)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (trained_run / "metrics.json").read_bytes() == before


def test_frozen_backbone_trains_from_the_feature_cache(small_train_args, tiny_backbone: Path, tmp_path: Path,
                                                       capsys) -> None:
    run_dir = tmp_path / "frozen"
    args = small_train_args(tiny_backbone, run_dir, "--freeze", "backbone", "--cache-dir", str(tmp_path / "cache"))
    assert main(args) == 0
    capsys.readouterr()
    assert len(list((tmp_path / "cache").iterdir())) == 3  # train, validation and test features
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The saved model runs the whole network from tokens; it agrees with the cached path
    # up to the fp16 storage of the features.
    assert main(["evaluate", str(run_dir / "model"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_documents"] == metrics["test"]["documents"] == 150
    assert abs(result["accuracy"] - metrics["test"]["accuracy"]) <= 0.02
    assert result["loss"] == pytest.approx(metrics["test"]["loss"], abs=0.02)


def test_top_layers_train_from_the_cache_of_the_frozen_ones(small_train_args, tiny_backbone: Path, tmp_path: Path,
                                                            capsys) -> None:
    from safetensors.torch import load_file

    run_dir = tmp_path / "top1"
    args = small_train_args(tiny_backbone, run_dir, "--train-top-layers", "1", "--cache-dir", str(tmp_path / "cache"))
    assert main([*args, "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    # The estimate times the path the cache pass takes: the native body (the cached layer 0 is frozen).
    assert plan["feature_cache"] is True
    assert plan["estimated_seconds"]["cache_path"] == f"native-gpt2 body, {plan['config']['precision']}"
    assert main(args) == 0
    capsys.readouterr()
    caches = [json.loads((folder / "meta.json").read_text()) for folder in (tmp_path / "cache").iterdir()]
    assert len(caches) == 3 and all(meta["start_layer"] == 1 for meta in caches)  # layer 0's output, cached
    assert all(meta["frozen_pass"] == "native-gpt2" for meta in caches)  # the key records the path that ran
    before = load_file(tiny_backbone / "model.safetensors")
    after = {k.removeprefix("backbone."): v for k, v in load_file(run_dir / "model" / "model.safetensors").items()
             if k.startswith("backbone.")}
    frozen = [k for k in before if k.startswith("h.0.") or k.startswith("wte") or k.startswith("wpe")]
    trained = [k for k in before if k.startswith("h.1.") and k.endswith("weight")]
    assert frozen and trained
    for key in frozen:
        torch.testing.assert_close(after[key], before[key], atol=0, rtol=0, msg=key)
    assert all(not torch.equal(after[key], before[key]) for key in trained)
    # From tokens, the saved model agrees with the cached path up to the fp16 storage.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert main(["evaluate", str(run_dir / "model"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert abs(result["accuracy"] - metrics["test"]["accuracy"]) <= 0.02
    assert result["loss"] == pytest.approx(metrics["test"]["loss"], abs=0.02)


def keyword_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Texts whose class is written in them: one of three keywords among 8 filler words."""
    return corpus_texts(n, {"space": "rocket", "sport": "football", "music": "guitar"}, seed=seed)


def test_fit_trains_in_memory_from_python_lists(tokenizer_path: Path, tiny_backbone: Path, tmp_path: Path,
                                                monkeypatch) -> None:
    from gpt2clf import Config, fit
    from gpt2clf.data.splits import labelled_texts

    monkeypatch.chdir(tmp_path)  # nothing may be written to the working folder either
    texts, labels = keyword_texts(240)
    test_texts, test_labels = keyword_texts(60, seed=1)
    data = labelled_texts(texts, labels, test_texts=test_texts, test_labels=test_labels)
    # Frozen: a random tiny GPT-2's token states already differ per token, and our block learns fast.
    config = Config(backbone=str(tiny_backbone), tokenizer=str(tokenizer_path), max_length=16, epochs=8, batch_size=16,
                    freeze="backbone", head_learning_rate=1e-2, n_embed=32, n_heads=2, n_blocks=1,
                    pooling="attention", precision="32-true", warmup_ratio=0.0)
    result = fit(config, data)
    assert result.model.label_names == ["music", "space", "sport"]
    assert result.metrics["test"]["documents"] == 60
    assert result.metrics["test"]["accuracy"] >= 0.9, result.metrics  # chance: 1/3
    assert result.test_probabilities is not None and result.test_probabilities.shape == (60, 3)
    assert list(tmp_path.iterdir()) == []
    result.save(tmp_path / "model")
    predictor = Predictor.from_folder(tmp_path / "model", precision="32-true")
    assert [p.label for p in predictor.predict(["a rocket to the moon", "he plays the guitar"])] == [
        "space", "music"]


def test_model_folders_record_absolute_data_paths(tokenizer_path: Path, tiny_backbone: Path, tmp_path: Path,
                                                  monkeypatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    texts, labels = keyword_texts(90)
    work = tmp_path / "work"
    work.mkdir()
    (work / "short_train.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(texts, labels,
                                                                                              strict=True)))
    monkeypatch.chdir(work)
    args = ["train", "--train-file", "short_train.csv", "--backbone", str(tiny_backbone), "--tokenizer",
            str(tokenizer_path), "--max-length", "16", "--epochs", "1", "--n-embed", "32", "--n-heads", "2",
            "--n-blocks", "1", "--no-progress", "--output", "run"]
    assert main(args) == 0
    recorded = json.loads((work / "run" / "model" / "config.json").read_text())["extra"]["config"]
    assert recorded["train_file"] == str(work / "short_train.csv")
    assert Path(recorded["backbone"]).is_absolute()
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", str(work / "run" / "model"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_documents"] == 18  # the 20% test split of 90
    (work / "short_train.csv").rename(work / "moved.csv")
    assert main(["evaluate", str(work / "run" / "model")]) == 2
    err = capsys.readouterr().err
    assert "trained on " + str(work / "short_train.csv") in err and "--train-file" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16-true"])
def test_gradients_are_clipped_in_every_cpu_precision(tokenizer_path: Path, tiny_backbone: Path, precision: str,
                                                      monkeypatch) -> None:
    """Clipping works with the fused AdamW under autocast (Lightning's AMP plugin refuses it there)."""
    from gpt2clf import Config, fit
    from gpt2clf.data.splits import labelled_texts
    from gpt2clf.training.loop import ClassificationModule

    limit = 0.05
    seen: list[tuple[float, float, bool]] = []  # (norm before, norm after, fused optimizer)
    first_head: list[torch.Tensor] = []
    original = ClassificationModule.configure_gradient_clipping

    def grad_norm(module: ClassificationModule) -> float:
        grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def recording(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if not first_head:
            first_head.append(self.model.head[1].weight.detach().float().clone())
        before = grad_norm(self)
        original(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
        seen.append((before, grad_norm(self), bool(optimizer.defaults.get("fused"))))

    monkeypatch.setattr(ClassificationModule, "configure_gradient_clipping", recording)
    texts, labels = keyword_texts(60)
    config = Config(backbone=str(tiny_backbone), tokenizer=str(tokenizer_path), max_length=16, epochs=1, batch_size=8,
                    n_embed=32, n_heads=2, n_blocks=1, precision=precision, gradient_clip=limit,
                    learning_rate=1e-3)
    result = fit(config, labelled_texts(texts, labels))
    assert result.config.precision == precision
    assert len(seen) == 6  # 48 training texts in batches of 8: every step clipped
    assert all(fused for _, _, fused in seen)  # the fast optimizer stayed
    assert any(norm_before > limit for norm_before, _, _ in seen)  # clipping had work to do
    assert all(after <= limit * 1.01 for _, after, _ in seen), seen
    assert not torch.equal(result.model.head[1].weight.detach().float(), first_head[0])  # the steps ran


def test_the_reported_bf16_command_trains_with_default_clipping(archive_path: Path, tokenizer_path: Path,
                                                                tiny_backbone: Path, tmp_path: Path) -> None:
    """Issue 16's command, shrunk: frozen backbone, attention pooling, bf16-mixed, default clipping (1.0)."""
    args = ["train", "--backbone", str(tiny_backbone), "--tokenizer", str(tokenizer_path), "--data-dir",
            str(archive_path),
            "--freeze", "backbone", "--max-train-samples", "48", "--max-eval-samples", "24", "--max-length", "32",
            "--pooling", "attention", "--n-blocks", "1", "--learning-rate", "5e-4", "--epochs", "2",
            "--precision", "bf16-mixed", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--output", str(tmp_path / "x")]
    assert main(args) == 0
    saved = (tmp_path / "x" / "config.yaml").read_text()
    assert "gradient_clip: 1.0" in saved and "precision: bf16-mixed" in saved


def readme_gpu_commands() -> list[list[str]]:
    """The ``gpt2clf train ... --precision bf16-mixed`` commands of the README's code blocks."""
    import shlex

    commands, inside = [], False
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        line = line.strip().removeprefix("$ ")
        if inside and line.startswith("gpt2clf train") and "--precision bf16-mixed" in line:
            commands.append(shlex.split(line.split("#")[0])[1:])
    return commands


def test_the_readmes_gpu_commands_run_on_a_cpu(archive_path: Path, tokenizer_path: Path, tiny_backbone: Path,
                                               tmp_path: Path,
                                                estimate_on_small_batches: None) -> None:
    commands = readme_gpu_commands()
    assert commands, "the README names GPU training commands"
    # bf16 is emulated on a CPU without native bf16 (seconds a step for a 768-wide block): one small step.
    # The report has tests of its own.
    shrink = ["--backbone", str(tiny_backbone), "--tokenizer", str(tokenizer_path), "--data-dir", str(archive_path),
              "--max-train-samples", "16", "--max-eval-samples", "8", "--max-length", "16", "--epochs", "1",
              "--no-progress", "--no-report"]
    for i, command in enumerate(commands):
        command = [str(tmp_path / f"run{i}") if part.startswith("runs/") else part for part in command]
        assert main([*command, *shrink]) == 0, command


@pytest.mark.parametrize("setting", [dict(freeze="none"), dict(freeze="backbone"), dict(train_top_layers=1),
                                     dict(train_top_layers=1, feature_cache=False)])
def test_trainable_parts_train_with_dropout_and_frozen_parts_stay_in_eval_mode(tokenizer_path: Path,
                                                                               tiny_backbone: Path,
                                                                                 setting: dict) -> None:
    """During a training step every trainable part is in train mode (the backbone's own dropout on, as in
    its fine-tuning), the frozen part in eval mode; validation runs everything in eval mode."""
    import warnings

    from gpt2clf import Config, fit
    from gpt2clf.data.splits import labelled_texts
    from gpt2clf.training.loop import ClassificationModule

    seen: dict[str, list[dict[str, bool]]] = {"train": [], "validation": []}
    original_train, original_val = ClassificationModule.training_step, ClassificationModule.validation_step

    def modes(module: ClassificationModule) -> dict[str, bool]:
        model = module.model
        layers = model.backbone_layers()
        return {"backbone": model.backbone.training, "embedding_dropout": model.backbone.drop.training,
                "lower_layer": layers[0].training, "lower_dropout": layers[0].attn.resid_dropout.training,
                "top_layer": layers[-1].training, "top_dropout": layers[-1].mlp.dropout.training,
                "final_norm": model.backbone.ln_f.training, "blocks": model.blocks[0].training,
                "head": model.head.training}

    def recording_train(self, batch, batch_idx):
        seen["train"].append(modes(self))
        return original_train(self, batch, batch_idx)

    def recording_val(self, batch, batch_idx):
        seen["validation"].append(modes(self))
        return original_val(self, batch, batch_idx)

    texts, labels = keyword_texts(60)
    config = Config(backbone=str(tiny_backbone), tokenizer=str(tokenizer_path), max_length=16, epochs=2, batch_size=16,
                    n_embed=32, n_heads=2, n_blocks=1, precision="32-true", **setting)
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch.setattr(ClassificationModule, "training_step", recording_train)
        patch.setattr(ClassificationModule, "validation_step", recording_val)
        fit(config, labelled_texts(texts, labels))
    assert seen["train"] and seen["validation"]
    full = setting.get("freeze") == "none"
    top = "train_top_layers" in setting
    expected = {"backbone": full, "embedding_dropout": full, "lower_layer": full, "lower_dropout": full,
                "top_layer": full or top, "top_dropout": full or top, "final_norm": full or top,
                "blocks": True, "head": True}
    # The second epoch (after a validation pass) as well as the first.
    assert all(step == expected for step in seen["train"]), (seen["train"][0], expected)
    assert all(not any(step.values()) for step in seen["validation"]), seen["validation"][0]
    eval_mode_warnings = [w for w in caught if "in eval mode at the start of training" in str(w.message)]
    assert not eval_mode_warnings, [str(w.message) for w in eval_mode_warnings]


def test_a_long_cpu_estimate_names_faster_recipes_other_than_the_one_in_use() -> None:
    """Over two hours on a CPU the estimate line names faster options; a run that already has the frozen
    recipe's one backbone pass is not told to use it."""
    from gpt2clf.training.plan import describe_estimate

    base = {"device": "cpu", "precision": "32-true", "training": 3 * 3600.0, "evaluation": 600.0, "fusion": 0.0,
            "report": 0.0}
    fine_tuning = describe_estimate({**base, "feature_cache": 0.0, "total": 3 * 3600.0 + 600.0})
    assert "~3.2 h (training 3.0 h, evaluation 10.0 min)" in fine_tuning
    assert "faster: --preset cpu (one backbone pass" in fine_tuning
    frozen = describe_estimate({**base, "training": 600.0, "feature_cache": 4 * 3600.0, "total": 4 * 3600.0 + 1200.0})
    assert "feature cache 4.0 h" in frozen and "--max-train-samples" in frozen and "--preset cpu " not in frozen
    quick = describe_estimate({**base, "training": 60.0, "feature_cache": 0.0, "total": 660.0})
    assert "faster" not in quick


def test_the_estimate_times_a_pass_by_the_median_of_short_calls_so_one_outlier_does_not_set_it() -> None:
    """A cheap pass is timed three times and the median kept; a pass slower than the timing budget once."""
    from collections.abc import Callable

    from gpt2clf.training.plan import TIMING_SECONDS, median_call_seconds

    def fake_clock(durations: list[float]) -> Callable[[], float]:
        """A clock whose successive timed calls last ``durations``."""
        now = [0.0]
        ticks = iter([d for duration in durations for d in (0.0, duration)])

        def clock() -> float:
            now[0] += next(ticks)
            return now[0]
        return clock

    calls: list[int] = []
    cheap = median_call_seconds(lambda: calls.append(1), clock=fake_clock([0.10, 0.02, 0.11]))
    assert cheap == pytest.approx(0.10) and len(calls) == 3
    calls.clear()
    slow = median_call_seconds(lambda: calls.append(1), clock=fake_clock([2 * TIMING_SECONDS, 0.5]))
    assert slow == pytest.approx(2 * TIMING_SECONDS) and len(calls) == 1


@pytest.mark.parametrize("freeze", ["backbone", "none"])
def test_the_estimate_times_each_pass_on_the_rows_the_real_pass_has_unless_that_exceeds_its_time_budget(
        tiny_backbone: Path, monkeypatch: pytest.MonkeyPatch, freeze: str) -> None:
    """A small batch of 4 rows warms up and is timed, then a batch with the real pass's rows: the training
    batch (8 documents x 2.5 windows each), the evaluation batch (16 x 2.5), the cache pass (16 windows).
    With no time to spare for the real-shaped batch, only the small one is timed."""
    from gpt2clf import Config
    from gpt2clf.infer.frozen_pass import FrozenPass
    from gpt2clf.training import plan as preflight
    from gpt2clf.training.inputs import build_model, feature_cache_spec

    config = Config(backbone=str(tiny_backbone), batch_size=8, max_length=32, freeze=freeze,
                    long_documents="chunks", precision="32-true", feature_cache=freeze == "backbone")
    model = build_model(config, ["a", "b", "c"])
    cache = feature_cache_spec(config, model)
    frozen = None if cache is None else cache.frozen_pass(model, [])  # the cache pass's path (None: no cache)

    seen: dict[str, set[int]] = {"backbone": set(), "top": set(), "cache": set()}
    for owner, name, part in ((model, "backbone_hidden_states", "backbone"), (model, "classify_hidden_states", "top"),
                              (FrozenPass, "hidden_states", "cache")):
        original = getattr(owner, name)

        def recording(*args, original=original, part=part, **kwargs) -> torch.Tensor:
            hidden = args[1] if part == "cache" else args[0]  # (FrozenPass's self first)
            seen[part].add(hidden.shape[0])
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, recording)

    rates = preflight._measured_rates(config, model, 32, torch.device("cpu"), full_pass=False,
                                      windows_per_document=2.5, frozen=frozen)
    assert set(rates) == ({"cache", "train", "eval"} if freeze == "backbone" else {"train", "eval"})
    assert all(rate > 0 for rate in rates.values())
    # Frozen: the backbone runs once on the small batch to make the cached states, then the cache pass runs
    # on the path it will take (the frozen pass).
    assert seen == {"backbone": {4}, "cache": {4, 16}, "top": {4, 20, 40}} if freeze == "backbone" else \
        seen == {"backbone": {4, 20, 40}, "cache": set(), "top": {4, 20, 40}}

    monkeypatch.setattr(preflight, "REAL_BATCH_SECONDS", 0.0)
    seen = {"backbone": set(), "top": set(), "cache": set()}
    preflight._measured_rates(config, model, 32, torch.device("cpu"), full_pass=False, windows_per_document=2.5,
                              frozen=frozen)
    assert seen == {"backbone": {4}, "top": {4}, "cache": {4} if freeze == "backbone" else set()}
