"""Running a trained model fast: device and precision choice, the batched inference loop, int8.

Everything that runs a model without training it goes through here: prediction, evaluation,
the feature cache's one-off backbone pass and the server.

* :func:`resolve_device` turns ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...) into a
  ``torch.device`` that exists on this machine, or raises a one-line
  :class:`~gpt2clf.errors.UserError` that says what is available.
* :func:`resolve_precision` turns ``auto`` into bf16 autocast where the hardware computes
  bf16 natively (CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX, detected at run time) and
  float32 elsewhere; emulated bf16 is many times slower than float32.
* :func:`batched_inference` is THE inference loop: documents sorted by length, cut into
  batches by a document count and a padded-token budget, run in eval mode under
  ``torch.inference_mode`` and autocast; :func:`logits_in_input_order` gathers the logits
  back in input order and reports documents done to a :data:`Progress` callback.
* :func:`quantize_for_cpu_inference` makes an int8 copy for CPU inference.

Guarantees: a document's outputs do not depend on the batch it lands in (the model masks
padding); the model's train/eval mode is restored afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from gpt2clf.config import PRECISIONS, check_float16_device
from gpt2clf.data.batching import length_sorted_batches
from gpt2clf.errors import ConfigError, UserError
from gpt2clf.model.backbone import conv1d_to_linear

if TYPE_CHECKING:
    from gpt2clf.model.classifier import GPT2Classifier

__all__ = [
    "DEFAULT_BATCH_TOKENS",
    "Progress",
    "autocast_context",
    "batched_inference",
    "cpu_has_native_bf16",
    "inference_context",
    "int8_copy",
    "logits_in_input_order",
    "quantize_for_cpu_inference",
    "resolve_device",
    "resolve_precision",
]

# Padded tokens per inference batch (see BENCHMARKS.md, "Inference batch budget"): on a CPU
# larger batches stop paying off early and only cost memory; a GPU wants many more.
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 65536}

Progress = Callable[[int, int | None], None]
"""A progress callback: ``progress(done, total)``, documents done so far and the total (None
when a stream does not know it). Library code reports through it and never prints; the CLI
draws the bar."""


# ------------------------------------------------------------------------------------------
# Device and precision
# ------------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The ``torch.device`` to run on: ``None`` or ``"auto"`` picks CUDA when present, else the CPU.

    Raises:
        UserError: an unknown device type, or one this machine does not have (a CUDA index
            past the last GPU says how many there are).
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UserError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N (or auto)") from err
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"no CUDA device here (asked for {device}); use --device cpu")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise UserError(f"{device} does not exist: this machine has {count} CUDA device(s), "
                            f"cuda:0 to cuda:{count - 1}")
        return resolved
    if resolved.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"no Apple MPS device here (asked for {device}); use --device cpu")
        return resolved
    backend = getattr(torch, resolved.type, None)
    if backend is not None and getattr(backend, "is_available", lambda: False)():
        return resolved
    available = "cpu, cuda" if torch.cuda.is_available() else "cpu"
    raise UserError(f"device {device} is not available on this machine; available here: {available}")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), detected at run time.

    ``GPT2CLF_CPU_BF16=0|1`` overrides the detection (to force either path, and for tests).
    """
    forced = os.environ.get("GPT2CLF_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    return _probe_cpu_bf16()


@functools.lru_cache(maxsize=1)
def _probe_cpu_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return _cpuinfo_has_bf16()


def _cpuinfo_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The concrete precision for ``precision`` on ``device``: ``auto`` becomes bf16-mixed or 32-true.

    ``auto`` picks ``bf16-mixed`` on CUDA devices with bf16 and on CPUs with native bf16, and
    ``32-true`` elsewhere. Explicit values are returned unchanged after a check that the
    device can run them.

    Raises:
        ConfigError: an unknown precision, or 16-bit floats on a CPU.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
        if device.type == "cpu" and cpu_has_native_bf16():
            return "bf16-mixed"
        return "32-true"
    check_float16_device(precision, on_gpu=device.type != "cpu")
    return precision


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast for ``*-mixed`` precisions, a no-op for full precision."""
    if precision.startswith("bf16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def inference_context(model: nn.Module, device: torch.device, precision: str) -> Iterator[None]:
    """Eval mode (restored afterwards), ``torch.inference_mode`` and the autocast of ``precision``."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast_context(device, precision):
            yield
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------
def batched_inference(model: nn.Module, lengths: Sequence[int], run_batch: Callable[[list[int]], Tensor], *,
                      device: torch.device | str, precision: str, batch_size: int,
                      max_batch_tokens: int | None = None) -> Iterator[tuple[list[int], Tensor]]:
    """Yield ``(indices, run_batch(indices))`` over length-sorted batches, longest first.

    ``run_batch`` builds the batch of those documents, runs the model and returns its output
    (first dimension: one row per index, in the order given). Batches hold at most
    ``batch_size`` documents and, with ``max_batch_tokens``, at most that many padded tokens
    (a single longer document still gets a batch of its own).
    """
    device = torch.device(device)
    with inference_context(model, device, precision):
        for indices in length_sorted_batches(lengths, batch_size, max_tokens=max_batch_tokens):
            yield indices, run_batch(indices)


def logits_in_input_order(model: GPT2Classifier, lengths: Sequence[int],
                          run_batch: Callable[[list[int]], Tensor], *, device: torch.device | str, precision: str,
                          batch_size: int, max_batch_tokens: int | None = None,
                          progress: Progress | None = None) -> Tensor:
    """Float32 logits (N, num_labels) from :func:`batched_inference`, back in input order, on the CPU.

    ``progress(done, N)`` is called once with 0 before the first batch and after every batch.
    """
    out = torch.empty(len(lengths), model.num_labels, dtype=torch.float32)
    done = 0
    if progress is not None:
        progress(0, len(lengths))
    for indices, logits in batched_inference(model, lengths, run_batch, device=device, precision=precision,
                                             batch_size=batch_size, max_batch_tokens=max_batch_tokens):
        out[torch.as_tensor(indices, dtype=torch.long)] = logits.float().cpu()
        done += len(indices)
        if progress is not None:
            progress(done, len(lengths))
    return out


# ------------------------------------------------------------------------------------------
# int8
# ------------------------------------------------------------------------------------------
def quantize_for_cpu_inference(model: GPT2Classifier) -> GPT2Classifier:
    """An int8 copy of ``model`` for CPU inference (dynamic quantization of the big matmuls).

    GPT-2's projections are transformers ``Conv1D`` modules (``x @ W + b`` with ``W`` stored
    transposed); they are first turned into equivalent ``nn.Linear`` layers, then every
    Linear of the backbone and of our blocks gets int8 weights and per-batch int8
    activations (``torch.ao.quantization.quantize_dynamic``, fbgemm/x86 kernels). The input
    projection, pooler and head stay float32 (tiny, and closest to the logits). The
    original model is not modified. The copy is for inference only (eval mode, CPU, float32
    precision: not under bf16 autocast): it cannot be trained or saved with ``save_pretrained``.
    On a 2-core AVX2 EPYC it runs GPT-2 small about 1.5x faster; predictions move slightly,
    see BENCHMARKS.md.
    """
    quantized = copy.deepcopy(model).to("cpu").float().eval()
    return _quantize_linears(quantized, {"backbone": quantized.backbone, "blocks": quantized.blocks})


def int8_copy(module: nn.Module) -> nn.Module:
    """An int8 copy of any module for CPU inference: every ``nn.Linear`` (and GPT-2 ``Conv1D``, turned into
    one first) gets int8 weights and per-batch int8 activations, as :func:`quantize_for_cpu_inference` does.

    Used for a frozen backbone alone (the feature cache's pass, :mod:`gpt2clf.infer.frozen_pass`); the
    original is not modified."""
    quantized = copy.deepcopy(module).to("cpu").float().eval()
    return _quantize_linears(quantized, {"": quantized})


def _quantize_linears(root: nn.Module, parts: dict[str, nn.Module]) -> nn.Module:
    """``root`` with the ``nn.Linear`` layers inside ``parts`` (name prefix -> submodule of ``root``) quantized
    dynamically to int8, in place (Conv1D layers are turned into Linear ones first)."""
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    targets = {}
    for prefix, module in parts.items():
        conv1d_to_linear(module)
        for name, sub in module.named_modules():
            if isinstance(sub, nn.Linear):
                targets[".".join(p for p in (prefix, name) if p)] = default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        return quantize_dynamic(root, targets, dtype=torch.qint8, inplace=True)
