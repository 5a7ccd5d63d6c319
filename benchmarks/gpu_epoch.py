"""One epoch of the ``blog`` preset on real 20 Newsgroups, timed where the time goes.

Reports, for the training epoch (train split less the 20% validation carve-out) and its
validation pass:

* useful (non-pad) tokens per second of training;
* MFU: model FLOPs (6 x non-embedding parameters per token, plus attention) per second over
  the device's dense bf16 peak (``--peak-tflops``; the default is read from the GPU name:
  989 for H100/H200 SXM, 312 for A100);
* the time split into data (waiting for the next batch), forward + backward, optimizer step
  and validation, from Lightning callbacks with ``torch.cuda.synchronize`` at each boundary
  (the synchronisation itself costs a little; the numbers are for finding the bottleneck);
* a ``torch.profiler`` table of the top operators over a few steps.

The backbone is a random GPT-2-small-sized folder (speed does not depend on the weights).

Usage::

    python benchmarks/gpu_epoch.py --json                   # on a CUDA machine
    python benchmarks/gpu_epoch.py --json --compile         # with torch.compile
    python benchmarks/gpu_epoch.py --tiny --max-docs 256    # a smoke run on a CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PEAKS_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="a tiny GPT-2 (smoke run)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--max-docs", type=int, default=None, help="training documents (default: all 9,051)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--profile-steps", type=int, default=5)
    args = parser.parse_args()

    import lightning.pytorch as pl
    import torch
    from transformers import GPT2Config, GPT2Model

    from gpt2clf.config import Config
    from gpt2clf.training.inputs import build_model, prepare_data
    from gpt2clf.training.loop import ClassificationDataModule, ClassificationModule, build_trainer
    from gpt2clf.training.plan import resolved_config

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class Clock(pl.Callback):
        """Wall time per phase; every boundary synchronises the device."""

        def __init__(self) -> None:
            self.totals = {"data": 0.0, "forward_backward": 0.0, "optimizer": 0.0, "validation": 0.0}
            self.mark = None
            self.steps = 0

        def _lap(self, phase: str) -> None:
            sync()
            now = time.perf_counter()
            if self.mark is not None and phase:
                self.totals[phase] += now - self.mark
            self.mark = now

        def on_train_epoch_start(self, trainer, module) -> None:
            self._lap("")

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self._lap("data")

        def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
            self._lap("forward_backward")

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self._lap("optimizer")
            self.steps += 1

        def on_validation_start(self, trainer, module) -> None:
            self._lap("")

        def on_validation_end(self, trainer, module) -> None:
            self._lap("validation")

    with tempfile.TemporaryDirectory(prefix="gpt2clf-gpu-epoch-") as scratch:
        backbone = Path(scratch) / "gpt2"
        torch.manual_seed(0)
        shape = GPT2Config(n_layer=2, n_embd=64, n_head=2) if args.tiny else GPT2Config()
        GPT2Model(shape).save_pretrained(backbone)
        config = resolved_config(Config.from_preset("blog").updated(
            backbone=str(backbone), tokenizer=str(SHARED / "gpt2-tokenizer"),
            data_dir=str(SHARED / "data" / "20news-bydate.tar.gz"), epochs=1, precision="auto",
            max_train_samples=args.max_docs, compile=args.compile,
            **({"n_embed": 64, "n_heads": 2} if args.tiny else {})))
        data = prepare_data(config)
        model = build_model(config, data.label_names)
        if config.compile:
            model.compile(dynamic=True)
        module = ClassificationModule(model, config)
        clock = Clock()
        trainer = build_trainer(config, Path(scratch) / "run", enable_progress_bar=False)
        trainer.callbacks.append(clock)
        started = time.perf_counter()
        trainer.fit(module, datamodule=ClassificationDataModule(data, config))
        sync()
        epoch_seconds = time.perf_counter() - started

        tokens = sum(data.train.lengths)
        counts = model.parameter_counts()
        embeddings = sum(p.numel() for p in model.backbone.get_input_embeddings().parameters())
        non_embedding = counts["total"] - embeddings
        layers = model.backbone.config.n_layer + config.n_blocks
        mean_length = tokens / max(1, len(data.train))
        flops = tokens * (6 * non_embedding + 12 * layers * model.spec.n_embed * mean_length)
        train_seconds = clock.totals["data"] + clock.totals["forward_backward"] + clock.totals["optimizer"]
        name = torch.cuda.get_device_name() if cuda else "cpu"
        peak = args.peak_tflops or next((v for k, v in PEAKS_TFLOPS.items() if k in name), None)
        report: dict[str, Any] = {
            "device": name, "precision": config.precision, "compile": config.compile,
            "train_documents": len(data.train), "validation_documents": len(data.validation),
            "train_tokens": tokens, "steps": clock.steps, "epoch_seconds_with_validation": round(epoch_seconds, 2),
            "train_seconds": round(train_seconds, 2), "tokens_per_s": round(tokens / max(train_seconds, 1e-9)),
            "time_split_seconds": {k: round(v, 2) for k, v in clock.totals.items()},
            "model_tflops_per_s": round(flops / max(train_seconds, 1e-9) / 1e12, 2),
            "mfu": round(flops / max(train_seconds, 1e-9) / (peak * 1e12), 3) if peak else None,
        }

        # A few profiled steps of the same loop, outside Lightning's timing.
        from torch.profiler import ProfilerActivity, profile

        loader = ClassificationDataModule(data, config)._loader(data.train, train=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        device = torch.device("cuda" if cuda else "cpu")
        model.to(device).train()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        from gpt2clf.infer.runtime import autocast_context

        with profile(activities=activities) as prof:
            for step, batch in enumerate(loader):
                if step >= args.profile_steps:
                    break
                with autocast_context(device, config.precision):
                    logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
                torch.nn.functional.cross_entropy(logits.float(), batch["labels"].to(device)).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sync()
        sort = "cuda_time_total" if cuda else "cpu_time_total"
        report["profile_top_ops"] = prof.key_averages().table(sort_by=sort, row_limit=15)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(report.pop("profile_top_ops"))
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    raise SystemExit(main())
