"""Batch prediction on Ray Data (``gpt2clf predict --engine ray``) on a local 2-CPU Ray cluster.

One module-scoped cluster (``ray.init(num_cpus=2)``: one model actor, one CPU left for reading); tiny
random models. Every test runs under a deadline (:func:`deadline`; pytest-timeout is not installed), so
a hung Ray job fails its test instead of the suite.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from gpt2clf.data.labelled_files import join_fields
from gpt2clf.distributed.settings import ClusterSettings
from gpt2clf.errors import ConfigError, UserError

ray = pytest.importorskip("ray")

TEXT_COLUMNS = ["subject", "body"]
FAULTS = Path(__file__).parent / "ray_faults"  # a sitecustomize.py that makes model actors die


def deadline(seconds: float) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Run the test in a thread and fail it if it has not finished after ``seconds``."""

    def wrap(test: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            outcome: dict[str, BaseException] = {}

            def target() -> None:
                try:
                    test(*args, **kwargs)
                except BaseException as err:  # re-raised in the test thread
                    outcome["error"] = err

            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            thread.join(seconds)
            if thread.is_alive():
                pytest.fail(f"{test.__name__} did not finish within {seconds} s (a hung Ray job?)")
            if "error" in outcome:
                raise outcome["error"]

        return run

    return wrap


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    """A local Ray cluster of 2 CPUs for this module (never 1: a pool and its reads need one each)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def save_tiny_model(folder: Path, backbone: Path, tokenizer: Any, config: dict[str, Any], *,
                    thresholds: dict[str, float] | None = None, fusion_texts: list[str] | None = None) -> Path:
    """A random 3-label model folder over the tiny backbone, with ``config`` recorded (and fusion)."""
    import torch

    from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier
    from gpt2clf.model.fusion import Fusion, TfidfModel

    torch.manual_seed(1)
    spec = ClassifierSpec(num_labels=3, label_names=["a", "b", "c"], n_embed=32, n_heads=2, n_blocks=1)
    extra: dict[str, Any] = {"config": config}
    if thresholds:
        extra["thresholds"] = thresholds
    fusion = None
    if fusion_texts:
        tfidf = TfidfModel.fit(fusion_texts, [i % 3 for i in range(len(fusion_texts))], 3)
        fusion = Fusion(tfidf=tfidf, weight=0.6, mode="probabilities", validation={})
    GPT2Classifier.from_backbone(str(backbone), spec).save_pretrained(
        folder, tokenizer=tokenizer, extra=extra, write_more=fusion.save if fusion else None)
    return folder


def sentence(i: int) -> str:
    topics = ["hockey playoffs and the goalie", "orbit of the space shuttle", "graphics card drivers for X11"]
    return f"post {i} about the {topics[i % 3]} " + "and more words " * (i % 5)


def write_three_formats(folder: Path) -> dict[str, str | None]:
    """A CSV, a JSONL and a Parquet file of (id, subject, body), some texts blank or null; id -> joined text."""
    folder.mkdir(parents=True)
    expected: dict[str, str | None] = {}
    for prefix, write in (("c", lambda f: f.to_csv(folder / "a.csv", index=False)),
                          ("j", lambda f: f.to_json(folder / "b.jsonl", orient="records", lines=True)),
                          ("p", lambda f: f.to_parquet(folder / "c.parquet"))):
        ids = [f"{prefix}{i}" for i in range(8)]
        subjects: list[str | None] = [f"subject {i}" for i in range(8)]
        bodies: list[str | None] = [sentence(i) for i in range(8)]
        subjects[3], bodies[3] = ("", "   ") if prefix == "c" else (None, None)  # no text at all
        bodies[5] = "" if prefix == "c" else None  # a subject alone still is a text
        write(pd.DataFrame({"id": ids, "subject": subjects, "body": bodies}, dtype=object))
        for i, subject, body in zip(ids, subjects, bodies, strict=True):
            blank = not (subject or "").strip() and not (body or "").strip()
            expected[i] = None if blank else join_fields(TEXT_COLUMNS, [subject or "", body or ""])
    return expected


def expected_probabilities(model_dir: Path, texts: list[str]) -> np.ndarray:
    from gpt2clf.infer.predictor import Predictor

    predictor = Predictor.from_folder(model_dir, precision="32-true")
    return predictor.predict_proba(texts).numpy()


def check_predictions(output: pd.DataFrame, model_dir: Path, texts: dict[Any, str | None], key: str = "id") -> None:
    """Every id once; rows without text have an error and no label; the others equal Predictor's, in float32
    (Parquet columns are float32; ``take_all`` gives Python floats of the same values)."""
    assert sorted(output[key]) == sorted(texts) and output[key].is_unique
    bad = output[output[key].map(lambda k: texts[k] is None)]
    assert (bad["error"] == "empty text").all() and bad["label"].isna().all() and bad["prob_a"].isna().all()
    good = output[output[key].map(lambda k: texts[k] is not None)].sort_values(key)
    assert good["error"].isna().all() and len(good) > 0
    want = expected_probabilities(model_dir, [texts[k] for k in good[key]])
    got = good[["prob_a", "prob_b", "prob_c"]].to_numpy()
    assert np.abs(got - want).max() <= 1e-6 and np.array_equal(got.astype(np.float32), got)
    assert list(good["label"]) == [["a", "b", "c"][i] for i in want.argmax(axis=1)]


@deadline(120)
def test_csv_jsonl_and_parquet_rows_match_predictor_once_each_and_blank_rows_get_errors(
        ray_cluster: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    from gpt2clf.distributed import PredictOptions, predict_files

    texts = write_three_formats(tmp_path / "in")
    summary = predict_files(tiny_model_dir, str(tmp_path / "in"), str(tmp_path / "out"), text_column=TEXT_COLUMNS,
                            id_column="id", options=PredictOptions(precision="32-true", rows_per_call=5))
    output = pd.read_parquet(tmp_path / "out")
    check_predictions(output, tiny_model_dir, texts)
    assert output["prob_a"].dtype == np.float32
    assert (summary.rows_read, summary.rows_written, summary.rows_with_errors) == (24, 24, 3)
    assert summary.output == str(tmp_path / "out") and "wrote 24 (3 with errors)" in summary.line()


def fault_options(fault: dict[str, str]) -> Any:
    """PredictOptions whose model actors load tests/ray_faults/sitecustomize.py with ``fault`` set."""
    from gpt2clf.distributed import PredictOptions

    path = os.pathsep.join(p for p in [str(FAULTS), os.environ.get("PYTHONPATH", "")] if p)
    env = {"PYTHONPATH": path, **fault}
    return PredictOptions(precision="32-true", rows_per_call=4, ray_remote_args={"runtime_env": {"env_vars": env}})


def write_posts(path: Path, count: int) -> dict[str, str | None]:
    texts: dict[str, str | None] = {f"id{i}": sentence(i) for i in range(count)}
    pd.DataFrame({"id": list(texts), "text": list(texts.values())}).to_csv(path, index=False)
    return texts


@deadline(150)
def test_an_actor_that_exits_mid_run_is_restarted_and_every_id_comes_out_once(
        ray_cluster: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    from gpt2clf.distributed import predict_files

    texts = write_posts(tmp_path / "posts.csv", 40)
    marker = tmp_path / "exited"
    options = fault_options({"GPT2CLF_FAULT": "exit", "GPT2CLF_FAULT_AT": "3", "GPT2CLF_FAULT_MARKER": str(marker)})
    summary = predict_files(tiny_model_dir, str(tmp_path / "posts.csv"), str(tmp_path / "out"), id_column="id",
                            options=options)
    assert marker.exists()  # an actor did die on its third batch
    check_predictions(pd.read_parquet(tmp_path / "out"), tiny_model_dir, texts)
    assert summary.rows_written == 40


@deadline(150)
def test_an_actor_killed_from_outside_is_restarted_and_every_id_comes_out_once(
        ray_cluster: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    from gpt2clf.distributed import predict_files

    texts = write_posts(tmp_path / "posts.csv", 40)
    pid_file = tmp_path / "actor.pid"
    options = fault_options({"GPT2CLF_FAULT": "slow", "GPT2CLF_FAULT_SLEEP": "0.5", "GPT2CLF_FAULT_MARKER":
                             str(pid_file)})
    result: dict[str, Any] = {}
    job = threading.Thread(target=lambda: result.update(summary=predict_files(
        tiny_model_dir, str(tmp_path / "posts.csv"), str(tmp_path / "out"), id_column="id", options=options)))
    job.start()
    for _ in range(1200):
        if pid_file.exists() or not job.is_alive():
            break
        time.sleep(0.1)
    victim = int(pid_file.read_text())
    os.kill(victim, signal.SIGKILL)
    job.join(120)
    assert not job.is_alive() and "summary" in result
    assert int(pid_file.read_text()) != victim  # a new actor finished the job
    check_predictions(pd.read_parquet(tmp_path / "out"), tiny_model_dir, texts)


@deadline(120)
def test_the_model_reaches_actors_that_cannot_see_its_folder_and_fusion_still_matches(
        ray_cluster: Any, tiny_backbone: Path, tokenizer: Any, tmp_path: Path) -> None:
    from gpt2clf.distributed import PredictOptions, predict_dataset
    from gpt2clf.errors import PerformanceWarning

    texts = {f"k{i}": sentence(i) for i in range(12)}
    model = save_tiny_model(tmp_path / "model", tiny_backbone, tokenizer, {"max_length": 64, "fusion": "tfidf"},
                            fusion_texts=[sentence(i) for i in range(30)])
    rows = ray.data.from_items([{"key": k, "text": t} for k, t in texts.items()])
    with pytest.warns(PerformanceWarning, match="would leave no CPU"):
        lazy = predict_dataset(model, rows, text_column="text", id_column="key", workers=2,
                               options=PredictOptions(precision="32-true"))
    hidden = model.rename(tmp_path / "moved-away")  # shipped already; nothing may read the old path now
    output = pd.DataFrame(lazy.take_all())
    assert not model.exists()
    check_predictions(output, hidden, texts, key="key")


@deadline(120)
def test_multi_label_model_with_chunked_long_documents_matches_predictor_labels_and_probabilities(
        ray_cluster: Any, tiny_backbone: Path, tokenizer: Any, tmp_path: Path) -> None:
    from gpt2clf.distributed import PredictOptions, predict_dataset
    from gpt2clf.infer.predictor import Predictor

    config = {"max_length": 16, "multi_label": True, "long_documents": "chunks", "chunk_stride": 12,
              "max_chunks": 4}
    model = save_tiny_model(tmp_path / "model", tiny_backbone, tokenizer, config,
                            thresholds={"a": 0.3, "b": 0.5, "c": 0.7})
    texts = [sentence(i) * 2 for i in range(10)]  # 30-80 tokens: several 16-token windows each
    rows = ray.data.from_items([{"n": i, "text": t} for i, t in enumerate(texts)])
    output = pd.DataFrame(predict_dataset(model, rows, options=PredictOptions(precision="32-true")).take_all())
    output = output.sort_values("n")
    assert list(output["n"]) == list(range(10)) and "text" not in output  # kept columns: all but the text
    want = list(Predictor.from_folder(model, precision="32-true").predict(texts))
    got = output[["prob_a", "prob_b", "prob_c"]].to_numpy()
    assert np.abs(got - np.array([[p.probabilities[k] for k in "abc"] for p in want])).max() <= 1e-6
    assert [list(labels) for labels in output["labels"]] == [p.labels for p in want]
    assert any(p.labels for p in want)  # the thresholds chose something


def run_cli(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpt2clf.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@deadline(240)
def test_cli_numbers_rows_across_files_refuses_a_rerun_and_overwrites_without_duplicates(
        ray_cluster: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    first = [sentence(i) for i in range(5)]
    second = [sentence(i) for i in range(5, 12)]
    pd.DataFrame({"text": first}).to_csv(folder / "1.csv", index=False)
    (folder / "2.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in second))
    address = ray.get_runtime_context().gcs_address
    args = ["predict", str(tiny_model_dir), "--engine", "ray", "--address", address, "--input", str(folder),
            "--output", str(tmp_path / "out"), "--precision", "32-true", "--workers", "1"]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "read 12 rows, wrote 12 (0 with errors)" in done.stdout
    texts: dict[int, str | None] = dict(enumerate(first + second))
    check_predictions(pd.read_parquet(tmp_path / "out"), tiny_model_dir, texts, key="row")

    refused = run_cli(*args)
    assert refused.returncode == 2 and "not empty" in refused.stderr and "--overwrite" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    again = run_cli(*args, "--overwrite", "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["rows_written"] == 12
    check_predictions(pd.read_parquet(tmp_path / "out"), tiny_model_dir, texts, key="row")


@deadline(60)
def test_without_ray_the_command_says_how_to_install_it_in_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("text\nhello\n")
    code = ("import sys; sys.modules['ray'] = None; from gpt2clf.cli import main; "
            f"sys.exit(main(['predict', {str(tiny_model_dir)!r}, '--engine', 'ray', '--input', "
            f"{str(tmp_path / 'in.csv')!r}, '--output', {str(tmp_path / 'out')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == 'gpt2clf: error: --engine ray needs Ray: pip install "gpt2clf[ray]"'
    assert not (tmp_path / "out").exists()


@deadline(30)
def test_output_folder_with_other_files_is_never_replaced(tmp_path: Path) -> None:
    from gpt2clf.distributed.sources import check_output_folder

    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        check_output_folder(str(tmp_path), overwrite=False)
    with pytest.raises(UserError, match=r"mine\.txt"):
        check_output_folder(str(tmp_path), overwrite=True)
    check_output_folder(str(tmp_path / "new"), overwrite=False)  # a new folder is fine


@deadline(30)
def test_the_pool_leaves_a_cpu_for_reading_and_a_one_cpu_cluster_is_refused() -> None:
    from gpt2clf.distributed.cluster import choose_pool_size

    assert choose_pool_size(None, {"CPU": 8.0})[0] == 7
    assert choose_pool_size(3, {"CPU": 8.0})[0] == 3
    size, why = choose_pool_size(2, {"CPU": 2.0})
    assert size == 1 and "wait forever" in why
    assert choose_pool_size(None, {"CPU": 16.0, "GPU": 2.0}, gpus_per_worker=0.5)[0] == 4
    with pytest.raises(ConfigError, match="1 CPU"):
        choose_pool_size(None, {"CPU": 1.0})
    with pytest.raises(ConfigError, match="GPU"):
        choose_pool_size(None, {"CPU": 4.0}, gpus_per_worker=1.0)
    assert ClusterSettings(engine="ray", workers=2).workers == 2


@deadline(30)
def test_input_files_come_sorted_from_a_folder_or_a_glob_without_hidden_or_other_files(tmp_path: Path) -> None:
    from gpt2clf.distributed.sources import list_input_files
    from gpt2clf.errors import DataError

    for name in ["b.csv", "a.jsonl", ".hidden.csv", "_SUCCESS", "notes.txt"]:
        (tmp_path / name).write_text("text\nx\n")
    assert list_input_files(str(tmp_path)) == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.csv")]
    assert list_input_files(str(tmp_path / "*.csv")) == [str(tmp_path / "b.csv")]
    assert list_input_files(str(tmp_path / "b.csv")) == [str(tmp_path / "b.csv")]
    with pytest.raises(DataError, match="no such file"):
        list_input_files(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no CSV"):
        list_input_files(str(tmp_path / "*.txt"))
