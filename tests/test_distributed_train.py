"""Training on Ray Train (``gpt2clf train --engine ray``) on a local two-CPU Ray cluster, with a tiny random GPT-2.

One cluster serves the module (``ray.init(num_cpus=2)``: a one-CPU cluster can starve Ray's own tasks); the
commands run in this process and join it (``--address`` joining from another process is tested with
``predict --engine ray``). Every start of a worker group costs about 35 s on 2 cores, so one run covers the
CSV, the feature cache, a killed worker and the run folder. Every test has a timeout (SIGALRM).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from gpt2clf.cli import main  # noqa: E402
from gpt2clf.infer.predictor import Predictor  # noqa: E402
from keyword_corpus import keyword_texts  # noqa: E402

KEYWORDS = {"space": "rocket", "hockey": "puck", "music": "guitar"}


@pytest.fixture
def tiny_run_args(tiny_backbone: Path, tokenizer_path: Path, archive_path: Path) -> Callable[..., list[str]]:
    """``train`` arguments for a run small enough for two workers sharing two cores, with the tiny random GPT-2:
    ``tiny_run_args(output, *extra, epochs=1, data=None)``; ``data`` replaces the default data flags (160
    20 Newsgroups posts for training and validation, 60 for test), 32 tokens per document."""
    def arguments(output: Path, *extra: str, epochs: int = 1, data: list[str] | None = None) -> list[str]:
        if data is None:
            data = ["--data-dir", str(archive_path), "--max-train-samples", "160", "--max-eval-samples", "60"]
        return ["train", "--preset", "none", "--backbone", str(tiny_backbone), "--tokenizer", str(tokenizer_path),
                *data, "--max-length", "32", "--epochs", str(epochs), "--learning-rate", "1e-3",
                "--head-learning-rate", "3e-3", "--n-embed", "64", "--n-heads", "2", "--n-blocks", "1",
                "--batch-size", "16", "--pooling", "mean", "--precision", "32-true", "--no-progress", "--no-report",
                "--output", str(output), *extra]

    return arguments


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail the test (TimeoutError) if its body runs longer than ``seconds`` (SIGALRM; Ray's waits are Python)."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster with two CPUs for the module; yields its address. Shut down afterwards."""
    with deadline(120):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def write_keyword_csv(path: Path, n: int, seed: int) -> None:
    """``n`` labelled rows (text, label) of three classes, each text holding its class's keyword."""
    texts, labels = keyword_texts(n, KEYWORDS, length=12, seed=seed)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)


def exit_once_callback(marker: Path, attempts: Path, *, epoch: int, step: int, rank: int) -> object:
    """A Lightning callback that kills its worker process (``os._exit``) at ``step`` of ``epoch`` on ``rank``,
    once (the ``marker`` file remembers) after Ray has taken the epoch-end report, and notes on rank 0 the epoch
    each attempt starts from.

    Defined in a function so that Ray pickles the class by value (the test module is not importable there)."""
    import lightning.pytorch as pl

    class ExitOnce(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.global_rank == 0:
                with attempts.open("a") as handle:
                    handle.write(f"{trainer.current_epoch}\n")

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                               batch: object, batch_idx: int) -> None:
            if (trainer.current_epoch, batch_idx, trainer.global_rank) == (epoch, step, rank) and not marker.exists():
                wait_until_ray_took_the_last_report()
                marker.write_text("killed")
                os._exit(1)

    def wait_until_ray_took_the_last_report() -> None:
        # Ray registers a reported checkpoint when its controller next polls the workers (every 2 s); a worker
        # that dies before that restarts from the checkpoint before. The test is about the restart, not that
        # race, so the kill waits until the worker's report queue (internal, size 1) is drained, plus one poll.
        import time

        from ray.train.v2._internal.execution.context import get_train_context

        queue, give_up = get_train_context().get_result_queue(), time.monotonic() + 60
        while not queue.empty() and time.monotonic() < give_up:
            time.sleep(0.2)
        time.sleep(3)

    return ExitOnce()


def test_two_workers_train_on_a_csv_resume_after_a_worker_is_killed_and_write_a_run_folder_evaluate_reads(
        ray_cluster: str, tiny_run_args: Callable[..., list[str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 39's acceptance in one run (each start of a Ray worker group costs about 35 s on 2 cores):
    ``gpt2clf train --engine ray --workers 2`` on a CSV, with the frozen backbone's feature cache; rank 1 is
    killed in the second epoch; the run resumes from the first epoch's checkpoint, finishes, and writes a run
    folder that ``Predictor`` and ``gpt2clf evaluate`` read."""
    import gpt2clf.distributed.train as ray_training

    run_dir = tmp_path / "ray-run"
    write_keyword_csv(tmp_path / "train.csv", 150, seed=0)
    write_keyword_csv(tmp_path / "test.csv", 30, seed=1)
    data = ["--train-file", str(tmp_path / "train.csv"), "--test-file", str(tmp_path / "test.csv")]
    # The frozen backbone's feature cache: the workers compute it once (under the cache's lock) and read it.
    args = tiny_run_args(run_dir, "--freeze", "backbone", "--cache-dir", str(tmp_path / "cache"),
                         "--engine", "ray", "--workers", "2", "--address", ray_cluster, data=data, epochs=2)
    marker, attempts = tmp_path / "killed.marker", tmp_path / "attempts.txt"
    # The command's own path, with one extra Lightning callback on every worker: the kill.
    monkeypatch.setattr(ray_training, "train_on_ray", functools.partial(
        ray_training.train_on_ray, callbacks=[exit_once_callback(marker, attempts, epoch=1, step=2, rank=1)]))
    with deadline(420):
        assert main(args) == 0
    assert "training on Ray: 2 worker(s)" in capsys.readouterr().err
    assert marker.exists()  # rank 1 was killed in the second epoch...
    assert attempts.read_text().split() == ["0", "1"]  # ...and the restarted group began at the second epoch
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ray"]["workers"] == 2 and metrics["epochs_completed"] == 2
    assert metrics["test"]["documents"] == 30 and metrics["validation"]["documents"] == 30  # 20% of 150
    # The workers' validation accuracy (each rank scores half; the sampler pads the halves by repeating posts)
    # counts every document once: it equals the driver's score of the same checkpoint.
    assert metrics["best_val_acc"] == pytest.approx(metrics["validation"]["accuracy"], abs=1e-6)  # float32
    assert (run_dir / "config.yaml").is_file()
    with (run_dir / "logs" / "metrics.csv").open() as handle:
        validated = {row["epoch"] for row in csv.DictReader(handle) if row.get("val_acc")}
    assert validated == {"0", "1"}  # the first attempt's rows survive the restart
    # train, validation, test: computed once, not per worker, and reused by the restarted group
    assert len(list((tmp_path / "cache").iterdir())) == 3
    checkpoints = [path.parent for path in (run_dir / "checkpoints").rglob("checkpoint.ckpt")]
    assert 1 <= len(checkpoints) <= 2 and Path(metrics["ray"]["best_checkpoint"]) in checkpoints  # best, latest

    predictor = Predictor.from_folder(run_dir / "model")
    assert predictor.predict_proba(["a rocket", "a puck"]).shape == (2, 3)
    assert main(["evaluate", str(run_dir / "model"), "--json", "--precision", "32-true"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["num_documents"] == 30
    # The saved model runs the backbone from tokens; the run scored from fp16-stored features.
    assert abs(evaluated["accuracy"] - metrics["test"]["accuracy"]) <= 0.05


@pytest.mark.parametrize(("extra", "message"), [
    (["--workers", "0"], "--workers must be a whole number of at least 1"),
    (["--workers", "3"], "use fewer --workers"),
    (["--devices", "2"], "Ray places the training processes"),
])
def test_impossible_cluster_settings_are_refused_in_one_line(
        ray_cluster: str, tiny_run_args: Callable[..., list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        extra: list[str], message: str) -> None:
    with deadline(120):
        code = main(tiny_run_args(tmp_path / "refused", "--engine", "ray", *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message in err[-1] and err[-1].startswith("gpt2clf: error")
    assert not (tmp_path / "refused" / "model").exists()


def test_dry_run_says_what_would_run_where(tiny_run_args: Callable[..., list[str]], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with deadline(120):
        code = main([*tiny_run_args(tmp_path / "planned", "--engine", "ray", "--workers", "4",
                                    "--gpus-per-worker", "0.5", "--storage-path", "s3://bucket/runs",
                                    "--address", "ray://head:10001"), "--dry-run", "--json"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["cluster"]["workers"] == 4 and plan["cluster"]["gpus_per_worker"] == 0.5
    assert plan["cluster"]["address"] == "ray://head:10001" and plan["cluster"]["storage_path"] == "s3://bucket/runs"
    assert plan["cluster"]["accelerator"] == "gpu"  # the workers' (the estimate is this machine's)
    assert plan["estimated_seconds"]["total"] > 0
    assert not (tmp_path / "planned").exists()
