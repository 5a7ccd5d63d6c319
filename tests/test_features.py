"""Tests of gpt2clf.features (the frozen-backbone feature cache) and the backbone split of gpt2clf.model.classifier.

Models are tiny and randomly initialised: GPT-2 with 2 layers of width 64.

Tolerance of the cache path. The cache stores hidden states as float16: 11 significant
bits, so each stored value is off by at most 2^-11 ~ 4.9e-4 of itself. GPT-2's last hidden
states (after ``ln_f``) are O(1), so the stored values are off by ~1e-3 at most; our blocks
and head map that to logit differences of the same order. The head here is re-initialised
with std 1 so that logits are O(1) (with the default std 0.02 they would be ~0.05 and any
tolerance would be vacuous); ``atol=1e-2`` then leaves a 10x margin over the fp16 rounding
while still catching any real mismatch (wrong rows, padding, order), which moves logits by
O(1). The exactness of the path itself is checked separately at float32 tolerance against
the full model's hidden states rounded to float16.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2Model

import gpt2clf.training.feature_cache as features
from gpt2clf.data.batching import PaddingCollator
from gpt2clf.errors import ConfigError, DataError
from gpt2clf.infer.frozen_pass import FrozenPass
from gpt2clf.infer.predictor import batched_logits
from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier
from gpt2clf.training.feature_cache import (
    FeatureCacheSpec,
    FeatureCollator,
    FeatureDataset,
    cache_root_dir,
    cached_features,
    feature_logits,
    logits_from_features,
)

VOCAB = 1000
PAD = 0
TOKENIZER = "test-tokenizer"


def tiny_model(seed: int = 0, pooling: str = "last", n_layer: int = 2) -> GPT2Classifier:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=64, n_head=2, n_positions=256, vocab_size=VOCAB, bos_token_id=1,
                        eos_token_id=1)
    backbone = GPT2Model._from_config(config, attn_implementation="sdpa")
    spec = ClassifierSpec(num_labels=3, n_embed=64, n_heads=2, n_blocks=2, dropout=0.1, pooling=pooling)
    model = GPT2Classifier(backbone, spec)
    torch.nn.init.normal_(model.head[1].weight, std=1.0)  # O(1) logits: a meaningful tolerance
    model.set_trainable("backbone")
    return model.eval()


def token_lists(n: int = 11, seed: int = 1, longest: int = 40) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, longest + 1, (n,), generator=generator).tolist()
    return [torch.randint(1, VOCAB, (length,), generator=generator).tolist() for length in lengths]


def cache_spec(model: GPT2Classifier, root: Path | None, **settings) -> FeatureCacheSpec:
    settings.setdefault("tokenizer_name", TOKENIZER)
    settings.setdefault("batch_size", 4)
    return FeatureCacheSpec.for_model(model, cache_root=root, **settings)


def cache(model: GPT2Classifier, tokens: list[list[int]], root: Path, labels=None, progress=None,
          **settings) -> FeatureDataset:
    return cached_features(model, tokens, labels, cache_spec(model, root, **settings), progress=progress)


def full_logits(model: GPT2Classifier, tokens: list[list[int]]) -> torch.Tensor:
    return batched_logits(model, tokens, PaddingCollator(PAD), batch_size=4)


def count_backbone_runs(model: GPT2Classifier, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the cache pass's backbone batches (it runs the backbone through a FrozenPass, whatever its path)."""
    calls: list[int] = []
    original = FrozenPass.hidden_states

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FrozenPass, "hidden_states", counted)
    return calls


# --- logits ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
def test_cache_logits_match_the_full_model(tmp_path: Path, pooling: str) -> None:
    model = tiny_model(pooling=pooling)
    tokens = token_lists()
    dataset = cache(model, tokens, tmp_path)
    cached = feature_logits(model, dataset, batch_size=3)
    reference = full_logits(model, tokens)
    assert cached.dtype == torch.float32 and cached.shape == (len(tokens), 3)
    assert reference.abs().max() > 0.5  # the tolerance below is meaningful at this scale
    torch.testing.assert_close(cached, reference, atol=1e-2, rtol=0)


def test_cache_path_is_exact_up_to_float16_storage(tmp_path: Path) -> None:
    model = tiny_model()
    tokens = token_lists()
    dataset = cache(model, tokens, tmp_path)
    with torch.inference_mode():
        for i, ids in enumerate(tokens):
            hidden = model.backbone_hidden_states(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
            stored = dataset[i]["hidden_states"]
            assert stored.dtype == torch.float16 and stored.shape == (len(ids), 64)
            # The cache holds the float16 rounding of the backbone's output. The cached pass ran
            # batched and padded, so its float32 values can differ from this unbatched one in the
            # last bits, and a value on a rounding boundary then lands one float16 step away.
            torch.testing.assert_close(stored.float(), hidden[0].half().float(), atol=1e-5, rtol=2**-10)
    # And the logits equal those of the float16-rounded states at float32 tolerance.
    cached = feature_logits(model, dataset, batch_size=4)
    with torch.inference_mode():
        for i, ids in enumerate(tokens):
            mask = torch.ones(1, len(ids), dtype=torch.long)
            hidden = model.backbone_hidden_states(torch.tensor([ids]), mask).half().float()
            torch.testing.assert_close(cached[i], model.classify_hidden_states(hidden, mask)[0], atol=1e-5, rtol=1e-5)


def test_dataset_items_lengths_and_labels(tmp_path: Path) -> None:
    tokens = token_lists()
    labels = [i % 3 for i in range(len(tokens))]
    dataset = cache(tiny_model(), tokens, tmp_path, labels=labels)
    assert len(dataset) == len(tokens)
    assert dataset.lengths == [len(t) for t in tokens]
    assert dataset.width == 64 and dataset.start_layer is None
    item = dataset[5]
    assert set(item) == {"hidden_states", "labels", "index"}
    assert item["labels"] == labels[5] and item["index"] == 5
    unlabelled = cache(tiny_model(), tokens, tmp_path)
    assert "labels" not in unlabelled[0]
    assert unlabelled.key == dataset.key  # labels are attached on load, not part of the key
    with pytest.raises(ValueError, match="labels"):
        FeatureDataset(dataset.folder, labels=[0])


# --- hits and invalidation ------------------------------------------------------------------
def test_second_call_is_a_hit_that_never_runs_the_backbone(tmp_path: Path, monkeypatch) -> None:
    model = tiny_model()
    tokens = token_lists()
    first = cache(model, tokens, tmp_path)

    def boom(*args, **kwargs):
        raise AssertionError("the backbone ran on a cache hit")

    monkeypatch.setattr(model, "backbone_hidden_states", boom)
    monkeypatch.setattr(FrozenPass, "hidden_states", boom)
    monkeypatch.setattr(model.backbone, "forward", boom)
    second = cache(model, tokens, tmp_path, labels=[0] * len(tokens))
    assert second.folder == first.folder
    for i in range(len(tokens)):
        assert torch.equal(second[i]["hidden_states"], first[i]["hidden_states"])
    # A freshly built model with the same weights (as after a restart) hits too.
    assert cache(tiny_model(), tokens, tmp_path).key == first.key


@pytest.mark.parametrize("change", ["tokens", "order", "max_length", "weights", "precision", "tokenizer", "layers"])
def test_anything_the_values_depend_on_changes_the_key(tmp_path: Path, monkeypatch, change: str) -> None:
    tokens = token_lists()
    base = cache(tiny_model(), tokens, tmp_path, max_length=40)
    model = tiny_model()
    kwargs: dict = {"max_length": 40}
    if change == "tokens":
        tokens = [list(t) for t in tokens]
        tokens[3][0] = (tokens[3][0] % (VOCAB - 1)) + 1
    elif change == "order":
        tokens = tokens[1:] + tokens[:1]
    elif change == "max_length":
        kwargs["max_length"] = 32
    elif change == "weights":
        with torch.no_grad():
            model.backbone.h[0].mlp.c_fc.weight[0, 0] += 1e-3
    elif change == "precision":
        kwargs["precision"] = "bf16-mixed"
    elif change == "tokenizer":
        kwargs["tokenizer_name"] = "another-tokenizer"
    elif change == "layers":
        kwargs["train_top_layers"] = 1
    calls = count_backbone_runs(model, monkeypatch)
    other = cache(model, tokens, tmp_path, **kwargs)
    assert other.key != base.key
    assert calls, "a changed key must recompute"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([base.key, other.key])


def test_our_blocks_and_head_do_not_change_the_key(tmp_path: Path, monkeypatch) -> None:
    tokens = token_lists()
    base = cache(tiny_model(), tokens, tmp_path)
    model = tiny_model()
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight.add_(1.0)  # trained blocks: the backbone is unchanged
    calls = count_backbone_runs(model, monkeypatch)
    assert cache(model, tokens, tmp_path).key == base.key
    assert not calls


# --- atomic writes --------------------------------------------------------------------------
def test_leftover_temporary_folder_is_never_used(tmp_path: Path) -> None:
    model = tiny_model()
    tokens = token_lists()
    key = cache_spec(model, tmp_path).locate(model, tokens).key
    # A crashed writer on another host (so it is kept): a full-looking but temporary folder.
    leftover = tmp_path / f".{key}.elsewhere.123.tmp"
    leftover.mkdir()
    (leftover / features.META_FILE).write_text(json.dumps({"format_version": 1, "key": key}))
    (leftover / features.HIDDEN_FILE).write_bytes(b"\x00" * 10)
    dataset = cache(model, tokens, tmp_path)
    assert dataset.folder == tmp_path / key
    torch.testing.assert_close(feature_logits(model, dataset, batch_size=4), full_logits(model, tokens),
                               atol=1e-2, rtol=0)
    assert leftover.is_dir()  # not ours to delete: its writer may still be running


def test_abandoned_temporary_folder_of_a_dead_writer_is_removed(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above the default pid_max: no such process
    abandoned = tmp_path / f".somekey.{socket.gethostname()}.{dead}.tmp"
    abandoned.mkdir()
    (abandoned / features.HIDDEN_FILE).write_bytes(b"\x00" * 10)
    cache(tiny_model(), token_lists(), tmp_path)
    assert not abandoned.exists()


def test_incomplete_final_folder_is_recomputed(tmp_path: Path, monkeypatch) -> None:
    model = tiny_model()
    tokens = token_lists()
    first = cache(model, tokens, tmp_path)
    (first.folder / features.META_FILE).unlink()  # as if meta.json never made it
    calls = count_backbone_runs(model, monkeypatch)
    again = cache(model, tokens, tmp_path)
    assert calls and again.folder == first.folder
    torch.testing.assert_close(feature_logits(model, again, batch_size=4), full_logits(model, tokens),
                               atol=1e-2, rtol=0)


def test_truncated_hidden_file_is_not_a_hit(tmp_path: Path, monkeypatch) -> None:
    model = tiny_model()
    tokens = token_lists()
    first = cache(model, tokens, tmp_path)
    with open(first.folder / features.HIDDEN_FILE, "r+b") as handle:
        handle.truncate(100)
    calls = count_backbone_runs(model, monkeypatch)
    cache(model, tokens, tmp_path)
    assert calls


def crash_after(model: GPT2Classifier, monkeypatch: pytest.MonkeyPatch, batches: int,
                error: type[BaseException] = KeyboardInterrupt) -> list[int]:
    """Make the cache pass's backbone raise ``error`` when asked for batch ``batches + 1``; returns the batch sizes
    it ran."""
    original = FrozenPass.hidden_states
    sizes: list[int] = []

    def crash(self, input_ids, *args, **kwargs):
        if len(sizes) == batches:
            raise error("killed")
        sizes.append(len(input_ids))
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(FrozenPass, "hidden_states", crash)
    return sizes


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_computation_resumes_where_it_stopped(tmp_path: Path, monkeypatch, error) -> None:
    model = tiny_model()
    tokens = token_lists(n=11)
    with monkeypatch.context() as patch:
        first_sizes = crash_after(model, patch, batches=2, error=error)
        with pytest.raises(error, match="killed"):
            cache(model, tokens, tmp_path)
    key = cache_spec(model, tmp_path).locate(model, tokens).key
    partial = tmp_path / f".{key}{features.PARTIAL_SUFFIX}"
    assert [p.name for p in tmp_path.iterdir()] == [partial.name]  # nothing that reads as a cache
    progress = json.loads((partial / features.PROGRESS_FILE).read_text())
    assert progress["documents_done"] == sum(first_sizes) == 8  # two batches of 4
    # The time spent before the interruption carries into the total: say it was 1000 s.
    (partial / features.PROGRESS_FILE).write_text(json.dumps({**progress, "compute_seconds": 1000.0}))

    original = FrozenPass.hidden_states
    second_sizes: list[int] = []

    def counted(self, input_ids, *args, **kwargs):
        second_sizes.append(len(input_ids))
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(FrozenPass, "hidden_states", counted)
    reported: list[tuple[int, int]] = []
    dataset = cache(model, tokens, tmp_path, progress=lambda done, total: reported.append((done, total)))
    assert sum(second_sizes) == len(tokens) - 8  # only the documents not done before
    assert reported[0] == (8, 11) and reported[-1] == (11, 11)
    assert [p.name for p in tmp_path.iterdir()] == [key]
    assert sorted(p.name for p in dataset.folder.iterdir()) == sorted(
        [features.META_FILE, features.HIDDEN_FILE, features.OFFSETS_FILE])
    assert json.loads((dataset.folder / features.META_FILE).read_text())["compute_seconds"] >= 1000.0
    fresh = cache(model, tokens, tmp_path / "fresh")
    assert np.array_equal(np.fromfile(dataset.folder / features.HIDDEN_FILE, dtype=np.float16),
                          np.fromfile(fresh.folder / features.HIDDEN_FILE, dtype=np.float16))
    torch.testing.assert_close(feature_logits(model, dataset, batch_size=4), full_logits(model, tokens),
                               atol=1e-2, rtol=0)


def test_progress_is_saved_on_disk_while_computing(tmp_path: Path, monkeypatch) -> None:
    """Without an exception to catch (kill -9, power loss), the last periodic save is what a rerun resumes from."""
    monkeypatch.setattr(features, "CHECKPOINT_SECONDS", 0.0)
    model = tiny_model()
    tokens = token_lists(n=11)
    on_disk: list[int] = []

    def read_done_file(done: int, total: int) -> None:
        partial = next(tmp_path.glob(f"*{features.PARTIAL_SUFFIX}"))
        on_disk.append(int(np.frombuffer((partial / features.DONE_FILE).read_bytes(), dtype=np.uint8).sum()))

    cache(model, tokens, tmp_path, progress=read_done_file)
    assert on_disk == [0, 4, 8, 11]


@pytest.mark.parametrize("damage", ["other key", "short done file", "truncated hidden file", "no progress file"])
def test_a_partial_folder_that_does_not_match_is_recomputed_from_scratch(tmp_path: Path, monkeypatch,
                                                                          damage: str) -> None:
    model = tiny_model()
    tokens = token_lists(n=11)
    with monkeypatch.context() as patch:
        crash_after(model, patch, batches=1)
        with pytest.raises(KeyboardInterrupt):
            cache(model, tokens, tmp_path)
    partial = next(tmp_path.glob(f"*{features.PARTIAL_SUFFIX}"))
    if damage == "other key":
        info = json.loads((partial / features.PROGRESS_FILE).read_text())
        (partial / features.PROGRESS_FILE).write_text(json.dumps({**info, "key": "0" * 32}))
    elif damage == "short done file":
        (partial / features.DONE_FILE).write_bytes(b"\x01" * 3)
    elif damage == "truncated hidden file":
        with open(partial / features.HIDDEN_FILE, "r+b") as handle:
            handle.truncate(100)
    else:
        (partial / features.PROGRESS_FILE).unlink()
    sizes = count_backbone_runs(model, monkeypatch)
    dataset = cache(model, tokens, tmp_path)
    assert len(sizes) == 3  # all 11 documents again, in batches of 4
    torch.testing.assert_close(feature_logits(model, dataset, batch_size=4), full_logits(model, tokens),
                               atol=1e-2, rtol=0)


def test_values_beyond_float16_leave_nothing_to_resume(tmp_path: Path, monkeypatch) -> None:
    model = tiny_model()
    original = FrozenPass.hidden_states
    monkeypatch.setattr(FrozenPass, "hidden_states", lambda *a, **k: original(*a, **k) * 1e6)
    with pytest.raises(DataError, match="float16"):
        cache(model, token_lists(), tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- locations ------------------------------------------------------------------------------
def test_cache_root_precedence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(features.CACHE_ENV, raising=False)
    assert cache_root_dir(None) == Path.home() / ".cache" / "gpt2clf" / "features"
    monkeypatch.setenv(features.CACHE_ENV, str(tmp_path / "env"))
    assert cache_root_dir(None) == tmp_path / "env"
    assert cache_root_dir(tmp_path / "explicit") == tmp_path / "explicit"  # config.cache_dir wins
    model = tiny_model()
    dataset = cached_features(model, token_lists(n=3), None, cache_spec(model, None))
    assert dataset.folder.parent == tmp_path / "env"


# --- collator -------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_with_zeros_and_masks(side: str) -> None:
    items = [{"hidden_states": torch.full((n, 4), float(n), dtype=torch.float16), "labels": n % 2, "index": 7 + n}
             for n in (3, 1, 5)]
    batch = FeatureCollator(side)(items)
    assert batch["hidden_states"].dtype == torch.float32 and batch["hidden_states"].shape == (3, 5, 4)
    assert batch["attention_mask"].dtype == torch.long
    expected_mask = {"right": [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]],
                     "left": [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]]}[side]
    assert batch["attention_mask"].tolist() == expected_mask
    mask = batch["attention_mask"].bool()
    for row, n in enumerate((3, 1, 5)):
        assert torch.all(batch["hidden_states"][row][mask[row]] == n)
        assert torch.all(batch["hidden_states"][row][~mask[row]] == 0)
    assert batch["labels"].tolist() == [1, 1, 1] and batch["index"].tolist() == [10, 8, 12]
    with pytest.raises(ValueError):
        FeatureCollator("middle")


@pytest.mark.parametrize("side", ["right", "left"])
def test_collated_batches_give_the_cached_logits(tmp_path: Path, side: str) -> None:
    model = tiny_model()
    tokens = token_lists()
    dataset = cache(model, tokens, tmp_path)
    batch = FeatureCollator(side)([dataset[i] for i in range(len(dataset))])
    with torch.inference_mode():
        logits = logits_from_features(model, batch["hidden_states"], batch["attention_mask"])
    torch.testing.assert_close(logits, feature_logits(model, dataset, batch_size=2), atol=1e-5, rtol=1e-5)


def test_dataset_pickles_without_its_memory_map(tmp_path: Path) -> None:
    dataset = cache(tiny_model(), token_lists(n=50, longest=200), tmp_path)
    dataset[0]  # opens the map
    blob = pickle.dumps(dataset)
    assert len(blob) < 20_000  # the offsets and lengths, not 50 x 200 x 64 floats
    again = pickle.loads(blob)
    assert torch.equal(again[7]["hidden_states"], dataset[7]["hidden_states"])


def test_training_from_the_cache_gives_gradients_to_our_part_only(tmp_path: Path) -> None:
    model = tiny_model().train()
    tokens = token_lists()
    dataset = cache(model, tokens, tmp_path, labels=[i % 3 for i in range(len(tokens))])
    batch = FeatureCollator()([dataset[i] for i in range(4)])
    loss = torch.nn.functional.cross_entropy(
        logits_from_features(model, batch["hidden_states"], batch["attention_mask"]), batch["labels"])
    loss.backward()
    assert all(p.grad is not None for p in model.head_parameters())
    assert all(p.grad is None for p in model.backbone_parameters())
    assert model.training  # cached_features restored the mode


# --- the real tokenizer ---------------------------------------------------------------------
def test_real_tokenizer_texts(tmp_path: Path, tokenizer) -> None:
    from gpt2clf.data.batching import tokenize_texts

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=256)  # the real 50,257-token vocabulary
    model = GPT2Classifier(GPT2Model(config), ClassifierSpec(num_labels=2, n_embed=64, n_heads=2)).eval()
    texts = ["GPU drivers for X11?", "The Sharks won in overtime last night.", "", "a " * 300]
    tokens = tokenize_texts(texts, tokenizer, max_length=128)
    spec = FeatureCacheSpec.for_model(model, cache_root=tmp_path, tokenizer_name=str(tokenizer.name_or_path),
                                      max_length=128)
    dataset = cached_features(model, tokens, [0, 1, 0, 1], spec)
    assert dataset.lengths == [len(t) for t in tokens] and dataset.lengths[-1] == 128
    reference = batched_logits(model, tokens, PaddingCollator(tokenizer.pad_token_id), batch_size=2)
    torch.testing.assert_close(feature_logits(model, dataset, batch_size=2), reference, atol=1e-3, rtol=0)


# --- the backbone split (train_top_layers) ---------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
def test_backbone_split_reproduces_the_full_pass(side: str) -> None:
    model = tiny_model(n_layer=3)
    ids = torch.randint(1, VOCAB, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    if side == "right":
        mask[0, 7:] = 0
        mask[1, 2:] = 0
    else:
        mask[0, :5] = 0
        mask[1, :10] = 0
    with torch.inference_mode():
        full = model.backbone_hidden_states(ids, mask)
        for layer in (1, 2):
            lower = model.backbone_hidden_states(ids, mask, num_layers=layer)
            assert lower.shape == full.shape
            out = model.backbone_from_layer(lower, mask, layer)
            torch.testing.assert_close(out[mask.bool()], full[mask.bool()], atol=1e-5, rtol=1e-5)
    assert len(model.backbone_layers()) == 3  # the layer list is restored


def test_backbone_split_runs_only_the_requested_layers(monkeypatch) -> None:
    model = tiny_model(n_layer=3)
    ran: list[int] = []
    for i, layer in enumerate(model.backbone_layers()):
        layer.register_forward_pre_hook(lambda module, args, i=i: ran.append(i))
    ids, mask = torch.randint(1, VOCAB, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    with torch.inference_mode():
        lower = model.backbone_hidden_states(ids, mask, num_layers=2)
        assert ran == [0, 1]
        ran.clear()
        model.backbone_from_layer(lower, mask, 2)
        assert ran == [2]


@pytest.mark.parametrize("layer", [0, 3, -1])
def test_backbone_split_rejects_bad_layers(layer: int) -> None:
    model = tiny_model(n_layer=3)
    ids, mask = torch.randint(1, VOCAB, (1, 4)), torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ConfigError):
        model.backbone_hidden_states(ids, mask, num_layers=layer)
    with pytest.raises(ConfigError):
        model.backbone_from_layer(torch.zeros(1, 4, 64), mask, layer)


def test_top_layers_cache_matches_the_full_model_and_trains_the_top_layers(tmp_path: Path) -> None:
    model = tiny_model()
    model.set_trainable("backbone", train_top_layers=1)
    tokens = token_lists()
    dataset = cache(model, tokens, tmp_path, train_top_layers=1)
    assert dataset.start_layer == 1
    torch.testing.assert_close(feature_logits(model, dataset, batch_size=3), full_logits(model, tokens),
                               atol=1e-2, rtol=0)
    # Training the top layer changes its weights but keeps the cache key (only the frozen part counts).
    model.train()
    batch = FeatureCollator()([dataset[i] for i in range(4)])
    logits = logits_from_features(model, batch["hidden_states"], batch["attention_mask"], dataset.start_layer)
    logits.sum().backward()
    top, bottom = model.backbone.h[1], model.backbone.h[0]
    assert all(p.grad is not None for p in top.parameters())
    assert all(p.grad is None for p in bottom.parameters())
    with torch.no_grad():
        top.mlp.c_fc.weight.add_(1.0)
    assert cache(model, tokens, tmp_path, train_top_layers=1).key == dataset.key
    with pytest.raises(ConfigError):
        cache(model, tokens, tmp_path, train_top_layers=2)


def test_no_stray_files_in_the_cache_root(tmp_path: Path) -> None:
    dataset = cache(tiny_model(), token_lists(), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [dataset.key]
    assert sorted(p.name for p in dataset.folder.iterdir()) == sorted(
        [features.META_FILE, features.HIDDEN_FILE, features.OFFSETS_FILE])
    assert os.path.getsize(dataset.folder / features.HIDDEN_FILE) == 2 * 64 * sum(dataset.lengths)


def test_from_lower_runs_only_the_layers_above_a_top_layers_cache(tmp_path: Path, monkeypatch) -> None:
    """A frozen run after a top-K run on the same documents may start from the top-K run's cache (opt-in): only
    the layers above it run, the states match a full pass up to float16 rounding, and the cache has its own key."""
    from gpt2clf.training.feature_cache import layers_to_compute

    model = tiny_model(n_layer=3)
    tokens = token_lists()
    lower = cache(model, tokens, tmp_path, train_top_layers=2)  # the output of layer 0
    assert layers_to_compute(model, tokens, cache_spec(model, tmp_path, from_lower=True)) == 2
    assert layers_to_compute(model, tokens, cache_spec(model, tmp_path)) == 3
    ran: list[int] = []
    original = FrozenPass.run_layers

    def counted(self, hidden, mask, start):
        ran.append(start)
        return original(self, hidden, mask, start)

    monkeypatch.setattr(FrozenPass, "run_layers", counted)
    backbone_runs = count_backbone_runs(model, monkeypatch)
    derived = cache(model, tokens, tmp_path, from_lower=True)
    assert ran and set(ran) == {1} and not backbone_runs  # layers 1 and 2 only, from the stored states
    assert derived.start_layer is None and derived.meta["derived_from_layer"] == 1
    assert layers_to_compute(model, tokens, cache_spec(model, tmp_path, from_lower=True)) == 0
    torch.testing.assert_close(feature_logits(model, derived, batch_size=3), full_logits(model, tokens),
                               atol=1e-2, rtol=0)
    # Layer 1's output (a top-1 cache) can come from the same lower cache.
    middle = cache(model, tokens, tmp_path, train_top_layers=1, from_lower=True)
    assert middle.start_layer == 2 and middle.meta["derived_from_layer"] == 1
    direct = cache(model, tokens, tmp_path / "direct", train_top_layers=1)
    for i in range(len(tokens)):
        torch.testing.assert_close(middle[i]["hidden_states"].float(), direct[i]["hidden_states"].float(),
                                   atol=2e-2, rtol=1e-2)
    # Without the opt-in, a full pass computes the direct cache: its own key, not the derived one.
    full = cache(model, tokens, tmp_path)
    assert full.key not in (derived.key, lower.key) and "derived_from_layer" not in full.meta
    assert len(backbone_runs) > 0


def test_the_estimate_counts_only_what_an_interrupted_run_left_to_do(tmp_path: Path, monkeypatch) -> None:
    from gpt2clf.training.feature_cache import layers_to_compute

    model = tiny_model()
    tokens = token_lists(n=11)
    assert layers_to_compute(model, tokens, cache_spec(model, tmp_path)) == 2
    with monkeypatch.context() as patch:
        sizes = crash_after(model, patch, batches=2)
        with pytest.raises(KeyboardInterrupt):
            cache(model, tokens, tmp_path)
    lengths = sorted((len(t) for t in tokens), reverse=True)  # the longest documents go first
    left = sum(lengths[sum(sizes):]) / sum(lengths)
    assert 0 < left < 1
    assert layers_to_compute(model, tokens, cache_spec(model, tmp_path)) == pytest.approx(2 * left)
    cache(model, tokens, tmp_path)
    assert layers_to_compute(model, tokens, cache_spec(model, tmp_path)) == 0


def test_disk_check_counts_only_what_is_left_to_write(tmp_path: Path, monkeypatch) -> None:
    from collections import namedtuple

    model = tiny_model()
    tokens = token_lists(n=11)
    full = 2 * 64 * sum(len(t) for t in tokens)
    usage = namedtuple("usage", "total used free")

    def free_bytes(n: int) -> None:
        monkeypatch.setattr(features.shutil, "disk_usage", lambda path: usage(10**12, 0, n))

    free_bytes(full // 2)
    with pytest.raises(DataError, match=r"needs .* GiB more"):
        cache(model, tokens, tmp_path)
    assert list(tmp_path.iterdir()) == []
    free_bytes(10**12)
    with monkeypatch.context() as patch:
        sizes = crash_after(model, patch, batches=2)
        with pytest.raises(KeyboardInterrupt):
            cache(model, tokens, tmp_path)
    left = sum(sorted((len(t) for t in tokens), reverse=True)[sum(sizes):])
    assert 2 * 64 * left < full // 2
    free_bytes(full // 2)  # too little for all of it, enough for the rest
    dataset = cache(model, tokens, tmp_path)
    assert features._read_meta(dataset.folder) is not None


# --- which cache a run uses --------------------------------------------------------------------
@pytest.mark.parametrize(("settings", "start_layer"), [
    (dict(freeze="backbone"), None),  # the backbone's output
    (dict(train_top_layers=0), None),  # no top layer trains: the same
    (dict(train_top_layers=1), 2),  # layer 1's output, under the top layer
    (dict(train_top_layers=3), "none"),  # every layer trains: nothing frozen to cache
    (dict(freeze="none"), "none"),
    (dict(freeze="backbone", feature_cache=False), "none"),
])
def test_a_run_reads_its_frozen_part_from_the_cache_chosen_once(tmp_path: Path, settings: dict,
                                                               start_layer: int | str | None) -> None:
    from gpt2clf import Config
    from gpt2clf.training.inputs import CachedStates, TokenInputs, choose_inputs

    model = tiny_model(n_layer=3)
    config = Config(backbone="gpt2", cache_dir=str(tmp_path), max_length=64, **settings)
    inputs = choose_inputs(config, model)
    if start_layer == "none":
        assert isinstance(inputs, TokenInputs) and inputs.cache is None
        return
    assert isinstance(inputs, CachedStates)
    spec = inputs.cache
    assert (spec.root, spec.start_layer, spec.max_length) == (tmp_path, start_layer, 64)
    assert spec.frozen_layers == (3 if start_layer is None else start_layer)
    assert spec.batch_size == config.effective_eval_batch_size and spec.tokenizer_name == "gpt2"
