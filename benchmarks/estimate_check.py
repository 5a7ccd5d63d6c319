"""How far is ``--dry-run``'s training rate from the real training loop's? One accuracy run, measured.

The time estimate (:func:`gpt2clf.training.plan.estimate_seconds`) times a training step of windows of
median length (4 rows, then as many rows as a real step has, within ``REAL_BATCH_SECONDS``) and
scales it to every epoch's tokens. This script repeats that
measurement several times, then runs the real training loop (the run's own dataloader,
collator, forward, loss, backward, gradient clipping and AdamW step) for a number of batches,
timing each part, and prints both rates in tokens per second, and each whole-run estimate in minutes
(against the wall time ACCURACY.md gives for the run). It never changes the run's
results and saves nothing but the feature cache the run would compute anyway.

Usage (the feature cache of the run must exist or is computed first, which can take an hour on
the full data; ``--max-train-samples`` measures on fewer posts)::

    python benchmarks/estimate_check.py --run r3-frozen-chunks-logsumexp --cache-dir /path/to/cache
    python benchmarks/estimate_check.py --run r3-frozen-chunks-logsumexp --max-train-samples 1000 --json
    # the estimator alone, as it was before it timed real-shaped batches (4 rows only):
    python benchmarks/estimate_check.py --run r3-frozen-chunks-logsumexp --steps 0 --real-batch-seconds 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def estimator_calls(setup: Any, calls: int) -> list[dict[str, Any]]:
    """The estimate, ``calls`` times, as ``fit`` makes it for an accuracy run (no report: accuracy.py writes
    none). A feature cache that exists already counts as no time, as in the run."""
    from gpt2clf.training.plan import estimate_seconds

    return [estimate_seconds(setup) for _ in range(calls)]


def training_loop_rates(config: Any, model: Any, prepared: Any, steps: int) -> dict[str, Any]:
    """Time ``steps`` real training batches (after two warm-up batches), part by part."""
    import torch
    import torch.nn.functional as F

    from gpt2clf.training.loop import ClassificationDataModule, ClassificationModule

    module = ClassificationModule(model, config, prepared.inputs)
    batches = iter(ClassificationDataModule(prepared, config).train_dataloader())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    model.train()
    model.adapter.set_train_mode(True)
    seconds = dict.fromkeys(("load", "forward", "backward", "optimizer"), 0.0)
    tokens = padded = windows = timed_steps = 0
    for step in range(steps + 2):
        started = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            break
        loaded = time.perf_counter()
        loss = F.cross_entropy(module(batch).float(), batch["labels"])
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        if config.gradient_clip:
            torch.nn.utils.clip_grad_norm_(params, config.gradient_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = time.perf_counter()
        if step < 2:  # warm-up: first-call allocations
            continue
        for part, (a, b) in {"load": (started, loaded), "forward": (loaded, forward), "backward": (forward, backward),
                             "optimizer": (backward, done)}.items():
            seconds[part] += b - a
        tokens += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
        windows += batch["attention_mask"].shape[0]
        timed_steps += 1
    total = sum(seconds.values())
    return {"steps": timed_steps, "rows_per_step": round(windows / max(timed_steps, 1), 1),
            "tokens": tokens, "padded_tokens": padded, "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "tokens_per_second": round(tokens / total) if total else None,
            "forward_backward_tokens_per_second": round(tokens / (seconds["forward"] + seconds["backward"]))
            if tokens else None}


def main(argv: list[str] | None = None) -> int:
    from accuracy import RUNS, run_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python benchmarks/estimate_check.py "
                                            "--run r3-frozen-chunks-logsumexp --max-train-samples 1000")
    parser.add_argument("--run", required=True, choices=sorted(RUNS), help="a run of benchmarks/accuracy.py")
    parser.add_argument("--cache-dir", help="feature cache root (as accuracy.py's --cache-dir)")
    parser.add_argument("--max-train-samples", type=int, help="measure on fewer training posts")
    parser.add_argument("--estimates", type=int, default=5, help="estimator calls (default 5)")
    parser.add_argument("--steps", type=int, default=40, help="real training batches to time (default 40; 0: none)")
    parser.add_argument("--real-batch-seconds", type=float,
                        help="the estimator's budget for its real-shaped batch (default gpt2clf's "
                             "REAL_BATCH_SECONDS; 0 times the 4-row batch only, as the estimator did before)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from gpt2clf.infer.runtime import cpu_has_native_bf16
    from gpt2clf.training import plan as preflight
    from gpt2clf.training.inputs import build_model, choose_inputs, prepare_data
    from gpt2clf.training.plan import RunSetup, resolved_config

    config = resolved_config(run_config(args.run, args.cache_dir))
    if args.max_train_samples:
        config = dataclasses.replace(config, max_train_samples=args.max_train_samples, max_eval_samples=200)
    prepared = prepare_data(config, None)
    model = build_model(config, prepared.label_names)
    prepared.inputs = choose_inputs(config, model)
    if args.real_batch_seconds is not None:
        preflight.REAL_BATCH_SECONDS = args.real_batch_seconds
    estimates = estimator_calls(RunSetup(config, model, prepared, prepared.inputs), args.estimates)
    train_rates = [float(estimate["tokens_per_second"]["train"]) for estimate in estimates]
    minutes = [round(estimate["total"] / 60, 1) for estimate in estimates]
    loop = None
    if args.steps:
        prepared.inputs.prepare(prepared, model, show_progress=False)  # the feature cache pass, if the run has one
        loop = training_loop_rates(config, model, prepared, args.steps)
    result = {"run": args.run, "precision": config.precision, "native_bf16": cpu_has_native_bf16(),
              "real_batch_seconds": preflight.REAL_BATCH_SECONDS,
              "estimator_tokens_per_second": train_rates, "estimator_median": statistics.median(train_rates),
              "estimated_minutes": minutes,
              "training_loop": loop, "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"estimator (real-shaped batch within {preflight.REAL_BATCH_SECONDS:g} s), training tokens/s: "
              f"{', '.join(f'{rate:.0f}' for rate in train_rates)} (median {result['estimator_median']:.0f})")
        print(f"the whole run's estimate, minutes: {', '.join(f'{m:g}' for m in minutes)} "
              f"(median {statistics.median(minutes):g})")
        if loop:
            print(f"real training loop: {loop['tokens_per_second']} tokens/s over {loop['steps']} batches of "
                  f"{loop['rows_per_step']} rows (forward + backward alone "
                  f"{loop['forward_backward_tokens_per_second']}); seconds by part: {loop['seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
