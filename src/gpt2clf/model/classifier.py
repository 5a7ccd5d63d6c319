"""The classifier: a pretrained backbone, a few transformer blocks of our own, a pooler and a head.

Data flow for a batch of ``B`` documents padded to ``T`` tokens::

    input_ids, attention_mask (B, T)
      -> backbone (pretrained GPT-2 or any AutoModel)   last hidden state (B, T, backbone_width)
      -> input_projection (Linear, or Identity when the widths agree)          (B, T, n_embed)
      -> n_blocks x Block (pre-LN, NON-causal self-attention + MLP)           (B, T, n_embed)
      -> ln_f -> pooling ("last" token, "mean", or learned "attention")          (B, n_embed)
      -> head (Dropout + Linear)                                             (B, num_labels)

Padding never changes a document's logits, for every backbone family: the backbone gets
position ids computed from the attention mask with its own numbering (GPT-2, BERT, MiniLM
from 0; RoBERTa from its pad id + 1), so a left-padded document sees the positions it has
unpadded (:class:`~gpt2clf.model.backbone.BackboneAdapter`); our blocks mask padded keys; and every
pooling mode reads only non-pad tokens. The published seed code this replaces ignored the
mask in its blocks, so under left padding its tokens attended to the pad states.

Parameter accounting. GPT-2 small has 124,439,808 parameters. Each of our blocks at width
``d`` adds ``4d² + 4d`` (fused QKV + output projection), ``8d² + 5d`` (MLP 4x up and
down) and ``4d`` (two LayerNorms): 12d² + 13d = 7,087,872 for d = 768. The ``blog``
configuration (GPT-2 small, n_embed 768, 2 heads, 2 blocks, 20 labels) therefore counts
124,439,808 + 2 x 7,087,872 + 1,536 (ln_f) + 15,380 (head) = 138,632,468 parameters, the
seed's reported "139M". (The seed's ``N_BLOCKS = 12`` was GPT-2 small's own depth, not
extra blocks.) The number of attention heads does not change the count.

Saved model folders hold only JSON and safetensors (see :meth:`GPT2Classifier.save_pretrained`),
so loading one never unpickles anything and works offline.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gpt2clf.config import CHUNK_AGGREGATIONS, FREEZE_CHOICES, POOLING_CHOICES, check_heads
from gpt2clf.errors import ConfigError, ModelLoadError, first_line
from gpt2clf.model.backbone import (
    BackboneAdapter,
    attention_heads,
    backbone_from_config,
    hidden_width,
    load_pretrained_backbone,
    position_ids_from_mask,
)
from gpt2clf.model.folder import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_weights_match,
    read_model_config,
    read_weights,
    write_model_folder,
)

__all__ = [
    "AttentionPooling",
    "Block",
    "ClassifierSpec",
    "FeedForward",
    "GPT2Classifier",
    "SelfAttention",
    "pool_last_token",
    "pool_mean",
    "position_ids_from_mask",
]


# ------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Multi-head bidirectional (non-causal) self-attention over the non-pad tokens.

    Each head ``h`` is two independent circuits (Elhage et al., *A Mathematical Framework
    for Transformer Circuits*, 2021):

    * the **QK circuit** ``W_Q^h (W_K^h)^T`` gives the bilinear score ``x_i W_Q W_K^T x_j``
      of query token ``i`` against key token ``j``; after the softmax it decides *where*
      information moves, i.e. which tokens attend to which;
    * the **OV circuit** ``W_V^h W_O^h`` maps whatever a token is attended for into the
      residual stream; it decides *what* information moves.

    Unlike GPT-2's own layers these blocks are not causal: the document is already fully
    known, so every token may read every other non-pad token (the pooled token then sees
    the whole document). Padded *keys* are masked so no token reads pad states; a padded
    *query* is allowed to attend to itself so its softmax row is never empty (no NaNs).
    Its output is garbage that nothing downstream reads.
    """

    def __init__(self, n_embed: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        check_heads(n_embed, n_heads)
        self.n_heads = n_heads
        self.n_embed = n_embed
        self.qkv = nn.Linear(n_embed, 3 * n_embed)  # W_Q, W_K, W_V of all heads in one matmul
        self.out_proj = nn.Linear(n_embed, n_embed)  # W_O of all heads
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``x`` (B, T, C); ``attention_mask`` (B, T), 1 for real tokens, or None for no padding."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(self.n_embed, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q = q.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        k = k.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        v = v.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        mask = None
        if attention_mask is not None:
            keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): may attend to real keys
            itself = torch.eye(T, dtype=torch.bool, device=x.device)  # ... and always to itself
            mask = keys | itself  # (B, 1, T, T), broadcast over heads
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.out_proj(y))


class FeedForward(nn.Module):
    """The position-wise MLP: expand to 4x width, GELU, project back."""

    def __init__(self, n_embed: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(n_embed, 4 * n_embed)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(4 * n_embed, n_embed)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(self.gelu(self.fc(x))))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: tokens communicate (attention), then compute (MLP)."""

    def __init__(self, n_embed: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embed)
        self.attn = SelfAttention(n_embed, n_heads, dropout)
        self.ln2 = nn.LayerNorm(n_embed)
        self.mlp = FeedForward(n_embed, dropout)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        # Pre-LN keeps an unnormalised residual path from input to output, which trains
        # stably without warm-up tricks (GPT-2 does the same).
        x = x + self.attn(self.ln1(x), attention_mask)
        x = x + self.mlp(self.ln2(x))
        return x


# ------------------------------------------------------------------------------------------
# Pooling
# ------------------------------------------------------------------------------------------
def pool_last_token(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """The hidden state of each row's last non-pad token: (B, T, C) -> (B, C).

    The index is the position of the last 1 in the mask, not ``mask.sum() - 1``, so this is
    right under left padding too. A row without any real token yields position 0.
    """
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = torch.where(attention_mask.bool(), positions, -1).max(dim=1).values.clamp(min=0)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def pool_mean(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """The mean hidden state over each row's non-pad tokens: (B, T, C) -> (B, C)."""
    mask = attention_mask.bool().unsqueeze(-1)
    # where(), not a multiplication: a NaN or inf in a pad state must not leak into the sum.
    total = torch.where(mask, hidden, 0.0).sum(dim=1)
    return total / mask.sum(dim=1).clamp(min=1).to(hidden.dtype)


class AttentionPooling(nn.Module):
    """A learned weighted average: one score per token, softmax over the non-pad tokens."""

    def __init__(self, n_embed: int) -> None:
        super().__init__()
        self.score = nn.Linear(n_embed, 1)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T, C) -> (B, C)."""
        mask = attention_mask.bool()
        scores = self.score(hidden).squeeze(-1).float()  # softmax in fp32 under mixed precision
        # A large negative number rather than -inf: a row without any real token gets uniform
        # weights instead of NaN.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1).to(hidden.dtype)
        values = torch.where(mask.unsqueeze(-1), hidden, 0.0)
        return torch.einsum("bt,btc->bc", weights, values)


def _segment_max(values: Tensor, index: Tensor, segments: int) -> Tensor:
    """Row-wise maximum of ``values`` (R, C) within each segment ``index`` (R,) -> (segments, C)."""
    out = values.new_full((segments, values.shape[1]), float("-inf"))
    return out.scatter_reduce(0, index[:, None].expand_as(values), values, "amax", include_self=False)


# ------------------------------------------------------------------------------------------
# The classifier
# ------------------------------------------------------------------------------------------
@dataclass
class ClassifierSpec:
    """Our part of the architecture; saved as JSON in a model folder's ``config.json``."""

    num_labels: int
    label_names: list[str] = field(default_factory=list)
    """One name per label id; empty: ``"0"``, ``"1"``, ..."""
    n_embed: int | None = None
    """Width of our blocks; None: the backbone's width (then no input projection)."""
    n_heads: int | None = None
    """Heads per block; None: the backbone's head count if it divides ``n_embed``, else ``n_embed // 64``
    if that does, else 1."""
    n_blocks: int = 2
    dropout: float = 0.1
    pooling: str = "last"
    """``last`` (last non-pad token), ``mean`` or ``attention`` (learned weights)."""
    chunk_aggregation: str | None = None
    """How a document cut into several windows gets one prediction: ``mean`` of the windows'
    logits, or ``attention`` (learned weights over the window embeddings); None: one window per document."""

    def __post_init__(self) -> None:
        if not self.label_names and isinstance(self.num_labels, int):
            self.label_names = [str(i) for i in range(self.num_labels)]
        self.label_names = [str(name) for name in self.label_names]
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first out-of-range value."""
        for name in ("num_labels", "n_embed", "n_heads", "n_blocks"):
            value = getattr(self, name)
            if value is None and name in ("n_embed", "n_heads"):
                continue  # filled in from the backbone by resolved_for()
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if self.num_labels < 1:
            raise ConfigError(f"num_labels must be at least 1, got {self.num_labels}")
        if len(self.label_names) != self.num_labels:
            raise ConfigError(f"label_names has {len(self.label_names)} names for {self.num_labels} labels")
        for name in ("n_embed", "n_heads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_blocks < 0:
            raise ConfigError(f"n_blocks must be 0 or more, got {self.n_blocks}")
        check_heads(self.n_embed, self.n_heads)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pooling not in POOLING_CHOICES:
            raise ConfigError(f"pooling must be one of {', '.join(POOLING_CHOICES)}; got {self.pooling!r}")
        if self.chunk_aggregation is not None and self.chunk_aggregation not in CHUNK_AGGREGATIONS:
            raise ConfigError(f"chunk_aggregation must be one of {', '.join(CHUNK_AGGREGATIONS)}; "
                              f"got {self.chunk_aggregation!r}")

    def resolved_for(self, backbone_config: Any) -> ClassifierSpec:
        """A copy with ``n_embed`` and ``n_heads`` filled in from the backbone where they are None.

        By default our blocks have the backbone's own shape (GPT-2 small: 768 wide, 12
        heads), so its hidden states enter them unchanged. A projection in between slowed
        learning: on 2,000 20 Newsgroups posts, a small random GPT-2 (width 128) reached 41%
        validation accuracy in 2 epochs with 128-wide blocks and 33% with 64-wide ones (README,
        "Model").
        """
        width = self.n_embed or hidden_width(backbone_config)
        heads = self.n_heads
        if heads is None:
            candidates = (attention_heads(backbone_config), width // 64)
            heads = next((h for h in candidates if h and width % h == 0), 1)
        return dataclasses.replace(self, n_embed=width, n_heads=heads)


class GPT2Classifier(nn.Module):
    """A pretrained backbone followed by ``spec.n_blocks`` transformer blocks, pooling and a head.

    Build one over a hub id or a local folder with :meth:`from_backbone`, reload a trained
    one with :meth:`from_pretrained`. ``forward`` returns logits; the loss is the caller's.
    The backbone is reached through a :class:`~gpt2clf.model.backbone.BackboneAdapter`
    (``self.adapter``), which knows each architecture's layers and position numbering.

    Example::

        >>> spec = ClassifierSpec(num_labels=2, label_names=["neg", "pos"], n_heads=2)
        >>> model = GPT2Classifier.from_backbone("gpt2", spec)  # doctest: +SKIP
        >>> logits = model(batch["input_ids"], batch["attention_mask"])  # doctest: +SKIP
    """

    def __init__(self, backbone: nn.Module, spec: ClassifierSpec, *, backbone_name: str | None = None):
        super().__init__()
        spec.validate()
        # An LM-head model (GPT2LMHeadModel) wraps the transformer we want; take that.
        base = getattr(backbone, "base_model", backbone)
        self.backbone = base if isinstance(base, nn.Module) else backbone
        self.adapter = BackboneAdapter(self.backbone)
        self._spec = spec = spec.resolved_for(self.backbone.config)
        self.backbone_name = backbone_name or getattr(self.backbone.config, "_name_or_path", "") or None
        width = self.adapter.width
        self.input_projection: nn.Module = (
            nn.Identity() if width == spec.n_embed else nn.Linear(width, spec.n_embed)
        )
        self.blocks = nn.ModuleList(
            [Block(spec.n_embed, spec.n_heads, spec.dropout) for _ in range(spec.n_blocks)]
        )
        self.ln_f = nn.LayerNorm(spec.n_embed)
        self.pooler = AttentionPooling(spec.n_embed) if spec.pooling == "attention" else None
        # One score per window: a long document's embedding is their softmax-weighted mean.
        self.window_scorer = nn.Linear(spec.n_embed, 1) if spec.chunk_aggregation == "attention" else None
        self.head = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(spec.n_embed, spec.num_labels))
        self._init_new_weights()
        self._checkpoint_blocks = False

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls, name_or_path: str, spec: ClassifierSpec, *, attn_implementation: str | None = "sdpa"
    ) -> GPT2Classifier:
        """A new classifier over the pretrained ``name_or_path`` (hub id or local folder).

        Our blocks and head start from random weights. The backbone is loaded in float32
        with PyTorch's fused attention where the architecture supports it.
        """
        backbone = load_pretrained_backbone(name_or_path, attn_implementation=attn_implementation)
        return cls(backbone, spec, backbone_name=str(name_or_path))

    def _init_new_weights(self) -> None:
        # GPT-2's scheme (as in nanoGPT): N(0, 0.02) weights, zero biases, and residual
        # projections scaled by 1/sqrt(2 * n_blocks) so the residual stream's variance does
        # not grow with depth.
        for module in self._own_modules():
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.normal_(sub.weight, mean=0.0, std=0.02)
                    nn.init.zeros_(sub.bias)
        if isinstance(self.input_projection, nn.Linear):
            # Variance-preserving: the backbone's features reach our blocks at their own scale
            # instead of shrunk by 0.02 * sqrt(width), where the blocks' random updates drown them.
            nn.init.normal_(self.input_projection.weight, mean=0.0, std=self.input_projection.in_features ** -0.5)
        residual_std = 0.02 / math.sqrt(2 * max(1, self._spec.n_blocks))
        for block in self.blocks:
            nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)

    # --- properties ---------------------------------------------------------------------
    @property
    def spec(self) -> ClassifierSpec:
        """Our architecture, as saved in config.json (treat it as read-only)."""
        return self._spec

    @property
    def label_names(self) -> list[str]:
        return list(self._spec.label_names)

    @property
    def num_labels(self) -> int:
        return self._spec.num_labels

    @property
    def backbone_width(self) -> int:
        return self.adapter.width

    # --- forward ------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                document_index: Tensor | None = None) -> Tensor:
        """Logits (B, num_labels) for ``input_ids`` (B, T) and ``attention_mask`` (B, T).

        With ``document_index`` (R,) the R rows are windows of fewer documents (row ``r``
        belongs to document ``document_index[r]``; every document has a row), and the logits
        are per document: (number of documents, num_labels).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.backbone_hidden_states(input_ids, attention_mask)
        return self.classify_hidden_states(hidden, attention_mask, document_index)

    def backbone_hidden_states(
        self, input_ids: Tensor, attention_mask: Tensor, *, num_layers: int | None = None
    ) -> Tensor:
        """The backbone's last hidden state (B, T, backbone_width), or that of its first ``num_layers`` layers.

        See :meth:`BackboneAdapter.hidden_states`; :meth:`backbone_from_layer` finishes a split pass.
        """
        return self.adapter.hidden_states(input_ids, attention_mask, num_layers=num_layers)

    def backbone_from_layer(self, hidden: Tensor, attention_mask: Tensor, start_layer: int) -> Tensor:
        """Finish a backbone pass from layer ``start_layer`` on (see :meth:`BackboneAdapter.from_layer`)."""
        return self.adapter.from_layer(hidden, attention_mask, start_layer)

    def backbone_layers(self) -> nn.ModuleList:
        """The backbone's list of transformer layers (GPT-2: ``h``; BERT: ``encoder.layer``)."""
        return self.adapter.layers()

    def classify_hidden_states(self, hidden: Tensor, attention_mask: Tensor,
                               document_index: Tensor | None = None) -> Tensor:
        """Logits from backbone hidden states: projection, blocks, ln_f, pooling, head.

        Also the entry point when the (frozen) backbone's hidden states come from a cache.
        ``document_index``: see :meth:`forward`.
        """
        pooled = self.pooled_states(hidden, attention_mask)
        if document_index is None:
            return self.head(pooled)
        return self.aggregate_windows(pooled, document_index)

    def aggregate_windows(self, pooled: Tensor, document_index: Tensor) -> Tensor:
        """Per-document logits from per-window embeddings (R, n_embed), by ``spec.chunk_aggregation``.

        * ``mean``: the mean of the windows' logits;
        * ``sum``: the sum of the windows' logits: each window's evidence adds up, as in a product of
          the windows' probabilities (for softmax, summing log-probabilities is summing logits);
        * ``max``: per class, the highest logit any window gives;
        * ``logsumexp``: per class, ``log(mean(exp(window logits)))``, a smooth maximum (the mean when
          the windows agree, near the maximum when one window stands out);
        * ``max-pool``: the element-wise maximum of the window embeddings, then the head;
        * ``attention``: the softmax-weighted mean of the window embeddings (one learned score per
          window), then the head.

        The mean divides each window's gradient by the number of windows, and a window that decides
        must outweigh all the others' logits; with the sum every window gets the document's whole
        gradient, and windows that say nothing learn to add nothing.
        """
        documents = int(document_index.max()) + 1 if document_index.numel() else 0
        mode = self._spec.chunk_aggregation or "mean"
        if mode == "attention":
            return self.head(self._attend_to_windows(pooled, document_index, documents))
        if mode == "max-pool":
            return self.head(_segment_max(pooled, document_index, documents))
        logits = self.head(pooled)
        if mode == "max":
            return _segment_max(logits, document_index, documents)
        count = torch.bincount(document_index, minlength=documents).clamp(min=1).to(logits.dtype)[:, None]
        if mode == "logsumexp":
            peak = _segment_max(logits, document_index, documents).detach()  # for stability only
            spread = logits.new_zeros(documents, logits.shape[1]).index_add_(
                0, document_index, torch.exp(logits - peak[document_index]))
            return peak + torch.log(spread / count)
        total = logits.new_zeros(documents, logits.shape[1]).index_add_(0, document_index, logits)
        return total if mode == "sum" else total / count

    def _attend_to_windows(self, pooled: Tensor, document_index: Tensor, documents: int) -> Tensor:
        assert self.window_scorer is not None
        scores = self.window_scorer(pooled).squeeze(-1).float()
        # A softmax within each document: subtract its own maximum, then normalise by its own sum.
        peak = scores.new_full((documents,), float("-inf")).scatter_reduce(0, document_index, scores, "amax")
        weights = torch.exp(scores - peak[document_index])
        norm = weights.new_zeros(documents).index_add_(0, document_index, weights)
        weights = (weights / norm[document_index]).to(pooled.dtype)
        return pooled.new_zeros(documents, pooled.shape[1]).index_add_(0, document_index, weights[:, None] * pooled)

    def pooled_states(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """One vector per document (B, n_embed): projection, blocks, ln_f and pooling, before the head."""
        mask = attention_mask.bool()
        # Zero the pad states first: whatever the backbone (or a cache) put there, including
        # NaN, cannot reach anything below.
        x = hidden.to(self.ln_f.weight.dtype).masked_fill(~mask.unsqueeze(-1), 0.0)
        x = self.input_projection(x)
        # Without padding, let SDPA run unmasked (this enables its fastest kernels).
        key_mask = None if bool(mask.all()) else mask
        for block in self.blocks:
            if self._checkpoint_blocks and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, key_mask, use_reentrant=False)
            else:
                x = block(x, key_mask)
        x = self.ln_f(x)
        if self.pooler is not None:
            return self.pooler(x, mask)
        if self._spec.pooling == "mean":
            return pool_mean(x, mask)
        return pool_last_token(x, mask)

    # --- training helpers ---------------------------------------------------------------
    def set_trainable(self, freeze: str = "none", train_top_layers: int | None = None) -> None:
        """Choose which backbone parameters train; our blocks and head always do.

        ``freeze="none"``: everything trains. ``freeze="backbone"``: the backbone is frozen.
        ``train_top_layers=K`` (whatever ``freeze`` says): the backbone is frozen except its
        top ``K`` transformer layers and the final LayerNorm after them (GPT-2: ``h[-K:]``
        and ``ln_f``); ``K=0`` freezes it whole.
        """
        if freeze not in FREEZE_CHOICES:
            raise ConfigError(f"freeze must be one of {', '.join(FREEZE_CHOICES)}; got {freeze!r}")
        for module in self._own_modules():
            module.requires_grad_(True)
        self.adapter.set_trainable(freeze == "none", train_top_layers)

    def train(self, mode: bool = True) -> GPT2Classifier:
        """Train mode for every part that trains, eval mode for the frozen part of the backbone.

        Our blocks and head, and the backbone's trainable layers (all of them with
        ``freeze="none"``, the top ``K`` with ``train_top_layers=K``), get train mode, so their
        dropout is on as in the pretrained model's own fine-tuning; ``eval()`` turns everything off.
        """
        super().train(mode)
        self.adapter.set_train_mode(mode)
        return self

    def _own_modules(self) -> list[nn.Module]:
        """Everything that is not the backbone: projection, blocks, ln_f, pooler, head."""
        own: list[nn.Module] = [self.input_projection, self.blocks, self.ln_f, self.head]
        own += [m for m in (self.pooler, self.window_scorer) if m is not None]
        return own

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """The pretrained backbone's parameters (trainable or not)."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Our newly initialised parameters: projection, blocks, ln_f, pooler and head.

        With :meth:`backbone_parameters` these partition the model, e.g. for two learning
        rates (a small one for the pretrained backbone, a larger one for our layers).
        """
        for module in self._own_modules():
            yield from module.parameters()

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts: total, trainable, backbone, blocks (with projection, ln_f, pooler), head."""

        def count(params: Iterator[nn.Parameter]) -> int:
            return sum(p.numel() for p in params)

        blocks = [m for m in self._own_modules() if m is not self.head]
        return {
            "total": count(self.parameters()),
            "trainable": count(p for p in self.parameters() if p.requires_grad),
            "backbone": count(self.backbone.parameters()),
            "blocks": sum(count(m.parameters()) for m in blocks),
            "head": count(self.head.parameters()),
        }

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass instead of storing them (less memory).

        Applies to the backbone where its architecture supports it, and to our blocks.
        """
        self.adapter.enable_gradient_checkpointing()
        self._checkpoint_blocks = True

    # --- saving and loading -------------------------------------------------------------
    def save_pretrained(
        self, folder: str | Path, tokenizer: Any = None, extra: dict[str, Any] | None = None,
        write_more: Any = None,
    ) -> None:
        """Write a self-contained model folder, atomically (an existing one is replaced whole).

        ``config.json`` holds our spec and the backbone's full config, ``model.safetensors``
        every weight (backbone included), and the tokenizer's files are added if given.
        ``extra`` (JSON-able) is stored as is, e.g. training metadata; ``write_more(folder)``
        may add files of its own (see :func:`gpt2clf.model.folder.write_model_folder`).
        """
        import json

        write_model_folder(
            folder, spec=asdict(self._spec), backbone_name=self.backbone_name,
            backbone_config=json.loads(self.backbone.config.to_json_string(use_diff=False)),
            state_dict=self.state_dict(), tokenizer=tokenizer, extra=extra, write_more=write_more,
        )

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, attn_implementation: str | None = "sdpa", native_backbone: bool = False
    ) -> GPT2Classifier:
        """Load a folder written by :meth:`save_pretrained`.

        Reads only JSON and safetensors (never pickle) and needs no network: the backbone is
        rebuilt from its saved config, then every weight is loaded strictly. With
        ``native_backbone=True`` a plain GPT-2 backbone is rebuilt as
        :class:`~gpt2clf.model.gpt2_body.GPT2Body` (same outputs, about a second less start-up;
        for inference), any other backbone by ``transformers``.
        """
        folder = Path(folder)
        config = read_model_config(folder)
        try:
            spec = ClassifierSpec(**config["spec"])
        except (TypeError, ConfigError) as err:
            raise ModelLoadError(f"{folder / CONFIG_NAME} has an invalid spec: {first_line(err)}") from err
        if not (folder / WEIGHTS_NAME).is_file():
            raise ModelLoadError(f"{folder / WEIGHTS_NAME} is missing; the folder is incomplete: save the model again")
        backbone = backbone_from_config(config["backbone_config"], origin=str(folder / CONFIG_NAME),
                                        attn_implementation=attn_implementation, native=native_backbone)
        model = cls(backbone, spec, backbone_name=config.get("backbone_name"))
        tensors = read_weights(folder)
        check_weights_match(model, tensors, folder / WEIGHTS_NAME)
        # Strictness was checked above (tied names aside). When the file names every tensor (no
        # ties to keep) in the model's dtypes, the loaded tensors become the parameters as they
        # are: no second 0.5 GB copy for GPT-2 small.
        expected = model.state_dict()
        assign = set(expected) == set(tensors) and all(t.dtype == expected[n].dtype for n, t in tensors.items())
        model.load_state_dict(tensors, strict=False, assign=assign)
        model.eval()
        return model
