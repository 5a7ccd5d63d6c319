"""Speed where users run it: whole ``gpt2clf predict`` processes, start-up, and the training loop's overhead.

Measures, each against a baseline timed in the same run on the same machine:

* ``default_predict_speedup_vs_seed``: the whole ``gpt2clf predict MODEL --input posts.jsonl --json``
  process with default flags, against a seed-style process (the same weights, every post
  padded to 512 tokens, float32, batches of 16 in input order) on the same 96 real 20
  Newsgroups test posts, with a GPT-2-small-sized model folder (random weights: no
  pretrained GPT-2 can be downloaded here; speed does not depend on the weights' values).
* ``best_inference``: the inference configurations this machine offers (precision, int8,
  padded-token budget per batch), timed in one process; ``default_within_best`` is the
  default configuration's time over the best one's.
* ``one_text_vs_import``: ``gpt2clf predict MODEL "one short text"`` against
  ``python -c "import torch, transformers"`` (medians of 3 processes each, interleaved;
  ``--one-text --model-dir M --repeats N`` measures only this, for any model folder).
* ``framework_overhead``: training steps per second of gpt2clf's Lightning loop against a
  bare PyTorch loop over the same tiny model, batches, optimizer and clipping:
  ``1 - ours / bare``.
* ``cpu_bf16``: whether this CPU computes bf16 natively (AVX512-BF16 or AMX).

Usage::

    python benchmarks/user_speed.py --json            # about 10 minutes on 2 cores
    python benchmarks/user_speed.py --skip-predict    # only the training-loop overhead
    python benchmarks/user_speed.py --one-text --model-dir MODEL --repeats 7 --json  # start-up only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ARCHIVE = SHARED / "data" / "20news-bydate.tar.gz"
TOKENIZER = SHARED / "gpt2-tokenizer"
SEED_BATCH, SEED_LENGTH = 16, 512


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed_process(command: list[str], repeats: int = 1) -> float:
    """Median wall seconds of running ``command`` to completion (it must exit 0)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def one_text_vs_import(folder: Path, repeats: int = 3) -> dict[str, Any]:
    """Whole-process wall seconds of a one-text ``gpt2clf predict`` and of ``import torch, transformers``:
    medians of ``repeats`` each, the two interleaved so that a change in the machine's load hits both."""
    text = "My X server crashes when I resize an xterm"
    predict = [sys.executable, "-m", "gpt2clf.cli", "predict", str(folder), text]
    imports = [sys.executable, "-c", "import torch, transformers"]
    times: dict[str, list[float]] = {"predict": [], "import": []}
    for _ in range(repeats):
        times["predict"].append(timed_process(predict))
        times["import"].append(timed_process(imports))
    one, base = statistics.median(times["predict"]), statistics.median(times["import"])
    return {"import_seconds": round(base, 2), "predict_seconds": round(one, 2), "ratio": round(one / base, 2),
            "repeats": repeats, "all_seconds": {k: [round(t, 2) for t in v] for k, v in times.items()}}


def build_model_folder(folder: Path) -> Path:
    """A GPT-2-small-sized gpt2clf model folder (random weights), default architecture, 20 labels."""
    import torch
    from transformers import GPT2Config, GPT2Model

    from gpt2clf.data.batching import load_tokenizer
    from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier

    torch.manual_seed(0)
    model = GPT2Classifier(GPT2Model(GPT2Config()), ClassifierSpec(num_labels=20, n_blocks=2))
    model.save_pretrained(folder, tokenizer=load_tokenizer(str(TOKENIZER)),
                          extra={"config": {"max_length": SEED_LENGTH}})
    return folder


def write_posts(path: Path, count: int) -> list[str]:
    import random

    from gpt2clf.data.newsgroups import load_20newsgroups

    texts = load_20newsgroups("test", ARCHIVE).texts
    chosen = random.Random(0).sample(texts, count)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in chosen), encoding="utf-8")
    return chosen


def seed_pipeline(model_dir: str, posts: str) -> None:
    """The seed-style process: float32, every post padded to 512, batches of 16 in input order."""
    import torch

    from gpt2clf.data.batching import load_tokenizer
    from gpt2clf.model.classifier import GPT2Classifier

    texts = [json.loads(line)["text"] for line in Path(posts).read_text(encoding="utf-8").splitlines()]
    tokenizer = load_tokenizer(model_dir)
    model = GPT2Classifier.from_pretrained(model_dir).eval()
    with torch.no_grad():
        for start in range(0, len(texts), SEED_BATCH):
            batch = tokenizer(texts[start:start + SEED_BATCH], padding="max_length", truncation=True,
                              max_length=SEED_LENGTH, return_tensors="pt")
            probabilities = torch.softmax(model(batch["input_ids"], batch["attention_mask"]), dim=-1)
            for row in probabilities.tolist():
                print(json.dumps({"probabilities": row}))


def best_inference(model_dir: Path, texts: list[str]) -> dict[str, Any]:
    """Docs/s of each inference configuration on ``texts`` (model loaded once per configuration)."""
    from gpt2clf.infer.predictor import Predictor
    from gpt2clf.infer.runtime import cpu_has_native_bf16

    precisions = ["32-true", *(["bf16-mixed"] if cpu_has_native_bf16() else [])]
    configs = [{"precision": p, "max_batch_tokens": b} for p in precisions for b in (2048, 4096, 8192, 16384)]
    configs.append({"precision": "32-true", "int8": True, "max_batch_tokens": 4096})
    default = Predictor.from_folder(model_dir)
    results = []
    for options in [{"default": True}, *configs]:
        predictor = default if options.get("default") else Predictor.from_folder(model_dir, **options)
        predictor.predict_proba(texts[:4])  # warm-up
        started = time.perf_counter()
        predictor.predict_proba(texts)
        seconds = time.perf_counter() - started
        described = ({"precision": default.precision, "max_batch_tokens": default.max_batch_tokens, "default": True}
                     if options.get("default") else options)
        results.append({**described, "seconds": round(seconds, 2), "docs_per_s": round(len(texts) / seconds, 2)})
        log(f"inference {described}: {seconds:.1f} s")
    best = min(results, key=lambda r: r["seconds"])
    return {"configs": results, "best": best,
            "default_within_best": round(results[0]["seconds"] / best["seconds"], 3)}


def framework_overhead(steps: int = 60) -> dict[str, Any]:
    """Training steps/s: gpt2clf's Lightning loop against a bare PyTorch loop, same everything else."""
    import lightning.pytorch as pl
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2Model

    from gpt2clf.config import Config
    from gpt2clf.data.newsgroups import load_20newsgroups
    from gpt2clf.data.splits import labelled_texts
    from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier
    from gpt2clf.training.inputs import prepare_data
    from gpt2clf.training.loop import ClassificationDataModule, ClassificationModule, build_trainer
    from gpt2clf.training.optimization import lr_lambda

    news = load_20newsgroups("train", ARCHIVE)
    config = Config(backbone="unused", tokenizer=str(TOKENIZER), max_length=64, batch_size=16, epochs=1,
                    precision="32-true", learning_rate=1e-3, head_learning_rate=1e-3, seed=0)
    count = steps * config.batch_size * 5 // 4 + 64  # the validation carve-out keeps 80%
    data = prepare_data(config, labelled_texts(news.texts[:count], [news.label_names[y] for y in news.labels[:count]],
                                               label_names=news.label_names))

    def tiny_model() -> GPT2Classifier:
        torch.manual_seed(0)
        backbone = GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=128))
        return GPT2Classifier(backbone, ClassifierSpec(num_labels=20, n_embed=64, n_heads=2, n_blocks=1))

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.times.append(time.perf_counter())

    def ours() -> float:
        module = ClassificationModule(tiny_model(), config)
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = build_trainer(config.updated(epochs=1), Path(run_dir), enable_progress_bar=True)
            clock = StepClock()
            trainer.callbacks.append(clock)
            trainer.limit_val_batches = 0
            trainer.fit(module, datamodule=ClassificationDataModule(data, config))
        timed = clock.times[10:]  # after warm-up
        return (len(timed) - 1) / (timed[-1] - timed[0])

    def bare() -> float:
        model = tiny_model()
        model.train()
        datamodule = ClassificationDataModule(data, config)
        loader = datamodule._loader(data.train, train=True)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-3, fused=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("linear", 0, steps))
        times = []
        for batch in loader:
            logits = model(batch["input_ids"], batch["attention_mask"])
            loss = F.cross_entropy(logits.float(), batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            times.append(time.perf_counter())
            if len(times) >= steps:
                break
        timed = times[10:]
        return (len(timed) - 1) / (timed[-1] - timed[0])

    rates = {"ours": [], "bare": []}
    for _ in range(3):  # interleaved, the median of each
        rates["bare"].append(bare())
        rates["ours"].append(ours())
    ours_rate, bare_rate = statistics.median(rates["ours"]), statistics.median(rates["bare"])
    return {"steps_per_s_ours": round(ours_rate, 2), "steps_per_s_bare": round(bare_rate, 2),
            "framework_overhead": round(1 - ours_rate / bare_rate, 3), "steps": steps,
            "model": "GPT-2 2 layers x 64 + one 64-wide block, batch 16 x <=64 tokens, fp32"}


def machine() -> dict[str, Any]:
    """The CPU, its cores and native bf16, as gpt2clf itself sees them (``report.hardware_info``), and the date."""
    from gpt2clf.report.run_report import hardware_info

    hardware = hardware_info()
    return {"cpu": hardware["cpu"], "cores": hardware["cpu_cores"], "cpu_bf16": hardware["cpu_native_bf16"],
            "date": time.strftime("%Y-%m-%d")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--posts", type=int, default=96)
    parser.add_argument("--model-dir", type=Path, help="a model folder (default: a GPT-2-small-sized random one)")
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--one-text", action="store_true", help="only one_text_vs_import (with --model-dir)")
    parser.add_argument("--repeats", type=int, default=3, help="processes of each kind for one_text_vs_import")
    parser.add_argument("--seed-pipeline", nargs=2, metavar=("MODEL_DIR", "POSTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed_pipeline:
        seed_pipeline(*args.seed_pipeline)
        return 0
    report: dict[str, Any] = {"machine": machine()}
    report["cpu_bf16"] = report["machine"]["cpu_bf16"]
    if args.one_text:
        if args.model_dir is None:
            parser.error("--one-text needs --model-dir")
        report["one_text_vs_import"] = one_text_vs_import(args.model_dir, args.repeats)
        print(json.dumps(report, indent=2) if args.json else report)
        return 0
    if not args.skip_predict:
        with tempfile.TemporaryDirectory(prefix="gpt2clf-speed-") as scratch:
            folder = args.model_dir or build_model_folder(Path(scratch) / "model")
            posts = Path(scratch) / "posts.jsonl"
            texts = write_posts(posts, args.posts)
            gpt2clf = [sys.executable, "-m", "gpt2clf.cli"]
            log("seed-style process ...")
            seed = timed_process([sys.executable, __file__, "--seed-pipeline", str(folder), str(posts)])
            log(f"seed-style: {seed:.1f} s; default gpt2clf predict ...")
            default = timed_process([*gpt2clf, "predict", str(folder), "--input", str(posts), "--json"])
            log(f"default: {default:.1f} s")
            report["predict_processes"] = {"posts": len(texts), "seed_seconds": round(seed, 1),
                                           "default_seconds": round(default, 1)}
            report["default_predict_speedup_vs_seed"] = round(seed / default, 2)
            report["best_inference"] = best_inference(folder, texts)
            report["one_text_vs_import"] = one_text_vs_import(folder, args.repeats)
            log(f"one text: {report['one_text_vs_import']}")
    if not args.skip_overhead:
        with contextlib.redirect_stdout(sys.stderr):  # Lightning's banners: keep stdout for the JSON
            report.update(framework_overhead())
        log(f"framework overhead: {report['framework_overhead']}")
    print(json.dumps(report, indent=2) if args.json else report)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    raise SystemExit(main())
