"""The frozen backbone's one-off pass (the feature cache's), on the fastest correct path for the machine.

Data flow::

    GPT2Classifier, the cache pass's precision (resolve_cache_precision: Config.cache_precision and the run's
    precision on its device), the split layer, a sample of the documents
      -> choose_frozen_pass
           body:      the native SDPA body (GPT2Body, MPNetBody) over the backbone's own weight tensors (no
                      copy) when the backbone's config has one and every cached parameter is frozen;
                      else the backbone as transformers built it (the reference path)
           precision: 32-true, bf16-mixed (autocast), or int8 (PyTorch dynamic int8 of the body's Linear
                      layers, CPU only: gpt2clf.infer.runtime.int8_copy), int8 only after the check below
      -> FrozenPass.hidden_states(input_ids, attention_mask)   what GPT2Classifier.backbone_hidden_states gives
         FrozenPass.key_fields()                               what the feature cache's key records of the path

The int8 check: before the pass, the sample (at most :data:`CHECK_DOCUMENTS` documents, each cut to
:data:`CHECK_TOKENS` tokens) runs through the body in float32 and in int8; the metric is the relative error
of the hidden states over the real tokens, ``||H_int8 - H_fp32||_F / ||H_fp32||_F``. Above the tolerance
(:data:`INT8_TOLERANCE`) the pass runs in float32 instead and says so in one line (a
:class:`~gpt2clf.errors.PerformanceWarning`, which the CLI prints as ``gpt2clf: warning: ...``). The verdict
is kept per backbone module for the life of the process (its cached layers are frozen, so it cannot change):
the three splits' passes and ``--dry-run``'s estimate check once.

Guarantees: the native bodies compute what transformers' classes compute (tests/test_fast_start.py,
tests/test_mpnet.py, tests/test_frozen_pass.py: to float rounding for real tokens, left or right padding);
the model is not modified (the body shares its tensors, read-only under ``torch.inference_mode``); the key
fields of two paths differ whenever their features may, and the reference path (transformers' module at the
run's precision) adds none, so caches written before this module existed keep their keys.
"""

from __future__ import annotations

import json
import logging
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from gpt2clf.config import CACHE_PRECISIONS
from gpt2clf.errors import ConfigError, PerformanceWarning
from gpt2clf.infer.runtime import autocast_context, cpu_has_native_bf16, int8_copy
from gpt2clf.model.backbone import BackboneAdapter, native_body, native_body_class

if TYPE_CHECKING:
    from gpt2clf.model.classifier import GPT2Classifier

__all__ = ["CHECK_DOCUMENTS", "CHECK_TOKENS", "INT8_TOLERANCE", "FrozenPass", "choose_frozen_pass",
           "int8_relative_error", "resolve_cache_precision"]

log = logging.getLogger(__name__)

# The int8 check's tolerance on the relative error of the hidden states (see the module docstring). 0.1 is a
# cosine similarity of about 0.995 between the int8 and float32 features; the head that trains on them sees
# far larger perturbations from its own dropout (0.1). A random-weight 12 x 768 MPNet measures 0.042
# (BENCHMARKS.md, "The frozen pass"); whether real weights keep test accuracy needs a full-data run.
INT8_TOLERANCE = 0.1
CHECK_DOCUMENTS = 8
CHECK_TOKENS = 128
# ``auto`` picks int8 on CPUs without native bf16 only if this is True: a product decision made by
# measurement (BENCHMARKS.md, "The frozen pass"): about 1.2x the native body's rate at a 4% feature error on a
# random MPNet, its effect on accuracy unmeasured, so off (int8 is opt-in); see resolve_cache_precision.
AUTO_INT8 = False

_PRECISION_OF = {"float32": "32-true", "bf16": "bf16-mixed", "int8": "int8"}
# backbone module -> {(start_layer, tolerance): relative error}: the int8 check, once per frozen backbone.
_VERDICTS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int | None, float], float]] = weakref.WeakKeyDictionary()


def resolve_cache_precision(cache_precision: str, run_precision: str, device: torch.device | str) -> str:
    """The cache pass's precision: ``32-true``, ``bf16-mixed`` (autocast) or ``int8``.

    ``auto`` is the run's (already resolved) precision: bf16 autocast where the device computes bf16
    natively, float32 elsewhere; on a CPU without native bf16 it would be int8 if :data:`AUTO_INT8` said so.
    ``float32``, ``bf16`` and ``int8`` force a path; int8 runs on the CPU only.

    Raises:
        ConfigError: an unknown value, or int8 on another device.
    """
    device = torch.device(device)
    if cache_precision not in CACHE_PRECISIONS:
        raise ConfigError(f"cache_precision must be one of {', '.join(CACHE_PRECISIONS)}; got {cache_precision!r}")
    if cache_precision == "int8" and device.type != "cpu":
        raise ConfigError(f"--cache-precision int8 runs on the CPU only, not on {device}; use auto, float32 or bf16")
    if cache_precision != "auto":
        return _PRECISION_OF[cache_precision]
    if AUTO_INT8 and device.type == "cpu" and run_precision == "32-true" and not cpu_has_native_bf16():
        return "int8"
    return run_precision


@dataclass
class FrozenPass:
    """How the frozen part of a backbone runs: which body, at which precision, up to which layer.

    ``body`` is ``native-gpt2``, ``native-mpnet`` or ``transformers``; ``precision`` is ``32-true``,
    ``bf16-mixed`` (or another autocast mode the run uses) or ``int8``; ``start_layer`` is the split layer
    (None: the backbone's final output). The module that runs is built on first use, on the device the
    model is on then.
    """

    model: GPT2Classifier
    body: str
    precision: str
    start_layer: int | None = None
    _adapter: BackboneAdapter | None = field(default=None, repr=False)

    @property
    def autocast_precision(self) -> str:
        """The precision to run the module under (int8 runs its quantized layers in float32 otherwise)."""
        return "32-true" if self.precision == "int8" else self.precision

    @property
    def is_reference(self) -> bool:
        """Whether this is the path the feature cache always took: transformers' module at the run's precision."""
        return self.body == "transformers" and self.precision != "int8"

    def key_fields(self) -> dict[str, Any]:
        """What a feature cache's key records of the path: the precision, and the body unless it is the reference."""
        fields: dict[str, Any] = {"precision": self.precision}
        if not self.is_reference:
            fields["frozen_pass"] = self.body
        return fields

    def describe(self) -> str:
        """One phrase for logs and plans, e.g. ``native-mpnet body, int8``."""
        return f"{self.body} body, {self.precision}"

    @property
    def adapter(self) -> BackboneAdapter:
        """The adapter that runs the chosen module (built on first use)."""
        if self._adapter is None:
            module = self.model.backbone if self.body == "transformers" else _native_twin(self.model)
            if self.precision == "int8":
                module = int8_copy(module)
            self._adapter = BackboneAdapter(module.eval())
        return self._adapter

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The cached hidden states (B, T, width) of a batch: what ``model.backbone_hidden_states`` gives.

        Call it under :func:`gpt2clf.infer.runtime.inference_context` with :attr:`autocast_precision`."""
        return self.adapter.hidden_states(input_ids, attention_mask, num_layers=self.start_layer)

    def run_layers(self, hidden: Tensor, attention_mask: Tensor, start_layer: int) -> Tensor:
        """Layers ``start_layer`` up to the split layer over ``hidden`` (a lower cache's states)."""
        return self.adapter.run_layers(hidden, attention_mask, start_layer, self.start_layer)


def choose_frozen_pass(model: GPT2Classifier, *, precision: str, start_layer: int | None,
                       sample: Sequence[Sequence[int]] = (), tolerance: float | None = None) -> FrozenPass:
    """The fastest correct path for the frozen part of ``model``'s backbone at ``precision``
    (from :func:`resolve_cache_precision`, or any precision the run uses).

    With ``precision="int8"`` the ``sample`` documents are checked first (see the module docstring);
    when they differ from float32 by more than ``tolerance`` (None: :data:`INT8_TOLERANCE`), or there is no
    sample, the pass runs in float32 and a :class:`~gpt2clf.errors.PerformanceWarning` says why.
    """
    tolerance = INT8_TOLERANCE if tolerance is None else tolerance
    reason = _native_reason(model, start_layer)
    body = "transformers" if reason else f"native-{model.backbone.config.model_type}"
    if reason:
        log.debug("the frozen pass runs transformers' backbone: %s", reason)
    frozen = FrozenPass(model, body, precision, start_layer)
    if precision != "int8":
        return frozen
    error = _int8_verdict(frozen, sample, tolerance)
    if error is None or not error <= tolerance:
        measured = "no sample documents" if error is None else f"a relative error of {error:.3g}"
        warnings.warn(PerformanceWarning(
            f"the int8 feature-cache pass gave {measured} against float32 (tolerance {tolerance:g}, hidden "
            f"states of {min(len(sample), CHECK_DOCUMENTS)} sample documents); the pass runs in float32 instead"),
            stacklevel=2)
        return FrozenPass(model, body, "32-true", start_layer)
    log.info("int8 feature-cache pass: relative error %.3g against float32 (tolerance %g)", error, tolerance)
    return frozen


def int8_relative_error(frozen: FrozenPass, sample: Sequence[Sequence[int]]) -> float:
    """``||H_int8 - H_fp32||_F / ||H_fp32||_F`` over the real tokens of the first :data:`CHECK_DOCUMENTS`
    documents of ``sample`` (each cut to :data:`CHECK_TOKENS` tokens), on the CPU."""
    rows = [list(tokens[:CHECK_TOKENS]) for tokens in sample[:CHECK_DOCUMENTS] if len(tokens)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, tokens in enumerate(rows):
        ids[i, :len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
        mask[i, :len(tokens)] = 1
    device = next(frozen.model.backbone.parameters()).device
    reference = FrozenPass(frozen.model, frozen.body, "32-true", frozen.start_layer)
    states = []
    for path in (reference, frozen):
        with torch.inference_mode(), autocast_context(device, path.autocast_precision):
            states.append(path.hidden_states(ids.to(device), mask.to(device)).float().cpu())
    real = mask.bool()
    expected, got = states[0][real], states[1][real]
    return float((got - expected).norm() / expected.norm().clamp(min=1e-12))


def _int8_verdict(frozen: FrozenPass, sample: Sequence[Sequence[int]], tolerance: float) -> float | None:
    """The int8 check's relative error (None without sample documents), measured once per backbone module."""
    if not any(len(tokens) for tokens in sample[:CHECK_DOCUMENTS]):
        return None
    verdicts = _VERDICTS.setdefault(frozen.model.backbone, {})
    key = (frozen.start_layer, tolerance)
    if key not in verdicts:
        verdicts[key] = int8_relative_error(frozen, sample)
    return verdicts[key]


def _native_reason(model: GPT2Classifier, start_layer: int | None) -> str | None:
    """Why the native body cannot run the cached part of ``model``'s backbone (None: it can)."""
    from gpt2clf.model.gpt2_body import GPT2Body
    from gpt2clf.model.mpnet_body import MPNetBody

    backbone = model.backbone
    if isinstance(backbone, (GPT2Body, MPNetBody)):
        return "the backbone is a native body already"  # (loaded with native_backbone=True): run it as it is
    if any(p.requires_grad for p in _cached_parameters(model, start_layer)):
        return "part of the cached layers trains"
    config = json.loads(backbone.config.to_json_string(use_diff=False))
    if native_body_class(config) is None:
        return f"no native body for model_type {config.get('model_type')!r} with this config"
    return None


def _cached_parameters(model: GPT2Classifier, start_layer: int | None) -> list[nn.Parameter]:
    """The parameters the cached states depend on: all of the backbone's, or those below ``start_layer``."""
    if start_layer is None:
        return list(model.backbone.parameters())
    top = list(model.adapter.layers())[start_layer:] + model.adapter.final_norms()
    skipped = {id(p) for module in top for p in module.parameters()}
    return [p for p in model.backbone.parameters() if id(p) not in skipped]


def _native_twin(model: GPT2Classifier) -> nn.Module:
    """The native body of ``model``'s backbone over the very same weight tensors (no copy, same device)."""
    backbone = model.backbone
    config = json.loads(backbone.config.to_json_string(use_diff=False))
    with torch.device("meta"):  # no memory for weights about to be replaced by the backbone's
        body = native_body(config)
    assert body is not None  # _native_reason said it exists
    # assign=True: the body's parameters become the backbone's tensors (shared, not copied).
    body.load_state_dict(backbone.state_dict(), strict=True, assign=True)
    return body.eval()
