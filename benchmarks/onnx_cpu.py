"""CPU inference: PyTorch against ONNX Runtime (fp32 and dynamic int8), on real 20 Newsgroups posts.

Data flow: a GPT-2-small-shaped model folder (``GPT2Config()`` with random weights plus our
blocks: 2 blocks of 768, 2 heads, 20 labels; or ``--model-dir``) -> ``gpt2clf.infer.export.export_onnx``
(its own parity check) -> ``onnxruntime.quantization.quantize_dynamic`` (int8 weights,
QInt8) -> the same ``--docs`` test posts, tokenized by the folder's tokenizer and truncated
at the folder's ``max_length`` (512), through four engines:

* ``torch-fp32``: :class:`gpt2clf.infer.predictor.Predictor` on the CPU, float32;
* ``torch-int8``: the same with ``int8=True`` (PyTorch dynamic quantization);
* ``onnx-fp32``: :class:`gpt2clf.infer.onnx_runtime.OnnxPredictor` on the exported file;
* ``onnx-int8``: OnnxPredictor on the quantized copy.

Each engine runs one warm-up pass over a few documents, then ``--repeats`` timed passes
over all of them (batch size ``--batch-size``, length-sorted batches in every engine). It
reports docs/s per pass and max |Δprobability| and max |Δlogit| against ``torch-fp32``.
Random weights give near-uniform probabilities, so max |Δlogit| (with the logits' spread)
is the more telling accuracy figure for int8 here.

Usage::

    python benchmarks/onnx_cpu.py --json                  # GPT-2 small dims, 64 posts (~10 min on 2 cores)
    python benchmarks/onnx_cpu.py --model-dir runs/20ng/model --docs 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_description() -> dict[str, Any]:
    """The CPU model, logical CPUs and native bf16, as gpt2clf itself sees them (``report.hardware_info``)."""
    from gpt2clf.report.run_report import hardware_info

    hardware = hardware_info()
    return {"model_name": hardware["cpu"], "logical_cpus": hardware["cpu_cores"],
            "native_bf16": hardware["cpu_native_bf16"]}


def build_gpt2_small_folder(folder: Path, tokenizer_path: Path, label_names: list[str]) -> None:
    """A random GPT-2 small backbone with the blog recipe's head (2 blocks of 768, 2 heads), saved whole."""
    import torch
    from transformers import GPT2Config, GPT2Model

    from gpt2clf.data.batching import load_tokenizer
    from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier

    torch.manual_seed(0)
    backbone = folder.parent / "gpt2-small-random"
    GPT2Model(GPT2Config()).save_pretrained(backbone)
    spec = ClassifierSpec(num_labels=len(label_names), label_names=label_names, n_heads=2, n_blocks=2)
    model = GPT2Classifier.from_backbone(str(backbone), spec)
    model.save_pretrained(folder, tokenizer=load_tokenizer(str(tokenizer_path)),
                          extra={"config": {"max_length": 512, "padding_side": "right"}})


def timed_passes(name: str, proba: Any, texts: list[str], repeats: int) -> tuple[list[float], np.ndarray]:
    """docs/s of each timed pass and the logits-derived probabilities of the last one."""
    proba(texts[:4])  # warm-up: allocations, kernel selection, lazy initialisation
    rates = []
    out = None
    for i in range(repeats):
        start = time.perf_counter()
        out = proba(texts)
        seconds = time.perf_counter() - start
        rates.append(len(texts) / seconds)
        log(f"{name}: pass {i + 1}: {seconds:.1f} s, {rates[-1]:.2f} docs/s")
    return rates, np.asarray(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="an existing model folder (default: a random GPT-2 small one)")
    parser.add_argument("--data-dir", default=str(SHARED / "data" / "20news-bydate.tar.gz"))
    parser.add_argument("--tokenizer", default=str(SHARED / "gpt2-tokenizer"))
    parser.add_argument("--docs", type=int, default=64, help="test posts to classify (default: 64)")
    parser.add_argument("--batch-size", type=int, default=8, help="documents per batch (default: 8)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per engine (default: 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads for both runtimes")
    parser.add_argument("--skip-torch-int8", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args()

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from gpt2clf.data.batching import tokenize_texts
    from gpt2clf.data.newsgroups import load_20newsgroups
    from gpt2clf.infer.export import export_onnx
    from gpt2clf.infer.onnx_runtime import OnnxPredictor, softmax
    from gpt2clf.infer.predictor import Predictor

    torch.set_num_threads(args.threads)
    test = load_20newsgroups("test", data_dir=args.data_dir)
    texts = list(test.texts[: args.docs])
    work = Path(tempfile.mkdtemp(prefix="gpt2clf-onnx-bench-"))
    folder = Path(args.model_dir) if args.model_dir else work / "model"
    if not args.model_dir:
        log(f"building a random GPT-2 small model folder in {folder}")
        build_gpt2_small_folder(folder, Path(args.tokenizer), list(test.label_names))

    log("exporting to ONNX (with the exporter's parity check)")
    onnx_path = work / "model.onnx"
    report = export_onnx(folder, onnx_path)
    log(report.summary())
    int8_path = work / "model.int8.onnx"
    start = time.perf_counter()
    quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
    quantize_seconds = time.perf_counter() - start
    _copy_metadata(onnx_path, int8_path)

    torch_fp32 = Predictor.from_folder(folder, device="cpu", batch_size=args.batch_size)
    tokens = tokenize_texts(texts, torch_fp32.tokenizer, torch_fp32.max_length)
    lengths = [len(t) for t in tokens]
    engines: list[tuple[str, Any]] = [("torch-fp32", lambda xs: torch_fp32.logits(xs).numpy())]
    if not args.skip_torch_int8:
        torch_int8 = Predictor.from_folder(folder, device="cpu", batch_size=args.batch_size, int8=True)
        engines.append(("torch-int8", lambda xs: torch_int8.logits(xs).numpy()))
    onnx_fp32 = OnnxPredictor.from_folder(folder, onnx_path, batch_size=args.batch_size, num_threads=args.threads)
    onnx_int8 = OnnxPredictor.from_folder(folder, int8_path, batch_size=args.batch_size, num_threads=args.threads)
    engines += [("onnx-fp32", onnx_fp32.logits), ("onnx-int8", onnx_int8.logits)]

    results: dict[str, Any] = {}
    reference_logits = None
    for name, logits_fn in engines:
        rates, logits = timed_passes(name, logits_fn, texts, args.repeats)
        if reference_logits is None:
            reference_logits = logits
        results[name] = {
            "docs_per_s": [round(r, 3) for r in rates],
            "docs_per_s_median": round(statistics.median(rates), 3),
            "max_abs_prob_diff_vs_torch_fp32": float(np.abs(softmax(logits) - softmax(reference_logits)).max()),
            "max_abs_logit_diff_vs_torch_fp32": float(np.abs(logits - reference_logits).max()),
            "top1_agreement_vs_torch_fp32": float((logits.argmax(1) == reference_logits.argmax(1)).mean()),
        }
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": cpu_description(),
        "threads": args.threads,
        "versions": _versions(),
        "model": "random GPT-2 small + 2 blocks of 768 (2 heads), 20 labels" if not args.model_dir else str(folder),
        "documents": len(texts),
        "tokens": {"total": sum(lengths), "mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths),
                   "at_max_length": sum(n == torch_fp32.max_length for n in lengths)},
        "batch_size": args.batch_size,
        "export": {"seconds": round(report.seconds, 1), "onnx_mb": round(report.bytes / 1e6, 1),
                   "parity_max_abs_prob_diff": report.max_abs_probability_diff, "opset": report.opset,
                   "int8_mb": round(int8_path.stat().st_size / 1e6, 1),
                   "quantize_seconds": round(quantize_seconds, 1)},
        "logit_std_torch_fp32": float(np.std(reference_logits)),
        "engines": results,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for name, r in results.items():
            prob, logit = r["max_abs_prob_diff_vs_torch_fp32"], r["max_abs_logit_diff_vs_torch_fp32"]
            print(f"{name:>10}: {r['docs_per_s_median']:.2f} docs/s (passes {r['docs_per_s']}), "
                  f"max |Δprob| {prob:.2e}, max |Δlogit| {logit:.2e}")
    return 0


def _copy_metadata(source: Path, target: Path) -> None:
    """Give the quantized file the exported file's gpt2clf metadata if quantize_dynamic dropped it."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    model = onnx.load(str(target))
    present = {p.key for p in model.metadata_props}
    missing = {k: v for k, v in props.items() if k not in present}
    if missing:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **missing})
        onnx.save(model, str(target))


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


if __name__ == "__main__":
    sys.exit(main())
