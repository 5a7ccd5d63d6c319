"""Time per epoch of ``gpt2clf train --engine ray`` with 1 and 2 workers, beside a local one-process run.

A random GPT-2 of the size the flags give (default: 2 layers, 128 wide) is built and saved to a temporary
folder; each run trains it on the first ``--documents`` 20 Newsgroups posts (``--max-length`` tokens each)
for ``--epochs`` epochs, fully fine-tuned, float32, and times every epoch on rank 0 (training and its
validation pass) with a Lightning callback, and the torch threads each process computes with (the local
run goes twice: torch's default, one thread per core, and one thread, as a 1-CPU Ray worker has). It
also reports Ray's start-up (``ray.init``), the time from ``train_on_ray`` to the first training step
(data prepared on the driver, the worker group starting, data and model reaching the workers), and
each run's wall time. All runs share one local Ray cluster of ``--cpus`` CPUs.

What this can show depends on the machine: on 2 cores, 2 workers share the same cores that 1 worker
could use, so no speed-up is expected; the figures show what Ray costs (start-up, the gradient
all-reduce, checkpoints each epoch), not how it scales.

Usage::

    python benchmarks/ray_train.py                        # 1 and 2 workers, small model
    python benchmarks/ray_train.py --workers 1 2 4 --cpus 4 --documents 2000 --layers 4 --width 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "20news-bydate.tar.gz"
TOKENIZER = REPO.parent / "shared" / "gpt2-tokenizer"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def epoch_timer(log: Path) -> Any:
    """A Lightning callback that appends each epoch's seconds on rank 0 to ``log`` (JSON lines), and the
    moment training starts. Defined in a function: Ray pickles it by value."""
    import lightning.pytorch as pl
    import torch

    class EpochTimer(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.global_rank == 0:
                with log.open("a") as handle:
                    handle.write(json.dumps({"train_start": time.time(), "threads": torch.get_num_threads()}) + "\n")

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.global_rank == 0:  # after the epoch's validation pass (Lightning runs it first)
                with log.open("a") as handle:
                    handle.write(json.dumps({"epoch": trainer.current_epoch,
                                             "seconds": time.perf_counter() - self.started}) + "\n")

    return EpochTimer()


def run_config(args: argparse.Namespace, backbone: Path) -> Any:
    from gpt2clf import Config

    return Config(backbone=str(backbone), tokenizer=str(TOKENIZER), data_dir=str(ARCHIVE),
                  max_train_samples=args.documents, max_eval_samples=args.eval_documents,
                  max_length=args.max_length, epochs=args.epochs, batch_size=args.batch_size, n_embed=args.width,
                  n_heads=4, n_blocks=1, pooling="mean", precision="32-true", freeze="none", feature_cache=False,
                  fusion="none", learning_rate=1e-3, head_learning_rate=1e-3)


def timed_run(args: argparse.Namespace, backbone: Path, workers: int | None, folder: Path) -> dict[str, Any]:
    """One run (``workers`` None: the local one-process ``train``); its epochs and wall times."""
    from gpt2clf.distributed import ClusterSettings, train_on_ray
    from gpt2clf.training.loop import train

    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"epochs-{workers or 'local'}.jsonl"
    started_wall, started = time.time(), time.perf_counter()
    if workers is None:
        import lightning.pytorch as pl

        timer = epoch_timer(log)
        original = pl.Trainer.__init__

        def with_timer(self: pl.Trainer, *a: Any, **kw: Any) -> None:  # the local run has no callbacks argument
            original(self, *a, **{**kw, "callbacks": [*kw.get("callbacks", []), timer]})

        pl.Trainer.__init__ = with_timer
        try:
            train(run_config(args, backbone), folder / "local", enable_progress_bar=False, report=False)
        finally:
            pl.Trainer.__init__ = original
    else:
        train_on_ray(run_config(args, backbone), folder / f"ray-{workers}", ClusterSettings(engine="ray",
                     workers=workers), report=False, callbacks=[epoch_timer(log)])
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    start = next(r["train_start"] for r in rows if "train_start" in r)
    threads = next(r["threads"] for r in rows if "threads" in r)
    return {"workers": workers or "local (1 process)", "torch_threads_each": threads,
            "wall_s": round(time.perf_counter() - started, 1), "to_first_step_s": round(start - started_wall, 1),
            "epoch_s": [round(r["seconds"], 2) for r in rows if "epoch" in r]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="the local Ray cluster's CPUs")
    parser.add_argument("--documents", type=int, default=400)
    parser.add_argument("--eval-documents", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--no-local", action="store_true", help="skip the local one-process run")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import ray
    import torch
    from transformers import GPT2Config, GPT2Model

    with tempfile.TemporaryDirectory(prefix="gpt2clf-ray-bench-") as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        GPT2Model(GPT2Config(n_layer=args.layers, n_embd=args.width, n_head=4, n_positions=max(args.max_length, 64))
                  ).save_pretrained(folder / "backbone")
        print(f"{cpu_model()}, {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f} at start; "
              f"GPT-2 {args.layers} layers x {args.width}; {args.documents} posts x {args.max_length} tokens, "
              f"batch {args.batch_size}, {args.epochs} epochs, float32", flush=True)
        results = []
        # The local run with torch's default threads (one per core), then with one thread: a Ray worker
        # with 1 CPU runs one (Ray sets OMP_NUM_THREADS to the worker's CPUs).
        for threads in ([] if args.no_local else [torch.get_num_threads(), 1]):
            torch.set_num_threads(threads)
            results.append(timed_run(args, folder / "backbone", None, folder / f"threads-{threads}"))
            print(json.dumps(results[-1]), flush=True)
        started = time.perf_counter()
        ray.init(num_cpus=args.cpus, log_to_driver=False)
        print(json.dumps({"ray_init_s": round(time.perf_counter() - started, 1)}), flush=True)
        try:
            for workers in args.workers:
                results.append(timed_run(args, folder / "backbone", workers, folder))
                print(json.dumps(results[-1]), flush=True)
        finally:
            ray.shutdown()
        print(f"load {os.getloadavg()[0]:.2f} at the end", flush=True)


if __name__ == "__main__":
    sys.exit(main())
