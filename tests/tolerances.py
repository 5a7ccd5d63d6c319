"""Comparisons that hold on every CPU kind: differences measured against the tensor's own scale.

Sums of many terms (a gradient summed over a batch and its positions, a loss over a batch) are
computed in a different order by different kernels: AVX2, AVX512 and AMX builds of the same
PyTorch give results that differ by a few float32 roundings *of the largest term*. An element whose
own value is small can collect that rounding, so an element-wise ``rtol`` fails on one CPU kind and
passes on another (issue 42: 7.7e-5 on a gradient whose largest element is 174). Measured against
the tensor's largest magnitude the same difference is ~4e-7, and a real error (a different
activation, a missing layer) is orders of magnitude larger: tests/test_fast_paths.py shows both.
"""

from __future__ import annotations

import torch

__all__ = ["assert_close_at_scale", "scaled_gap"]


def scaled_gap(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zeros; inf when only expected is)."""
    if actual.shape != expected.shape:
        raise AssertionError(f"shapes differ: {tuple(actual.shape)} against {tuple(expected.shape)}")
    gap = float((actual.double() - expected.double()).abs().max()) if actual.numel() else 0.0
    scale = float(expected.double().abs().max()) if expected.numel() else 0.0
    if scale == 0.0:
        return 0.0 if gap == 0.0 else float("inf")
    return gap / scale


def assert_close_at_scale(actual: torch.Tensor, expected: torch.Tensor, *, rel: float, msg: str = "") -> None:
    """Fail unless max |actual - expected| <= rel * max |expected| (see the module docstring for why)."""
    gap = scaled_gap(actual, expected)
    if not gap <= rel:
        raise AssertionError(f"{msg + ': ' if msg else ''}differs by {gap:.3g} of its scale (allowed {rel:g})")
