"""Inference speed of a 12 x 768 backbone: GPT-2 small against all-mpnet-base-v2, on this CPU.

Why: issue 25 found that ``--dry-run`` with all-mpnet-base-v2 estimated 8.7 h of evaluation where
a GPT-2-small-sized model was estimated at 1.5 h, though the two have the same matmul shapes.
This script times the backbone forward pass alone (no blocks, no head), in inference mode, for:

* ``gpt2``: ``transformers.GPT2Model(GPT2Config())`` (random weights, GPT-2 small's shape), SDPA;
* ``mpnet-transformers``: ``transformers.MPNetModel`` loaded from the MPNet folder (the model
  ``gpt2clf train`` builds; transformers' MPNet has no SDPA path, so its attention is eager);
* ``mpnet-native``: :class:`gpt2clf.model.mpnet_body.MPNetBody` (what ``predict``, ``evaluate`` and
  ``serve`` build from a model folder; SDPA with MPNet's position bias as an additive mask).

Each is timed in float32 and, where the CPU has native bf16 (AVX512-BF16 or AMX), under bf16
autocast too (on AVX2 bf16 is emulated and slow, so it is skipped unless ``--bf16`` forces it).
Rounds are interleaved (one batch of each model in turn), so load from other processes falls
on every model alike; the figure is the median tokens per second over the rounds.

Usage::

    python benchmarks/backbones.py mpnet       # prints the MPNet folder
    python benchmarks/backbone_speed.py --mpnet ~/.cache/gpt2clf/backbones/all-mpnet-base-v2 \\
        --batch 8 --length 512 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch


def cpu_facts() -> dict[str, Any]:
    """The CPU's model name, thread count and whether it has native bf16 (as gpt2clf's reports say)."""
    from gpt2clf.report.run_report import hardware_info

    hardware = hardware_info()
    return {"cpu": hardware["cpu"], "threads": torch.get_num_threads(), "native_bf16": hardware["cpu_native_bf16"]}


def build_models(mpnet_folder: str) -> dict[str, torch.nn.Module]:
    from transformers import AutoModel, GPT2Config, GPT2Model

    from gpt2clf.model.mpnet_body import MPNetBody

    torch.manual_seed(0)
    models: dict[str, torch.nn.Module] = {"gpt2": GPT2Model(GPT2Config(attn_implementation="sdpa"))}
    mpnet = AutoModel.from_pretrained(mpnet_folder, dtype=torch.float32)
    models["mpnet-transformers"] = mpnet
    native = MPNetBody(mpnet.config.to_dict())
    native.load_state_dict(mpnet.state_dict())  # the same parameter names and shapes
    models["mpnet-native"] = native
    return {name: model.eval() for name, model in models.items()}


def time_forward(model: torch.nn.Module, input_ids: torch.Tensor, bf16: bool) -> float:
    """Seconds for one forward pass of ``input_ids`` (no padding), in inference mode."""
    mask = torch.ones_like(input_ids)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(input_ids=input_ids, attention_mask=mask)
    return time.perf_counter() - start


def measure(models: dict[str, torch.nn.Module], batch: int, length: int, rounds: int,
            bf16_modes: list[bool]) -> list[dict[str, Any]]:
    """Median tokens/s of each model and precision, over interleaved rounds after one warm-up each."""
    generator = torch.Generator().manual_seed(0)
    # Token ids from 3 up (never MPNet's pad id 1 or GPT-2's special ids), valid for both vocabularies.
    input_ids = torch.randint(3, 30_000, (batch, length), generator=generator)
    seconds: dict[tuple[str, bool], list[float]] = {(name, bf16): [] for name in models for bf16 in bf16_modes}
    for name, bf16 in seconds:
        time_forward(models[name], input_ids, bf16)  # warm-up
    for _ in range(rounds):
        for name, bf16 in seconds:
            seconds[(name, bf16)].append(time_forward(models[name], input_ids, bf16))
    rows = []
    for (name, bf16), times in seconds.items():
        median = statistics.median(times)
        rows.append({"model": name, "precision": "bf16-mixed" if bf16 else "32-true", "batch": batch,
                     "length": length, "rounds": rounds, "median_seconds": round(median, 3),
                     "tokens_per_second": round(batch * length / median, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mpnet", required=True, help="the all-mpnet-base-v2 folder (benchmarks/backbones.py mpnet)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="time bf16 autocast even without native bf16")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args()
    facts = cpu_facts()
    bf16_modes = [False, True] if (facts["native_bf16"] or args.bf16) else [False]
    rows = measure(build_models(args.mpnet), args.batch, args.length, args.rounds, bf16_modes)
    for row in rows:
        row.update(facts, date=time.strftime("%Y-%m-%d"))
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['model']:<20} {row['precision']:<10} {row['tokens_per_second']:>8.1f} tokens/s "
                  f"(median of {row['rounds']} batches of {row['batch']} x {row['length']})")


if __name__ == "__main__":
    main()
