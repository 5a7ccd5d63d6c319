"""Tests of gpt2clf.infer.frozen_pass: the feature cache's backbone pass on the fastest correct path.

Models are tiny and random: GPT-2 and MPNet with 2 layers of width 64 (MPNet's architecture is the one
all-mpnet-base-v2 has: pad id 1, positions from 2, a relative position bias).

Tolerances.
* Native body against transformers' module (the reference path), float32: the two compute the same
  function with other kernels (SDPA against eager attention, addmm against matmul), so they agree to
  float32 rounding accumulated over two layers: ``rtol=1e-4`` and ``atol`` 1e-5 of the largest state on the
  hidden states of real tokens (O(1) after a final LayerNorm: the tolerance tests/test_mpnet.py uses for the
  bodies; rounding scales with the values, so inside GPT-2's residual stream, ~0.1, it is 1e-5 of that).
* int8 against float32: PyTorch's dynamic int8 rounds weights per tensor and activations per batch to 8 bits,
  so the features move by a few percent; the pass itself accepts them only within
  :data:`~gpt2clf.infer.frozen_pass.INT8_TOLERANCE` (0.1 relative error of the hidden states), and these
  tests check that its measurement is real (above 1e-5, where float32 paths differ by ~1e-7: int8 did run)
  and within that bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2Model, MPNetConfig, MPNetModel

import gpt2clf.infer.frozen_pass as frozen_pass
from gpt2clf import Config
from gpt2clf.errors import ConfigError, PerformanceWarning
from gpt2clf.infer.frozen_pass import FrozenPass, choose_frozen_pass, int8_relative_error, resolve_cache_precision
from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier
from gpt2clf.training.feature_cache import META_FILE, FeatureCacheSpec, cached_features
from gpt2clf.training.inputs import choose_inputs, feature_cache_spec

VOCAB = 300


def tiny_model(kind: str, seed: int = 0) -> GPT2Classifier:
    """A frozen-backbone classifier over a random 2 x 64 GPT-2 or MPNet, as transformers builds it for training."""
    torch.manual_seed(seed)
    if kind == "gpt2":
        backbone = GPT2Model._from_config(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=128,
                                                     vocab_size=VOCAB), attn_implementation="sdpa")
    else:
        backbone = MPNetModel(MPNetConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=128, max_position_embeddings=130))
    model = GPT2Classifier(backbone, ClassifierSpec(num_labels=3, n_blocks=1, n_heads=2))
    model.set_trainable("backbone")
    return model.eval()


def documents(n: int = 7, seed: int = 1, longest: int = 40) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, longest + 1, (n,), generator=generator).tolist()
    return [torch.randint(3, VOCAB, (length,), generator=generator).tolist() for length in lengths]


def padded(tokens: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(t) for t in tokens)
    ids = torch.full((len(tokens), width), 1, dtype=torch.long)  # 1: MPNet's pad id (masked anyway)
    mask = torch.zeros_like(ids)
    for row, t in enumerate(tokens):
        cols = slice(0, len(t)) if side == "right" else slice(width - len(t), width)
        ids[row, cols] = torch.as_tensor(t)
        mask[row, cols] = 1
    return ids, mask


# --- the native body gives the reference features ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt2", "mpnet"])
@pytest.mark.parametrize(("side", "start_layer"), [("right", None), ("left", None), ("left", 1)])
def test_the_native_pass_gives_the_reference_features(kind: str, side: str, start_layer: int | None) -> None:
    model = tiny_model(kind)
    frozen = choose_frozen_pass(model, precision="32-true", start_layer=start_layer)
    assert frozen.body == f"native-{kind}" and frozen.precision == "32-true"
    ids, mask = padded(documents(), side)
    with torch.inference_mode():
        fast = frozen.hidden_states(ids, mask)
        reference = model.backbone_hidden_states(ids, mask, num_layers=start_layer)
    real = mask.bool()
    scale = float(reference[real].abs().max())  # O(1) after a final LayerNorm, ~0.1 inside GPT-2's residual stream
    assert scale > 0.05
    torch.testing.assert_close(fast[real], reference[real], atol=1e-5 * scale, rtol=1e-4)


def test_the_native_body_shares_the_backbones_weights_and_changes_nothing() -> None:
    model = tiny_model("mpnet")
    before = {name: t.clone() for name, t in model.state_dict().items()}
    frozen = choose_frozen_pass(model, precision="32-true", start_layer=None)
    body = frozen.adapter.module
    assert body is not model.backbone and type(body).__name__ == "MPNetBody"
    ours = dict(body.named_parameters())
    for name, parameter in model.backbone.named_parameters():
        assert ours[name].data_ptr() == parameter.data_ptr()  # the same tensors: no copy of the weights
    with torch.inference_mode():
        frozen.hidden_states(*padded(documents(), "right"))
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_layers_that_train_keep_transformers_module() -> None:
    model = tiny_model("gpt2")
    model.set_trainable("none")
    assert choose_frozen_pass(model, precision="32-true", start_layer=None).body == "transformers"
    model.set_trainable("backbone", train_top_layers=1)
    # Only the layer below the split is cached, and it is frozen: the native body runs it.
    assert choose_frozen_pass(model, precision="32-true", start_layer=1).body == "native-gpt2"


# --- int8 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt2", "mpnet"])
def test_the_int8_pass_stays_within_its_stated_tolerance(kind: str) -> None:
    model = tiny_model(kind)
    sample = documents()
    frozen = choose_frozen_pass(model, precision="int8", start_layer=None, sample=sample)
    assert frozen.precision == "int8" and frozen.autocast_precision == "32-true"
    error = int8_relative_error(frozen, sample)
    assert 1e-5 < error <= frozen_pass.INT8_TOLERANCE  # int8 ran (float32 paths differ by ~1e-7), not too far
    assert any("quantized" in type(m).__module__ for m in frozen.adapter.module.modules())


def test_the_fallback_to_float32_is_said_aloud_when_the_int8_check_fails() -> None:
    model = tiny_model("mpnet")
    with pytest.warns(PerformanceWarning, match=r"int8 feature-cache pass gave a relative error of .* "
                                                r"\(tolerance 0,.*runs in float32 instead"):
        frozen = choose_frozen_pass(model, precision="int8", start_layer=None, sample=documents(), tolerance=0.0)
    assert frozen.precision == "32-true" and frozen.body == "native-mpnet"


def test_int8_without_sample_documents_falls_back_too() -> None:
    with pytest.warns(PerformanceWarning, match="no sample documents"):
        frozen = choose_frozen_pass(tiny_model("gpt2"), precision="int8", start_layer=None, sample=[])
    assert frozen.precision == "32-true"


# --- the cache key records the path ------------------------------------------------------------------------
def cache(model: GPT2Classifier, tokens: list[list[int]], root: Path, precision: str):
    spec = FeatureCacheSpec.for_model(model, cache_root=root, tokenizer_name="test", batch_size=4, precision=precision)
    return cached_features(model, tokens, None, spec)


def test_caches_of_different_paths_never_mix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokens = tiny_model("gpt2"), documents()
    native = cache(model, tokens, tmp_path, "32-true")
    int8 = cache(model, tokens, tmp_path, "int8")
    with monkeypatch.context() as patch:  # the reference path: as if no native body could run this backbone
        patch.setattr(frozen_pass, "native_body_class", lambda config: None)
        reference = cache(model, tokens, tmp_path, "32-true")
    assert len({native.key, int8.key, reference.key}) == 3
    recorded = {name: json.loads((tmp_path / d.key / META_FILE).read_text())
                for name, d in (("native", native), ("int8", int8), ("reference", reference))}
    assert (recorded["native"]["frozen_pass"], recorded["native"]["precision"]) == ("native-gpt2", "32-true")
    assert (recorded["int8"]["frozen_pass"], recorded["int8"]["precision"]) == ("native-gpt2", "int8")
    # The reference path adds no field: caches written before the native pass existed keep their keys.
    assert "frozen_pass" not in recorded["reference"] and recorded["reference"]["precision"] == "32-true"
    # The same features within float32 rounding (then float16 storage) for the two float32 paths; int8 moved.
    first = {name: torch.cat([d[i]["hidden_states"] for i in range(len(d))]).float()
             for name, d in (("native", native), ("int8", int8), ("reference", reference))}
    torch.testing.assert_close(first["native"], first["reference"], atol=2e-3, rtol=1e-3)
    assert (first["int8"] - first["native"]).abs().max() > 1e-2

    # Asked again, each path finds its own cache and runs nothing.
    calls: list[int] = []
    monkeypatch.setattr(FrozenPass, "hidden_states", lambda *args, **kwargs: calls.append(1))
    assert cache(model, tokens, tmp_path, "int8").key == int8.key
    assert cache(model, tokens, tmp_path, "32-true").key == native.key
    assert calls == []


def test_an_int8_pass_that_falls_back_writes_and_finds_the_float32_cache(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokens = tiny_model("mpnet"), documents()
    float32 = cache(model, tokens, tmp_path, "32-true")
    monkeypatch.setattr(frozen_pass, "INT8_TOLERANCE", 0.0)
    with pytest.warns(PerformanceWarning, match="runs in float32 instead"):
        fell_back = cache(model, tokens, tmp_path, "int8")
    assert fell_back.key == float32.key  # what ran was the float32 path: its cache, never an "int8" one
    assert sorted(p.name for p in tmp_path.iterdir()) == [float32.key]
    np.testing.assert_array_equal(np.asarray(fell_back._array()), np.asarray(float32._array()))


# --- choosing the precision ---------------------------------------------------------------------------------
def test_cache_precision_auto_follows_the_run_and_explicit_values_force_a_path(monkeypatch) -> None:
    assert resolve_cache_precision("auto", "32-true", "cpu") == "32-true"
    assert resolve_cache_precision("auto", "bf16-mixed", "cpu") == "bf16-mixed"
    assert resolve_cache_precision("float32", "bf16-mixed", "cpu") == "32-true"
    assert resolve_cache_precision("bf16", "32-true", "cpu") == "bf16-mixed"
    assert resolve_cache_precision("int8", "32-true", "cpu") == "int8"
    monkeypatch.setattr(frozen_pass, "AUTO_INT8", True)
    monkeypatch.setenv("GPT2CLF_CPU_BF16", "0")
    assert resolve_cache_precision("auto", "32-true", "cpu") == "int8"
    monkeypatch.setenv("GPT2CLF_CPU_BF16", "1")
    assert resolve_cache_precision("auto", "32-true", "cpu") == "32-true"  # (explicit float32 run precision)


@pytest.mark.parametrize(("cache_precision", "precision", "expected"), [
    ("auto", "32-true", "32-true"), ("auto", "bf16-mixed", "bf16-mixed"), ("float32", "bf16-mixed", "32-true"),
    ("bf16", "32-true", "bf16-mixed"), ("int8", "32-true", "int8")])
def test_a_runs_cache_spec_holds_the_resolved_cache_precision(cache_precision: str, precision: str, expected: str,
                                                              tmp_path: Path) -> None:
    """Config.cache_precision reaches the feature cache through its spec (the one home of the key's path)."""
    config = Config(freeze="backbone", feature_cache=True, accelerator="cpu", precision=precision,
                    cache_precision=cache_precision, cache_dir=str(tmp_path))
    spec = feature_cache_spec(config, tiny_model("gpt2"))
    assert spec is not None and spec.precision == expected


def test_a_run_asking_for_int8_on_a_gpu_is_refused_when_its_inputs_are_chosen(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = Config(freeze="backbone", feature_cache=True, accelerator="gpu", cache_precision="int8",
                    cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="int8 runs on the CPU only, not on cuda"):
        choose_inputs(config, tiny_model("gpt2"))


@pytest.mark.parametrize(("value", "device", "message"), [
    ("int8", "cuda", "runs on the CPU only"), ("fp8", "cpu", "cache_precision must be one of")])
def test_an_impossible_cache_precision_is_refused_in_one_line(value: str, device: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_cache_precision(value, "32-true", device)


def test_config_refuses_an_unknown_cache_precision() -> None:
    with pytest.raises(ConfigError, match="cache_precision must be one of auto, float32, bf16, int8"):
        Config(cache_precision="int4").validate()
