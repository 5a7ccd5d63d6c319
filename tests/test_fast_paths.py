"""The speed features give the same results as the plain paths (no timings are asserted).

Covered here: dynamic padding with length-grouped batches, length-sorted prediction batches
returned in input order, SDPA in our blocks against a hand-written softmax attention, the
backbone's SDPA against its eager attention, bf16 autocast on CPU, and int8 dynamic
quantization for CPU inference. Elsewhere: gradient checkpointing
(``tests/test_model.py::test_gradient_checkpointing_gives_the_same_gradients``) and the
frozen-backbone feature cache (``tests/test_features.py``). ``torch.compile`` is not offered:
on the 2-core CPU it spent ~110 s compiling even a 2-layer model, recompiled for every new
padded length, and ran no faster afterwards (see BENCHMARKS.md).

Models are tiny and randomly initialised (GPT-2 with 2 layers of width 64); the head is
re-initialised with std 1 so logits are O(1) and the tolerances below mean something.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2Model
from transformers.pytorch_utils import Conv1D

from gpt2clf.data.batching import LengthGroupedSampler, PaddingCollator, TokenizedDataset
from gpt2clf.infer.predictor import batched_logits
from gpt2clf.infer.runtime import quantize_for_cpu_inference
from gpt2clf.model.backbone import conv1d_to_linear as _conv1d_to_linear
from gpt2clf.model.backbone import use_fused_gelu
from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier, SelfAttention

VOCAB = 1000
PAD = 0


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 saved like a hub checkpoint (so from_backbone can pick the attention)."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=256, vocab_size=VOCAB, bos_token_id=1,
                        eos_token_id=1)
    folder = tmp_path_factory.mktemp("gpt2")
    GPT2Model(config).save_pretrained(folder)
    return folder


def make_model(folder: Path, *, attn_implementation: str = "sdpa", pooling: str = "last") -> GPT2Classifier:
    torch.manual_seed(1)
    spec = ClassifierSpec(num_labels=5, n_embed=64, n_heads=2, n_blocks=2, dropout=0.1, pooling=pooling)
    model = GPT2Classifier.from_backbone(str(folder), spec, attn_implementation=attn_implementation)
    torch.nn.init.normal_(model.head[1].weight, std=1.0)  # O(1) logits
    return model.eval()


def token_lists(n: int = 13, seed: int = 2, longest: int = 48) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, longest + 1, (n,), generator=generator).tolist()
    return [torch.randint(1, VOCAB, (length,), generator=generator).tolist() for length in lengths]


# --- batching ---------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_sorted_prediction_batches_come_back_in_input_order(gpt2_dir: Path, side: str, pooling: str) -> None:
    model = make_model(gpt2_dir, pooling=pooling)
    tokens = token_lists()
    batched = batched_logits(model, tokens, PaddingCollator(PAD, side), batch_size=4)
    one_at_a_time = torch.cat([batched_logits(model, [t], PaddingCollator(PAD), batch_size=1) for t in tokens])
    torch.testing.assert_close(batched, one_at_a_time, atol=1e-5, rtol=1e-5)
    assert torch.equal(batched.argmax(-1), one_at_a_time.argmax(-1))
    assert model.training is False


def test_length_grouped_dynamic_padding_matches_max_length_padding(gpt2_dir: Path) -> None:
    model = make_model(gpt2_dir)
    tokens = token_lists(n=24)
    dataset = TokenizedDataset(tokens, [i % 5 for i in range(len(tokens))])
    sampler = LengthGroupedSampler(dataset.lengths, batch_size=4, shuffle=True, group_by_length=True, seed=3,
                                   megabatch_factor=3)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, collate_fn=PaddingCollator(PAD))
    grouped = torch.empty(len(tokens), 5)
    seen: list[int] = []
    padded_slots = 0
    with torch.inference_mode():
        for batch in loader:
            grouped[batch["index"]] = model(batch["input_ids"], batch["attention_mask"])
            seen += batch["index"].tolist()
            padded_slots += batch["attention_mask"].numel()
    assert sorted(seen) == list(range(len(tokens)))
    # The seed's way: every document padded to one fixed length, all in one batch.
    width = 64
    ids = torch.full((len(tokens), width), PAD)
    mask = torch.zeros(len(tokens), width, dtype=torch.long)
    for row, t in enumerate(tokens):
        ids[row, :len(t)] = torch.tensor(t)
        mask[row, :len(t)] = 1
    with torch.inference_mode():
        fixed = model(ids, mask)
    torch.testing.assert_close(grouped, fixed, atol=1e-5, rtol=1e-5)
    assert padded_slots < mask.numel()  # and grouping did save padding


# --- attention kernels ------------------------------------------------------------------------
def manual_attention(module: SelfAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention written out: real keys only, and a padded query attends to itself."""
    B, T, C = x.shape
    heads = module.n_heads
    q, k, v = module.qkv(x).split(C, dim=2)
    q, k, v = (t.view(B, T, heads, C // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(C // heads)
    if mask is not None:
        allowed = mask.bool()[:, None, None, :] | torch.eye(T, dtype=torch.bool)
        scores = scores.masked_fill(~allowed, float("-inf"))
    y = scores.softmax(dim=-1) @ v
    return module.out_proj(y.transpose(1, 2).reshape(B, T, C))


def test_sdpa_in_our_blocks_matches_manual_attention() -> None:
    torch.manual_seed(0)
    module = SelfAttention(64, 4).eval()
    x = torch.randn(3, 9, 64)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, 5:] = 0
    mask[1, :7] = 0
    with torch.no_grad():
        for m in (mask, None):
            torch.testing.assert_close(module(x, m), manual_attention(module, x, m), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_backbone_sdpa_and_eager_attention_agree(gpt2_dir: Path, side: str) -> None:
    sdpa = make_model(gpt2_dir, attn_implementation="sdpa")
    eager = make_model(gpt2_dir, attn_implementation="eager")
    assert sdpa.backbone.config._attn_implementation == "sdpa"
    assert eager.backbone.config._attn_implementation == "eager"
    tokens = token_lists()
    a = batched_logits(sdpa, tokens, PaddingCollator(PAD, side), batch_size=5)
    b = batched_logits(eager, tokens, PaddingCollator(PAD, side), batch_size=5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# --- precision --------------------------------------------------------------------------------
def test_bf16_autocast_on_cpu_stays_within_bf16_tolerance(gpt2_dir: Path) -> None:
    """bf16 keeps 8 significant bits (relative rounding 2^-8 ~ 0.4% per op).

    Rounding errors partly cancel over two GPT-2 layers, two blocks and the head: about
    0.4% of the logit scale is seen here. 2% of the scale leaves a 5x margin and still
    catches a broken path (wrong dtype handling, masking or order), which moves logits by
    their whole scale.
    """
    model = make_model(gpt2_dir)
    tokens = token_lists()
    full = batched_logits(model, tokens, PaddingCollator(PAD), batch_size=4)
    mixed = batched_logits(model, tokens, PaddingCollator(PAD), batch_size=4, precision="bf16-mixed")
    assert mixed.dtype == torch.float32
    scale = float(full.abs().max())
    assert scale > 0.5
    assert float((mixed - full).abs().max()) <= 0.02 * scale
    assert not torch.equal(mixed, full)  # autocast really ran in bf16


# --- fused GELU -------------------------------------------------------------------------------
def test_fused_gelu_gives_the_same_logits_and_gradients(gpt2_dir: Path) -> None:
    from transformers.activations import NewGELUActivation

    plain, fused = make_model(gpt2_dir), make_model(gpt2_dir)
    assert use_fused_gelu(fused) == 2  # one per GPT-2 layer
    assert not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    assert use_fused_gelu(fused) == 0
    ids, mask = torch.randint(1, VOCAB, (3, 12)), torch.ones(3, 12, dtype=torch.long)
    mask[0, 8:] = 0
    losses = [model(ids, mask).logsumexp(-1).sum() for model in (plain, fused)]
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    for loss in losses:
        loss.backward()
    for (name, a), b in zip(plain.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)


# --- int8 -------------------------------------------------------------------------------------
def test_conv1d_to_linear_is_exact(gpt2_dir: Path) -> None:
    model = make_model(gpt2_dir)
    ids, mask = torch.randint(1, VOCAB, (2, 10)), torch.ones(2, 10, dtype=torch.long)
    with torch.no_grad():
        before = model(ids, mask)
        _conv1d_to_linear(model.backbone)
        after = model(ids, mask)
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_int8_quantized_copy_stays_close_and_leaves_the_model_alone(gpt2_dir: Path) -> None:
    model = make_model(gpt2_dir, pooling="mean")
    tokens = token_lists(n=32)
    reference = batched_logits(model, tokens, PaddingCollator(PAD), batch_size=8)
    quantized = quantize_for_cpu_inference(model)
    assert quantized is not model
    assert any(isinstance(m, Conv1D) for m in model.modules())  # the original is untouched
    kinds = {type(m).__module__ + "." + type(m).__name__ for m in quantized.backbone.modules()}
    assert any("quantized" in k for k in kinds)
    assert type(quantized.head[1]) is torch.nn.Linear  # the head stays float32
    int8 = batched_logits(quantized, tokens, PaddingCollator(PAD), batch_size=8)
    # int8 weights and activations: ~1% relative error per matmul; ~3% of the logit scale is
    # seen here, so 10% leaves a 3x margin. Near-tied documents may flip their top label.
    scale = float(reference.abs().max())
    assert float((int8 - reference).abs().max()) <= 0.1 * scale
    probabilities, int8_probabilities = reference.softmax(-1), int8.softmax(-1)
    assert float((probabilities - int8_probabilities).abs().max()) < 0.1
    assert (probabilities.argmax(-1) == int8_probabilities.argmax(-1)).float().mean() >= 0.9
    torch.testing.assert_close(batched_logits(model, tokens, PaddingCollator(PAD), batch_size=8), reference)
