"""Training and inference throughput: the seed's pipeline against gpt2clf, on real 20 Newsgroups text.

Four pipelines, all over GPT-2 small dimensions (``GPT2Config()``, random weights: no
pretrained weights are needed to time them) and the same documents (a fixed seeded sample
of the 20 Newsgroups training posts, tokenized with the real GPT-2 tokenizer):

(a) ``seed``: Hugging Face ``GPT2Model`` + the seed's head (2 pre-LN blocks of width 768 with
    2 heads whose attention ignores padding, mean pooling over all 512 slots, a linear head),
    every document padded to 512 tokens, fp32, batches of 16 in data order, plain AdamW.
(b) ``hf``: ``GPT2ForSequenceClassification``, same settings as (a).
(c) ``gpt2clf``: :class:`gpt2clf.model.classifier.GPT2Classifier` (2 blocks of 768, 2 heads), full
    fine-tuning at its best settings: dynamic padding, length-grouped batches of 16, SDPA,
    the faster of fp32 and bf16 autocast on this device (probed), fused AdamW; inference
    through :func:`gpt2clf.infer.predictor.batched_logits` (length-sorted, inference mode), and
    on CPU also through the int8 copy of :func:`gpt2clf.infer.runtime.quantize_for_cpu_inference`.
(d) ``frozen``: gpt2clf with a frozen backbone: one backbone pass into the feature cache
    (:func:`gpt2clf.training.feature_cache.cached_features`), then training blocks + head from the cache.

Each pipeline runs in its own subprocess (same environment, one after the other), so each
reports its own peak resident memory (``ru_maxrss``; on CUDA ``max_memory_allocated``).
Training steps are forward + backward + optimizer step, timed after one small warm-up step;
the matmul peak is measured in the same run (largest of several ``torch.matmul`` timings).

Usage::

    python benchmarks/throughput.py --json            # CPU, GPT-2 small dims (~7 minutes on 2 cores)
    python benchmarks/throughput.py --tiny             # smoke run, tiny model (~1 minute)
    python benchmarks/throughput.py --device cuda --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
NUM_LABELS = 20
# The whole 20 Newsgroups job that the projections describe.
CORPUS_DOCS = 18_846
TRAIN_DOCS = 9_051  # 11,314 training posts less the 20% validation carve-out
VALIDATION_DOCS = 2_263
TEST_DOCS = 7_532
EPOCHS = 5
TARGETS = {"train_speedup_vs_seed": 2.5, "infer_speedup_vs_seed": 3.0, "mfu_c": 0.5, "frozen_job_minutes": 60.0}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Shared helpers (parent and workers)
# ------------------------------------------------------------------------------------------
def gpt2_config(tiny: bool):
    from transformers import GPT2Config

    if tiny:
        return GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=512)
    return GPT2Config()  # GPT-2 small: 12 layers, width 768, 12 heads, 1024 positions


def head_width(tiny: bool) -> int:
    return 64 if tiny else 768


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def non_embedding_parameters(model) -> int:
    """Parameters that take part in matmuls per token: everything but token and position embeddings."""
    import torch

    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return sum(p.numel() for p in model.parameters()) - embedding


def attention_layers(tiny: bool) -> tuple[int, int]:
    """(layers with attention, their width): GPT-2's and our/the seed's blocks share width 768."""
    config = gpt2_config(tiny)
    return config.n_layer, config.n_embd


def batch_flops(n_params: int, layers: int, width: int, batch: int, length: int, training: bool) -> float:
    """Model FLOPs of one padded (batch, length) batch: 2N (forward) or 6N per token plus attention.

    Attention scores and the weighted sum cost 4 * length * width FLOPs per token and layer in
    the forward pass (counted in full, causal or not), 3x that in training.
    """
    tokens = batch * length
    per_token = 2 * n_params + 4 * layers * width * length
    return (3 if training else 1) * per_token * tokens


def pad_batch(token_lists: list[list[int]], pad_id: int, length: int | None = None):
    """Right-padded ids and mask: to ``length`` (the seed's max_length padding) or to the longest."""
    import torch

    width = length or max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        ids[row, :len(tokens)] = torch.tensor(tokens[:width])
        mask[row, :len(tokens)] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------
# (a) the seed's head, reimplemented minimally
# ------------------------------------------------------------------------------------------
def build_seed_model(tiny: bool, dropout: float):
    import torch
    from torch import nn
    from transformers import GPT2Model

    class SeedBlock(nn.Module):
        """Pre-LN block; its attention is given no padding mask (the seed's design)."""

        def __init__(self, width: int, heads: int) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(width)
            self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
            self.ln2 = nn.LayerNorm(width)
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width),
                                     nn.Dropout(dropout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.ln1(x)
            # need_weights=False lets PyTorch use its fused SDPA kernel: the seed is not handicapped.
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.mlp(self.ln2(x))

    class SeedClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gpt2 = GPT2Model(gpt2_config(tiny))
            width = head_width(tiny)
            self.blocks = nn.ModuleList([SeedBlock(width, 2) for _ in range(2)])
            self.ln = nn.LayerNorm(width)
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, NUM_LABELS))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            x = self.gpt2(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x).mean(dim=1))  # mean over all 512 slots, pads included

    return SeedClassifier()


# ------------------------------------------------------------------------------------------
# Workers (each in its own process)
# ------------------------------------------------------------------------------------------
def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


class Timer:
    """Wall seconds of a region; the share of the CPUs this process and other processes used meanwhile.

    ``cpu_share``: this process's CPU time / (wall x torch threads). ``other_cpu_share``: CPU
    time of everything else on the machine / (wall x CPUs). Other processes competing for
    the cores (``other_cpu_share`` above ~0.05) make the timing pessimistic; both are reported
    with every timing.
    """

    def __init__(self, device) -> None:
        import torch

        self.device = device
        self.threads = torch.get_num_threads()

    def __enter__(self) -> Timer:
        sync(self.device)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu = usage.ru_utime + usage.ru_stime
        self._busy = busy_cpu_seconds()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._start
        usage = resource.getrusage(resource.RUSAGE_SELF)
        own = usage.ru_utime + usage.ru_stime - self._cpu
        self.cpu_share = own / (self.seconds * self.threads)
        busy = busy_cpu_seconds()
        self.other_cpu_share = (None if busy is None or self._busy is None
                                else max(0.0, (busy - self._busy - own) / (self.seconds * (os.cpu_count() or 1))))


def make_step(model, optimizer, device, forward, autocast, micro_batch: int | None = None):
    """One optimizer step over a batch: forward, backward (in micro-batches if asked), AdamW.

    Micro-batches accumulate gradients of ``loss * (micro size / batch size)``, so the update
    equals the one of the whole batch (up to float rounding; the dropout masks differ).
    """
    import torch.nn.functional as F

    def step(ids, mask, labels):
        size = len(ids)
        chunk = micro_batch or size
        for start in range(0, size, chunk):
            part = slice(start, start + chunk)
            with autocast():
                logits = forward(ids[part].to(device), mask[part].to(device))
            loss = F.cross_entropy(logits.float(), labels[part].to(device)) * (len(ids[part]) / size)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    return step


def timed_training(step, batches: list, warmup, device) -> Timer:
    """Time one optimizer step per batch in ``batches``, after one small warm-up step."""
    step(*warmup)
    with Timer(device) as timer:
        for batch in batches:
            step(*batch)
    return timer


def rate(docs: int, tokens: int, timer: Timer, **extra: Any) -> dict[str, Any]:
    return {"docs": docs, "useful_tokens": tokens, "seconds": timer.seconds, "docs_per_s": docs / timer.seconds,
            "useful_tokens_per_s": tokens / timer.seconds, "cpu_share": timer.cpu_share,
            "other_cpu_share": timer.other_cpu_share, **extra}


def worker(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    import contextlib

    import torch

    torch.manual_seed(0)
    device = torch.device(payload["device"])
    tiny = payload["tiny"]
    pad_id = payload["pad_id"]
    batch_size = payload["batch_size"]
    max_length = payload["max_length"]
    precision = payload["precision"]
    dropout = 0.2  # the seed's ("blog" preset) dropout in its blocks; GPT-2's own config stays default
    layers, width = attention_layers(tiny)
    layers += 2  # two blocks on top, in every pipeline but (b)
    result: dict[str, Any] = {"name": name, "loadavg_before": os.getloadavg()[0]}
    warm_tokens = [t[:32] for t in payload["seed_docs"][:2]]
    warm_ids, warm_mask = pad_batch(warm_tokens, pad_id)
    warmup = (warm_ids, warm_mask, torch.tensor(payload["seed_labels"][:2]))

    if name in ("seed", "hf", "seed_micro"):
        # The seed's data path: every document padded to max_length, batches in data order.
        docs, docs_labels = payload["seed_docs"], payload["seed_labels"]
        useful = sum(len(t) for t in docs)
        batches = []
        for start in range(0, len(docs), batch_size):
            ids, mask = pad_batch(docs[start:start + batch_size], pad_id, max_length)
            batches.append((ids, mask, torch.tensor(docs_labels[start:start + batch_size])))
        if name in ("seed", "seed_micro"):
            model = build_seed_model(tiny, dropout).to(device)
            forward = model
        else:
            from transformers import GPT2ForSequenceClassification

            config = gpt2_config(tiny)
            config.num_labels = NUM_LABELS
            config.pad_token_id = pad_id
            model = GPT2ForSequenceClassification(config).to(device)

            def forward(ids, mask):
                return model(input_ids=ids, attention_mask=mask).logits

            layers -= 2
        result["attn_implementation"] = model.config._attn_implementation if name == "hf" else \
            model.gpt2.config._attn_implementation
        n_params = non_embedding_parameters(model)
        result["non_embedding_parameters"] = n_params
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)  # the seed's plain AdamW
        # seed_micro: the seed with only gpt2clf's micro-batching added (to show where the speed comes from).
        micro = payload["micro_batch"] if name == "seed_micro" else None
        timer = timed_training(make_step(model, optimizer, device, forward, contextlib.nullcontext, micro), batches,
                               warmup, device)
        del optimizer
        processed = sum(b[0].numel() for b in batches)
        flops = sum(batch_flops(n_params, layers, width, len(b[0]), max_length, True) for b in batches)
        result["train"] = rate(len(docs), useful, timer, processed_tokens_per_s=processed / timer.seconds,
                               achieved_flops=flops / timer.seconds, micro_batch=micro)
        if name == "seed_micro":  # training only: its inference is the seed's
            result["peak_memory_mb"] = peak_memory_mb(device)
            return result
        model.eval()
        with torch.no_grad():
            forward(warm_ids.to(device), warm_mask.to(device))
            with Timer(device) as timer:
                for ids, mask, _ in batches:
                    forward(ids.to(device), mask.to(device))
        flops = sum(batch_flops(n_params, layers, width, len(b[0]), max_length, False) for b in batches)
        result["infer"] = rate(len(docs), useful, timer, achieved_flops=flops / timer.seconds)

    elif name in ("gpt2clf", "frozen"):
        from transformers import GPT2Model

        from gpt2clf.data.batching import PaddingCollator, TokenizedDataset
        from gpt2clf.infer.predictor import batched_logits
        from gpt2clf.infer.runtime import autocast_context, quantize_for_cpu_inference
        from gpt2clf.model.backbone import use_fused_gelu
        from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier
        from gpt2clf.training.feature_cache import (
            FeatureCacheSpec,
            FeatureCollator,
            cached_features,
            feature_logits,
            logits_from_features,
        )

        # Length-grouped batches as training's LengthGroupedSampler made them (chosen in the parent).
        groups: list[list[list[int]]] = payload["grouped_docs"]
        group_labels: list[list[int]] = payload["grouped_labels"]
        tokens = [t for group in groups for t in group]
        labels = [label for group in group_labels for label in group]
        order, start = [], 0
        for group in groups:
            order.append(list(range(start, start + len(group))))
            start += len(group)
        useful = sum(len(t) for t in tokens)
        backbone = GPT2Model._from_config(gpt2_config(tiny), attn_implementation="sdpa")
        spec = ClassifierSpec(num_labels=NUM_LABELS, n_embed=head_width(tiny), n_heads=2, n_blocks=2,
                              dropout=dropout, pooling="last")
        model = GPT2Classifier(backbone, spec).to(device)
        result["fused_gelu_modules"] = use_fused_gelu(model)
        n_params = non_embedding_parameters(model)
        result["non_embedding_parameters"] = n_params
        micro = payload["micro_batch"]

        def autocast():
            return autocast_context(device, precision)

        if name == "gpt2clf":
            model.set_trainable("none")
            collate = PaddingCollator(pad_id)
            dataset = TokenizedDataset.from_token_lists(tokens, labels)
            batches = []
            for indices in order:
                b = collate([dataset[i] for i in indices])
                batches.append((b["input_ids"], b["attention_mask"], b["labels"]))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
            timer = timed_training(make_step(model, optimizer, device, model, autocast, micro), batches, warmup,
                                   device)
            del optimizer
            processed = sum(b[0].numel() for b in batches)
            flops = sum(batch_flops(n_params, layers, width, b[0].shape[0], b[0].shape[1], True) for b in batches)
            useful_flops = sum(batch_flops(n_params, layers, width, 1, len(t), True) for t in tokens)
            result["train"] = rate(len(tokens), useful, timer, processed_tokens_per_s=processed / timer.seconds,
                                   padding_efficiency=useful / processed, achieved_flops=flops / timer.seconds,
                                   useful_flops=useful_flops / timer.seconds, micro_batch=micro,
                                   batch_shapes=[list(b[0].shape) for b in batches])
            model.eval()

            def timed_inference(m, precision: str) -> tuple[Timer, Any]:
                batched_logits(m, warm_tokens, PaddingCollator(pad_id), batch_size=batch_size, device=device,
                               precision=precision)
                with Timer(device) as timer:
                    logits = batched_logits(m, tokens, PaddingCollator(pad_id), batch_size=batch_size, device=device,
                                            precision=precision)
                return timer, logits

            timer, reference = timed_inference(model, precision)
            flops = sum(batch_flops(n_params, layers, width, 1, len(t), False) for t in tokens)
            result["infer"] = rate(len(tokens), useful, timer, useful_flops=flops / timer.seconds,
                                   precision=precision)
            if device.type == "cpu":
                # The int8 copy computes in float32 around its int8 matmuls: no autocast.
                timer, logits = timed_inference(quantize_for_cpu_inference(model), "32-true")
                p, q = reference.softmax(-1), logits.softmax(-1)
                result["infer_int8"] = rate(
                    len(tokens), useful, timer,
                    top1_agreement=float((p.argmax(-1) == q.argmax(-1)).float().mean()),
                    max_probability_delta=float((p - q).abs().max()),
                    max_logit_delta=float((reference - logits).abs().max()),
                    logit_scale=float(reference.abs().max()))
        else:  # frozen backbone + feature cache
            model.set_trainable("backbone")
            with tempfile.TemporaryDirectory(prefix="gpt2clf-bench-cache-") as root:
                with Timer(device) as timer:
                    spec = FeatureCacheSpec.for_model(model, cache_root=root, tokenizer_name="gpt2",
                                                      batch_size=batch_size, precision=precision,
                                                      max_length=max_length)
                    features = cached_features(model, tokens, labels, spec, device=device)
                backbone_params = non_embedding_parameters(model.backbone)
                flops = sum(batch_flops(backbone_params, layers - 2, width, 1, len(t), False) for t in tokens)
                result["backbone_pass"] = rate(len(tokens), useful, timer, useful_flops=flops / timer.seconds,
                                               cache_bytes=2 * features.width * sum(features.lengths))
                collate = FeatureCollator()
                batches = []
                for indices in order:
                    b = collate([features[i] for i in indices])
                    batches.append((b["hidden_states"], b["attention_mask"], b["labels"]))
                warm = collate([{**features[i], "hidden_states": features[i]["hidden_states"][:32]} for i in range(2)])
                optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                              fused=True)

                def forward(hidden, mask):
                    return logits_from_features(model, hidden, mask)

                timer = timed_training(make_step(model, optimizer, device, forward, autocast, micro), batches,
                                       (warm["hidden_states"], warm["attention_mask"], warm["labels"]), device)
                block_params = n_params - backbone_params
                flops = sum(batch_flops(block_params, 2, width, 1, len(t), True) for t in tokens)
                result["train_from_cache"] = rate(len(tokens), useful, timer, useful_flops=flops / timer.seconds)
                with Timer(device) as timer:
                    feature_logits(model, features, batch_size=batch_size, device=device, precision=precision)
                result["infer_from_cache"] = rate(len(tokens), useful, timer)
    else:
        raise SystemExit(f"unknown worker {name!r}")
    result["peak_memory_mb"] = peak_memory_mb(device)
    result["peak_memory_kind"] = "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"
    result["loadavg_after"] = os.getloadavg()[0]
    return result


def memory_worker(payload: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of gpt2clf training steps at batch x max_length (every token real).

    ``checkpointing``: gradient checkpointing on; ``micro_batch``: the batch split into
    micro-batches with accumulated gradients (and the fused GELU), gpt2clf's CPU setting.
    The peak is reached in the first step (activations, then the AdamW state).
    """
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Model

    from gpt2clf.model.backbone import use_fused_gelu
    from gpt2clf.model.classifier import ClassifierSpec, GPT2Classifier

    device = torch.device(payload["device"])
    tiny = payload["tiny"]
    torch.manual_seed(0)
    model = GPT2Classifier(GPT2Model._from_config(gpt2_config(tiny), attn_implementation="sdpa"),
                           ClassifierSpec(num_labels=NUM_LABELS, n_embed=head_width(tiny), n_heads=2, n_blocks=2,
                                          dropout=0.2)).to(device).train()
    if payload["checkpointing"]:
        model.enable_gradient_checkpointing()
    micro = payload.get("micro_batch")
    if micro:
        use_fused_gelu(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    batch = payload["batch_size"]
    ids = torch.randint(0, 50_000, (batch, payload["max_length"]), device=device)
    mask = torch.ones_like(ids)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    step = micro or batch
    start = time.perf_counter()
    for _ in range(payload["steps"]):
        for first in range(0, batch, step):
            part = slice(first, first + step)
            (F.cross_entropy(model(ids[part], mask[part]), labels[part]) * (step / batch)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return {"checkpointing": payload["checkpointing"], "micro_batch": micro, "steps": payload["steps"],
            "seconds_per_step": (time.perf_counter() - start) / payload["steps"],
            "peak_memory_mb": peak_memory_mb(device),
            "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"}


# ------------------------------------------------------------------------------------------
# Parent: data, peaks, subprocesses, report
# ------------------------------------------------------------------------------------------
def load_sample(args) -> dict[str, Any]:
    """The documents every pipeline times, from a seeded shuffle of the 20 Newsgroups training posts.

    * a pool of ``--stats-docs`` posts gives the length statistics (mean tokens, padding);
    * (a) and (b) take the pool's first ``seed_steps x batch_size`` posts (their padded steps
      cost the same whatever the content);
    * (c) and (d) take ``--grouped-batches`` of the batches that training's
      :class:`~gpt2clf.data.batching.LengthGroupedSampler` makes from the pool (epoch 0, seed 0): the
      batches at evenly spaced quantiles of the token count, so that the timed lengths
      represent where the corpus's tokens are (long posts carry most of them).
    """
    import numpy as np

    from gpt2clf.data.batching import LengthGroupedSampler, load_tokenizer, tokenize_texts
    from gpt2clf.data.newsgroups import load_20newsgroups

    tokenizer = load_tokenizer(str(args.tokenizer))
    train = load_20newsgroups("train", args.data)
    order = np.random.RandomState(args.seed).permutation(len(train.texts))
    pool_n = len(order) if args.stats_docs == 0 else min(len(order), args.stats_docs)
    picked = order[:pool_n]
    tokens = tokenize_texts([train.texts[i] for i in picked], tokenizer, args.max_length)
    labels = [int(train.labels[i]) for i in picked]
    lengths = np.array([len(t) for t in tokens])
    n_seed = args.seed_steps * args.batch_size
    batches = LengthGroupedSampler(lengths.tolist(), args.batch_size, shuffle=True, group_by_length=True,
                                   seed=0).batches()
    batches = [b for b in batches if len(b) == args.batch_size]
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    useful_in_batches = sum(int(lengths[b].sum()) for b in batches)
    # Batches sorted by size; pick those at token quantiles (i + 0.5) / k.
    by_size = sorted(batches, key=lambda b: int(lengths[b].sum()))
    cumulative = np.cumsum([int(lengths[b].sum()) for b in by_size]) / useful_in_batches
    chosen = [by_size[int(np.searchsorted(cumulative, (i + 0.5) / args.grouped_batches))]
              for i in range(args.grouped_batches)]
    grouped_docs = [[tokens[i] for i in b] for b in chosen]
    return {
        "seed_docs": [tokens[i % pool_n] for i in range(n_seed)],
        "seed_labels": [labels[i % pool_n] for i in range(n_seed)],
        "grouped_docs": grouped_docs,
        "grouped_labels": [[labels[i] for i in b] for b in chosen],
        "pad_id": tokenizer.pad_token_id,
        "stats": {
            "pool_docs": int(pool_n), "mean_tokens": float(lengths.mean()),
            "useful_fraction_at_max_length": float(lengths.mean() / args.max_length),
            "truncated_fraction": float((lengths == args.max_length).mean()),
            "grouped_batch_padding_efficiency": float(useful_in_batches / padded),
            "seed_docs_mean_tokens": float(np.mean([len(t) for t in tokens[:n_seed]])),
            "grouped_batches_max_lengths": [max(len(t) for t in g) for g in grouped_docs],
            "grouped_docs_mean_tokens": float(np.mean([len(t) for g in grouped_docs for t in g])),
        },
    }


def matmul_peak(device, dtype_name: str, size: int, repeats: int) -> float:
    """Best FLOP/s of ``repeats`` timed (size x size) @ (size x size) products (after one warm-up)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    sync(device)
    best = 0.0
    inner = 10 if device.type == "cuda" else 1
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        best = max(best, inner * 2 * size**3 / (time.perf_counter() - start))
    return best


def probe_precision(device, tiny: bool) -> dict[str, Any]:
    """Time forward + backward of one GPT-2 layer and one of our blocks in fp32 and in bf16 autocast."""
    import torch
    from transformers import GPT2Model

    from gpt2clf.infer.runtime import autocast_context
    from gpt2clf.model.classifier import Block

    config = gpt2_config(tiny)
    config.n_layer = 1
    gpt2_layer = GPT2Model._from_config(config, attn_implementation="sdpa").h[0]
    layers = torch.nn.ModuleList([gpt2_layer, Block(config.n_embd, 2)]).to(device)
    x = torch.randn(2, 64, config.n_embd, device=device)
    times = {}
    for precision in ("32-true", "bf16-mixed"):
        best = math.inf
        for attempt in range(3):
            if attempt and precision.startswith("bf16") and best > 3 * times["32-true"]:
                break  # CPU bf16 without native support: one timing 3x slower says enough
            sync(device)
            start = time.perf_counter()
            with autocast_context(device, precision):
                h = layers[0](x)
                h = h[0] if isinstance(h, tuple) else h
                out = layers[1](h)
            out.float().sum().backward()
            sync(device)
            best = min(best, time.perf_counter() - start)
        times[precision] = best
    return {"seconds": times, "faster": min(times, key=times.get)}


def run_worker(kind: str, payload: dict[str, Any], scratch: Path) -> dict[str, Any]:
    path = scratch / f"{kind}.json"
    path.write_text(json.dumps(payload))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--payload", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker {kind} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - start
    return result


def machine_info(device) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d"),
                            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Core(s) per socket", "Thread(s) per core", "Flags"):
                value = value.strip()
                if key.strip() == "Flags":
                    value = " ".join(f for f in value.split() if f.startswith(("avx", "amx", "fma")))
                info[f"lscpu {key.strip()}"] = value
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def summarize(report: dict[str, Any]) -> None:
    """Speedups, MFU, projections and target verdicts (in place).

    Lengths differ between the timed documents, so every per-document figure is taken at the
    pool's mean length: (a) and (b) pad every document to max_length, so their cost per
    document does not depend on its length; (c) and (d) cost in proportion to real tokens,
    so their documents per second at the mean length are useful tokens per second / mean.
    """
    c = report["configs"]
    seed, ours = c["seed"], c["gpt2clf"]
    mean_tokens = report["data"]["mean_tokens"]
    adopt_int8 = report["settings"]["adopt_int8"] and "infer_int8" in ours
    best_infer = ours["infer_int8"] if adopt_int8 else ours["infer"]
    seed_train_tps = seed["train"]["docs_per_s"] * mean_tokens
    report["seed_useful_tokens_per_s_at_mean_length"] = seed_train_tps
    report["train_speedup_vs_seed"] = ours["train"]["useful_tokens_per_s"] / seed_train_tps
    report["infer_speedup_vs_seed"] = best_infer["useful_tokens_per_s"] / mean_tokens / seed["infer"]["docs_per_s"]
    report["infer_speedup_vs_seed_fp32"] = (ours["infer"]["useful_tokens_per_s"] / mean_tokens
                                            / seed["infer"]["docs_per_s"])
    report["infer_uses"] = "int8 (quantize_for_cpu_inference)" if adopt_int8 else report["settings"]["precision"]
    peak_key = "bf16" if report["settings"]["precision"].startswith("bf16") else "fp32"
    peak = report["matmul_peak_flops"][peak_key]
    report["mfu_c"] = ours["train"]["useful_flops"] / peak
    report["mfu_c_processed_tokens"] = ours["train"]["achieved_flops"] / peak
    report["mfu_c_inference"] = ours["infer"]["useful_flops"] / peak
    report["mfu_peak_used"] = peak_key
    fp32_peak = report["matmul_peak_flops"]["fp32"]
    report["seed_train_fraction_of_fp32_peak"] = seed["train"]["achieved_flops"] / fp32_peak
    report["seed_infer_fraction_of_fp32_peak"] = seed["infer"]["achieved_flops"] / fp32_peak

    def seconds_per_doc(part: dict[str, Any]) -> float:
        return mean_tokens / part["useful_tokens_per_s"]

    evaluated = EPOCHS * VALIDATION_DOCS + TEST_DOCS
    projections: dict[str, Any] = {
        "a_seed": (EPOCHS * TRAIN_DOCS / seed["train"]["docs_per_s"] + evaluated / seed["infer"]["docs_per_s"]) / 60,
        "c_gpt2clf": (EPOCHS * TRAIN_DOCS * seconds_per_doc(ours["train"])
                      + evaluated * seconds_per_doc(best_infer)) / 60,
    }
    if "frozen" in c:
        d = c["frozen"]
        parts = {"backbone_pass_all_docs": CORPUS_DOCS * seconds_per_doc(d["backbone_pass"]) / 60,
                 "train_blocks_5_epochs": EPOCHS * TRAIN_DOCS * seconds_per_doc(d["train_from_cache"]) / 60,
                 "evaluate_from_cache": evaluated * seconds_per_doc(d["infer_from_cache"]) / 60}
        projections["d_frozen_cache"] = sum(parts.values())
        projections["d_parts"] = parts
        report["frozen_cache_disk_gb"] = 2 * head_width(report["settings"]["tiny"]) * CORPUS_DOCS * mean_tokens / 1e9
    projections["definition"] = (f"{EPOCHS} epochs over {TRAIN_DOCS} training posts, {EPOCHS} validation passes over "
                                 f"{VALIDATION_DOCS} and one test pass over {TEST_DOCS}; (d) also runs the backbone "
                                 f"once over all {CORPUS_DOCS} posts; documents at the mean length {mean_tokens:.0f}")
    report["projections_minutes"] = projections
    if "seed_micro" in c:
        report["train_speedup_of_micro_batching_alone"] = (c["seed_micro"]["train"]["docs_per_s"]
                                                           / seed["train"]["docs_per_s"])
    contended = sorted({f"{name}.{part}" for name, r in c.items() for part, v in r.items()
                        if isinstance(v, dict) and (v.get("other_cpu_share") or 0) > 0.05})
    report["contended_timings"] = contended  # other processes used > 5% of the CPUs meanwhile
    if contended:
        log(f"warning: other processes competed for the CPUs during {', '.join(contended)}")
    verdicts = {
        "train_speedup_vs_seed": report["train_speedup_vs_seed"] >= TARGETS["train_speedup_vs_seed"],
        "infer_speedup_vs_seed": report["infer_speedup_vs_seed"] >= TARGETS["infer_speedup_vs_seed"],
        "mfu_c": report["mfu_c"] >= TARGETS["mfu_c"],
    }
    if "d_frozen_cache" in projections:
        verdicts["frozen_job_minutes"] = projections["d_frozen_cache"] <= TARGETS["frozen_job_minutes"]
    report["targets"] = {"required": TARGETS, "met": verdicts}


def print_table(report: dict[str, Any]) -> None:
    for row in report.get("memory", []):
        print(f"training memory at {report['settings']['batch_size']} x {report['settings']['max_length']}, "
              f"gradient checkpointing {row['checkpointing']}, micro-batch {row['micro_batch']}: "
              f"peak {row['peak_memory_mb']:.0f} MB, {row['seconds_per_step']:.1f} s/step")
    c = report["configs"]
    if not c:
        return
    mean_tokens = report["data"]["mean_tokens"]
    print(f"{'pipeline':<34}{'train tok/s':>12}{'train doc/s':>12}{'infer doc/s':>12}{'peak MB':>10}")

    def docs(part: dict[str, Any], padded: bool) -> float:
        return part["docs_per_s"] if padded else part["useful_tokens_per_s"] / mean_tokens

    for label, key, padded in (("(a) seed, pad 512", "seed", True), ("(b) HF GPT2ForSeqCls, pad 512", "hf", True),
                               ("(c) gpt2clf, full fine-tune", "gpt2clf", False)):
        r = c[key]
        train_tps = r["train"]["docs_per_s"] * mean_tokens if padded else r["train"]["useful_tokens_per_s"]
        print(f"{label:<34}{train_tps:>12.1f}{docs(r['train'], padded):>12.3f}{docs(r['infer'], padded):>12.3f}"
              f"{r['peak_memory_mb']:>10.0f}")
    if "infer_int8" in c["gpt2clf"]:
        print(f"{'(c) inference int8':<34}{'':>24}{docs(c['gpt2clf']['infer_int8'], False):>12.3f}")
    if "frozen" in c:
        d = c["frozen"]
        print(f"{'(d) frozen: backbone pass':<34}{d['backbone_pass']['useful_tokens_per_s']:>12.1f}"
              f"{docs(d['backbone_pass'], False):>12.3f}{'':>12}{d['peak_memory_mb']:>10.0f}")
        print(f"{'(d) frozen: train from cache':<34}{d['train_from_cache']['useful_tokens_per_s']:>12.1f}"
              f"{docs(d['train_from_cache'], False):>12.3f}{docs(d['infer_from_cache'], False):>12.3f}")
    print(f"(per-document figures at the mean length, {mean_tokens:.0f} tokens)")
    print(f"train_speedup_vs_seed {report['train_speedup_vs_seed']:.2f}  "
          f"infer_speedup_vs_seed {report['infer_speedup_vs_seed']:.2f} "
          f"(fp32: {report['infer_speedup_vs_seed_fp32']:.2f})  "
          f"MFU(c) {report['mfu_c']:.2f} of the {report['mfu_peak_used']} matmul peak")
    if "train_speedup_of_micro_batching_alone" in report:
        print(f"(a) with micro-batching alone: {report['train_speedup_of_micro_batching_alone']:.2f}x the seed")
    print("projected whole job (minutes):", json.dumps(report["projections_minutes"]))
    print("targets met:", json.dumps(report["targets"]["met"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="auto",
                        help="precision of (c) and (d): auto (probe fp32 vs bf16 autocast), 32-true or bf16-mixed")
    parser.add_argument("--tiny", action="store_true", help="a tiny GPT-2 (2 layers, width 64): smoke run")
    parser.add_argument("--grouped-batches", type=int, default=None,
                        help="length-grouped batches timed by (c) and (d) (default 1 on CPU, 16 on CUDA)")
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="(c) and (d) split each batch into micro-batches of this many documents and "
                             "accumulate gradients (same update; default 4 on CPU, none on CUDA)")
    parser.add_argument("--seed-steps", type=int, default=None,
                        help="timed steps (of batch-size documents) for (a) and (b) (default 1 on CPU, 16 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="seed of the document shuffle")
    parser.add_argument("--stats-docs", type=int, default=2000,
                        help="documents tokenized for the length statistics used in projections (0: all 11,314)")
    parser.add_argument("--no-frozen", action="store_true", help="skip (d)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure the peak memory of a training step at batch x max_length: plain, "
                             "with gradient checkpointing, and with micro-batches (adds ~6 minutes on CPU)")
    parser.add_argument("--seed-micro-batch", action="store_true",
                        help="also time (a) with gpt2clf's micro-batching added (where the training speedup "
                             "comes from; adds ~2 minutes on CPU)")
    parser.add_argument("--only-memory", action="store_true", help="skip the throughput runs (with --memory)")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "20news-bydate.tar.gz")
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "gpt2-tokenizer")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON on stdout")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--payload", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        payload = json.loads(args.payload.read_text())
        result = memory_worker(payload) if args.worker == "memory" else worker(args.worker, payload)
        print(json.dumps(result))
        return 0

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    cuda = device.type == "cuda"
    args.grouped_batches = args.grouped_batches or (16 if cuda else 1)
    args.seed_steps = args.seed_steps or (16 if cuda else 1)
    if args.micro_batch is None and not cuda:
        args.micro_batch = 4
    began = time.perf_counter()
    log(f"loading 20 Newsgroups and tokenizing {args.stats_docs or 'all'} documents")
    sample = load_sample(args)
    log(f"sample: {sample['stats']}")
    size, repeats = (8192, 5) if cuda else ((1024, 3) if args.tiny else (2048, 4))
    peaks = {"fp32": matmul_peak(device, "float32", size, repeats)}
    # CPU bf16 matmul without native support is very slow: time a smaller product.
    peaks["bf16"] = matmul_peak(device, "bfloat16", size if cuda else 512, 2 if not cuda else repeats)
    log(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s")
    probe = probe_precision(device, args.tiny)
    precision = probe["faster"] if args.precision == "auto" else args.precision
    if cuda and args.precision == "auto":
        precision = "bf16-mixed"  # the brief's choice for GPUs; the probe is reported alongside
    log(f"precision probe {probe}; (c)/(d) run at {precision}")
    payload = {"device": str(device), "tiny": args.tiny, "pad_id": sample["pad_id"], "batch_size": args.batch_size,
               "max_length": args.max_length, "precision": precision, "micro_batch": args.micro_batch,
               **{k: sample[k] for k in ("seed_docs", "seed_labels", "grouped_docs", "grouped_labels")}}
    report: dict[str, Any] = {
        "machine": machine_info(device),
        "settings": {"device": str(device), "tiny": args.tiny, "precision": precision, "batch_size": args.batch_size,
                     "max_length": args.max_length, "grouped_batches": args.grouped_batches,
                     "seed_steps": args.seed_steps, "micro_batch": args.micro_batch,
                     "shuffle_seed": args.seed, "adopt_int8": not cuda,
                     "command": " ".join([Path(sys.executable).name, *sys.argv])},
        "data": sample["stats"], "precision_probe": probe, "configs": {},
    }
    kinds = [] if args.only_memory else ["seed", "hf", "gpt2clf"] + ([] if args.no_frozen else ["frozen"])
    with tempfile.TemporaryDirectory(prefix="gpt2clf-bench-") as scratch:
        for kind in kinds:
            log(f"running {kind} ...")
            report["configs"][kind] = run_worker(kind, payload, Path(scratch))
            log(f"{kind}: {json.dumps({k: v for k, v in report['configs'][kind].items() if k != 'name'})}")
        if args.seed_micro_batch:
            log("running seed_micro (the seed plus micro-batching only) ...")
            report["configs"]["seed_micro"] = run_worker("seed_micro", payload, Path(scratch))
        if args.memory:
            report["memory"] = []
            for checkpointing, micro in ((False, None), (True, None), (False, args.micro_batch)):
                if micro is None and checkpointing is False and report["memory"]:
                    continue
                log(f"memory: gradient checkpointing {checkpointing}, micro-batch {micro} ...")
                report["memory"].append(run_worker(
                    "memory", {"device": str(device), "tiny": args.tiny, "batch_size": args.batch_size,
                               "max_length": args.max_length, "checkpointing": checkpointing,
                               "micro_batch": micro, "steps": 1}, Path(scratch)))
                log(f"memory: {report['memory'][-1]}")
    # The peak again at the end: the machine may have been busier or calmer meanwhile.
    peaks["fp32"] = max(peaks["fp32"], matmul_peak(device, "float32", size, repeats))
    report["matmul_peak_flops"] = peaks
    if report["configs"]:
        summarize(report)
    report["wall_seconds"] = time.perf_counter() - began
    log(f"done in {report['wall_seconds']:.0f} s")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))  # also works without the editable install
    raise SystemExit(main())
