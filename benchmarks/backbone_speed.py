"""Inference speed of a 12 x 768 backbone: GPT-2 small against all-mpnet-base-v2, on this CPU.

Why: issue 25 found that ``--dry-run`` with all-mpnet-base-v2 estimated 8.7 h of evaluation where
a GPT-2-small-sized model was estimated at 1.5 h, though the two have the same matmul shapes.
This script times the backbone forward pass alone (no blocks, no head), in inference mode, for:

* ``gpt2``: ``transformers.GPT2Model(GPT2Config())`` (random weights, GPT-2 small's shape), SDPA;
* ``mpnet-transformers``: ``transformers.MPNetModel`` loaded from the MPNet folder (the model
  ``gpt2clf train`` builds; transformers' MPNet has no SDPA path, so its attention is eager);
* ``mpnet-native``: :class:`gpt2clf.model.mpnet_body.MPNetBody` (what ``predict``, ``evaluate``,
  ``serve`` and the feature cache's frozen pass build; SDPA with MPNet's position bias as an additive mask);
* ``mpnet-native-int8`` (``--int8``): that body after PyTorch dynamic int8 quantization of its Linear
  layers (:func:`gpt2clf.infer.runtime.int8_copy`, what ``--cache-precision int8`` runs);
* ``mpnet-onnx-int8`` (``--onnx``): that body exported to ONNX (TorchScript exporter, no padding mask) and
  quantized by ``onnxruntime.quantization.quantize_dynamic`` (QInt8), run by ONNX Runtime;
* ``mpnet-native-compiled`` (``--compile``): ``torch.compile`` of the native body (its compile time is
  reported apart).

``--random`` uses a random-weight MPNet of all-mpnet-base-v2's shape (12 x 768) instead of the folder:
the same matmul shapes, so the same speed, but int8's error on random weights is not that on real ones.
Besides tokens/s (wall clock) each row has tokens per CPU-second of the process (``time.process_time``),
which other processes' load moves less than the wall clock on a shared machine, and the relative error
of its last hidden states against ``mpnet-native`` in float32 (``||h - h_ref|| / ||h_ref||``, the metric
the frozen pass's int8 check uses).

Each is timed in float32 and, where the CPU has native bf16 (AVX512-BF16 or AMX), under bf16
autocast too (on AVX2 bf16 is emulated and slow, so it is skipped unless ``--bf16`` forces it).
Rounds are interleaved (one batch of each model in turn), so load from other processes falls
on every model alike; the figure is the median tokens per second over the rounds.

Usage::

    python benchmarks/backbones.py mpnet       # prints the MPNet folder
    python benchmarks/backbone_speed.py --mpnet ~/.cache/gpt2clf/backbones/all-mpnet-base-v2 \\
        --batch 8 --length 512 --rounds 5 --json
    python benchmarks/backbone_speed.py --random --int8 --onnx --batch 4 --length 192 --rounds 5
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


def build_models(mpnet_folder: str | None, *, int8: bool = False, compile_body: bool = False) -> dict[str, Any]:
    """The models to time, by name (``mpnet_folder`` None: a random-weight MPNet of the same shape)."""
    from transformers import AutoModel, GPT2Config, GPT2Model, MPNetConfig, MPNetModel

    from gpt2clf.infer.runtime import int8_copy
    from gpt2clf.model.mpnet_body import MPNetBody

    torch.manual_seed(0)
    models: dict[str, Any] = {"gpt2": GPT2Model(GPT2Config(attn_implementation="sdpa"))}
    if mpnet_folder is None:
        mpnet = MPNetModel(MPNetConfig())  # all-mpnet-base-v2's shape: 12 layers of 768, 12 heads
    else:
        mpnet = AutoModel.from_pretrained(mpnet_folder, dtype=torch.float32)
    models["mpnet-transformers"] = mpnet
    native = MPNetBody(mpnet.config.to_dict())
    native.load_state_dict(mpnet.state_dict())  # the same parameter names and shapes
    models["mpnet-native"] = native
    if int8:
        models["mpnet-native-int8"] = int8_copy(native)
    if compile_body:
        models["mpnet-native-compiled"] = torch.compile(native.eval())
    return {name: model.eval() for name, model in models.items()}


class OnnxBody:
    """The native MPNet body exported to ONNX and quantized to int8, run by ONNX Runtime (no padding mask)."""

    def __init__(self, native: torch.nn.Module, threads: int) -> None:
        import tempfile
        from pathlib import Path

        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        class Unmasked(torch.nn.Module):  # no mask: torch.export cannot capture the body's padding branch
            def __init__(self) -> None:
                super().__init__()
                self.body = native

            def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
                return self.body(input_ids, None, position_ids)[0]

        folder = Path(tempfile.mkdtemp(prefix="backbone_speed_"))
        started = time.perf_counter()
        example = (torch.randint(3, 1000, (2, 16)), torch.arange(2, 18).repeat(2, 1))
        # The TorchScript exporter: the dynamo one fails on the body's reshape with symbolic shapes (torch 2.13).
        torch.onnx.export(Unmasked().eval(), example, str(folder / "body.onnx"),
                          input_names=["input_ids", "position_ids"], output_names=["hidden"], dynamo=False,
                          opset_version=17, dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                                          "position_ids": {0: "batch", 1: "seq"},
                                                          "hidden": {0: "batch", 1: "seq"}})
        quantize_dynamic(str(folder / "body.onnx"), str(folder / "body.int8.onnx"), weight_type=QuantType.QInt8)
        self.prepare_seconds = time.perf_counter() - started
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / "body.int8.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor) -> tuple[torch.Tensor]:
        hidden = self.session.run(None, {"input_ids": input_ids.numpy(), "position_ids": position_ids.numpy()})[0]
        return (torch.from_numpy(hidden),)


def time_forward(model: Any, input_ids: torch.Tensor, bf16: bool) -> tuple[float, float, torch.Tensor]:
    """(wall seconds, process CPU seconds, last hidden state) of one forward pass of ``input_ids`` (no
    padding), in inference mode. MPNet gets its position ids (real tokens numbered from 2) explicitly."""
    mask = torch.ones_like(input_ids)
    kwargs: dict[str, Any] = {"attention_mask": mask}
    if not isinstance(model, torch.nn.Module) or getattr(getattr(model, "config", None), "model_type", "") != "gpt2":
        kwargs["position_ids"] = (torch.arange(input_ids.shape[1]) + 2).repeat(input_ids.shape[0], 1)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        output = model(input_ids=input_ids, **kwargs)
    hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
    return time.perf_counter() - start, time.process_time() - cpu, hidden.float()


def measure(models: dict[str, Any], batch: int, length: int, rounds: int,
            bf16_modes: list[bool]) -> list[dict[str, Any]]:
    """Median tokens/s of each model and precision, over interleaved rounds after one warm-up each."""
    generator = torch.Generator().manual_seed(0)
    # Token ids from 3 up (never MPNet's pad id 1 or GPT-2's special ids), valid for both vocabularies.
    input_ids = torch.randint(3, 30_000, (batch, length), generator=generator)
    runs = [(name, bf16) for name in models for bf16 in bf16_modes
            if not (bf16 and name in ("mpnet-native-int8", "mpnet-onnx-int8"))]  # int8 paths run in float32
    seconds: dict[tuple[str, bool], list[tuple[float, float]]] = {run: [] for run in runs}
    errors: dict[tuple[str, bool], float | None] = {}
    reference = time_forward(models["mpnet-native"], input_ids, False)[2]
    for name, bf16 in runs:
        hidden = time_forward(models[name], input_ids, bf16)[2]  # warm-up (and the compile, if any)
        errors[(name, bf16)] = (None if name == "gpt2"
                                else float((hidden - reference).norm() / reference.norm()))
    for _ in range(rounds):
        for run in runs:
            seconds[run].append(time_forward(models[run[0]], input_ids, run[1])[:2])
    rows = []
    for (name, bf16), times in seconds.items():
        wall = statistics.median(t[0] for t in times)
        cpu = statistics.median(t[1] for t in times)
        error = errors[(name, bf16)]
        rows.append({"model": name, "precision": "bf16-mixed" if bf16 else "32-true", "batch": batch,
                     "length": length, "rounds": rounds, "median_seconds": round(wall, 3),
                     "tokens_per_second": round(batch * length / wall, 1),
                     "tokens_per_cpu_second": round(batch * length / cpu, 1),
                     "relative_error_vs_native_fp32": None if error is None else float(f"{error:.3g}")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mpnet", help="the all-mpnet-base-v2 folder (benchmarks/backbones.py mpnet)")
    source.add_argument("--random", action="store_true", help="a random-weight MPNet of the same shape instead")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="time bf16 autocast even without native bf16")
    parser.add_argument("--int8", action="store_true", help="also time the native body with PyTorch dynamic int8")
    parser.add_argument("--onnx", action="store_true", help="also time the native body as ONNX Runtime int8")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the native body")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    facts = cpu_facts()
    bf16_modes = [False, True] if (facts["native_bf16"] or args.bf16) else [False]
    models = build_models(args.mpnet, int8=args.int8, compile_body=args.compile)
    if args.onnx:
        models["mpnet-onnx-int8"] = OnnxBody(models["mpnet-native"], torch.get_num_threads())
        print(f"# ONNX export + int8 quantization: {models['mpnet-onnx-int8'].prepare_seconds:.1f} s")
    rows = measure(models, args.batch, args.length, args.rounds, bf16_modes)
    for row in rows:
        row.update(facts, date=time.strftime("%Y-%m-%d"))
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['model']:<22} {row['precision']:<10} {row['tokens_per_second']:>8.1f} tokens/s "
                  f"{row['tokens_per_cpu_second']:>8.1f} tokens/CPU-s  rel. error "
                  f"{row['relative_error_vs_native_fp32']}  (median of {row['rounds']} batches of "
                  f"{row['batch']} x {row['length']})")


if __name__ == "__main__":
    main()
