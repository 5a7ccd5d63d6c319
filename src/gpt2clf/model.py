"""The classifier: a pretrained backbone, a few transformer blocks of our own, a pooler and a head.

Data flow for a batch of ``B`` documents padded to ``T`` tokens::

    input_ids, attention_mask (B, T)
      -> backbone (pretrained GPT-2 or any AutoModel)   last hidden state (B, T, backbone_width)
      -> input_projection (Linear, or Identity when the widths agree)          (B, T, n_embed)
      -> n_blocks x Block (pre-LN, NON-causal self-attention + MLP)           (B, T, n_embed)
      -> ln_f -> pooling ("last" token, "mean", or learned "attention")          (B, n_embed)
      -> head (Dropout + Linear)                                             (B, num_labels)

Padding never changes a document's logits: GPT-2 gets position ids computed from the
attention mask (so a left-padded document sees positions 0, 1, 2, ... like an unpadded one),
our blocks mask padded keys, and every pooling mode reads only non-pad tokens. The
published seed code this replaces ignored the mask in its blocks, so under left padding its
tokens attended to the pad states.

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

import contextlib
import dataclasses
import inspect
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoModel, PreTrainedModel

from gpt2clf.errors import ConfigError, ModelLoadError
from gpt2clf.files import atomic_directory, atomic_write_json

POOLING_CHOICES = ("last", "mean", "attention")
FREEZE_CHOICES = ("none", "backbone")
FORMAT = "gpt2clf"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Where Hugging Face models keep their list of transformer layers, most common first.
_LAYER_PATHS = (
    "h", "layers", "layer", "blocks", "block",
    "encoder.layer", "encoder.layers", "decoder.layers", "transformer.h", "transformer.layers",
    "model.layers", "gpt_neox.layers", "encoder.block",
)
# Names of a final LayerNorm applied after the last layer (GPT-2: ln_f).
_FINAL_NORM_NAMES = ("ln_f", "norm", "final_layer_norm", "final_layernorm", "final_norm")


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
        if n_embed % n_heads:
            raise ConfigError(f"n_embed ({n_embed}) must be divisible by n_heads ({n_heads})")
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
# Padding helpers and pooling
# ------------------------------------------------------------------------------------------
def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that count only real tokens: ``[0 0 0 1 2]`` for the mask ``[0 0 1 1 1]``.

    GPT-2 adds a learned embedding per position. By default position ``t`` is the ``t``-th
    slot of the padded row, so a left-padded document would be read at shifted positions.
    Counting from the first real token gives every document the positions it has unpadded;
    pad slots get 0 (their value does not matter: they are masked).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


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
        if self.n_embed is not None and self.n_heads is not None and self.n_embed % self.n_heads:
            raise ConfigError(f"n_embed ({self.n_embed}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pooling not in POOLING_CHOICES:
            raise ConfigError(f"pooling must be one of {', '.join(POOLING_CHOICES)}; got {self.pooling!r}")

    def resolved_for(self, backbone_config: Any) -> ClassifierSpec:
        """A copy with ``n_embed`` and ``n_heads`` filled in from the backbone where they are None.

        By default our blocks have the backbone's own shape (GPT-2 small: 768 wide, 12
        heads), so its hidden states enter them unchanged. A projection in between slowed
        learning: on 2,000 20 Newsgroups posts, a small random GPT-2 (width 128) reached 41%
        validation accuracy in 2 epochs with 128-wide blocks and 33% with 64-wide ones (README,
        "Model").
        """
        width = self.n_embed or backbone_width(backbone_config)
        heads = self.n_heads
        if heads is None:
            candidates = (backbone_heads(backbone_config), width // 64)
            heads = next((h for h in candidates if h and width % h == 0), 1)
        return dataclasses.replace(self, n_embed=width, n_heads=heads)


class GPT2Classifier(nn.Module):
    """A pretrained backbone followed by ``spec.n_blocks`` transformer blocks, pooling and a head.

    Build one over a hub id or a local folder with :meth:`from_backbone`, reload a trained
    one with :meth:`from_pretrained`. ``forward`` returns logits; the loss is the caller's.

    Example::

        >>> spec = ClassifierSpec(num_labels=2, label_names=["neg", "pos"], n_heads=2)
        >>> model = GPT2Classifier.from_backbone("gpt2", spec)  # doctest: +SKIP
        >>> logits = model(batch["input_ids"], batch["attention_mask"])  # doctest: +SKIP
    """

    def __init__(self, backbone: PreTrainedModel, spec: ClassifierSpec, *, backbone_name: str | None = None):
        super().__init__()
        spec.validate()
        # An LM-head model (GPT2LMHeadModel) wraps the transformer we want; take that.
        base = getattr(backbone, "base_model", backbone)
        self.backbone = base if isinstance(base, nn.Module) else backbone
        self._spec = spec = spec.resolved_for(self.backbone.config)
        self.backbone_name = backbone_name or getattr(self.backbone.config, "_name_or_path", "") or None
        width = backbone_width(self.backbone.config)
        self.input_projection: nn.Module = (
            nn.Identity() if width == spec.n_embed else nn.Linear(width, spec.n_embed)
        )
        self.blocks = nn.ModuleList(
            [Block(spec.n_embed, spec.n_heads, spec.dropout) for _ in range(spec.n_blocks)]
        )
        self.ln_f = nn.LayerNorm(spec.n_embed)
        self.pooler = AttentionPooling(spec.n_embed) if spec.pooling == "attention" else None
        self.head = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(spec.n_embed, spec.num_labels))
        self._init_new_weights()
        self._checkpoint_blocks = False

        accepted = _forward_parameters(self.backbone)
        # Decoders (GPT-2) need mask-derived positions under left padding; encoders such as
        # BERT or RoBERTa compute their own (RoBERTa offsets them by its pad id).
        self._pass_position_ids = "position_ids" in accepted and _is_decoder_only(self.backbone.config)
        self._pass_use_cache = "use_cache" in accepted  # no KV cache: we never generate

    # --- construction -------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls, name_or_path: str, spec: ClassifierSpec, *, attn_implementation: str | None = "sdpa"
    ) -> GPT2Classifier:
        """A new classifier over the pretrained ``name_or_path`` (hub id or local folder).

        Our blocks and head start from random weights. The backbone is loaded in float32
        with PyTorch's fused attention where the architecture supports it.
        """
        name = str(name_or_path)
        hint = ("pass a local folder written by save_pretrained (offline: set HF_HUB_OFFLINE=1 "
                "and use such a folder)")
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as err:
            if Path(name).is_dir():
                raise ModelLoadError(f"cannot read backbone folder {name}: {_first_line(err)}") from err
            raise ModelLoadError(
                f"backbone {name!r} was not found locally or on the Hugging Face Hub; {hint}"
            ) from err

        def load(implementation: str | None) -> PreTrainedModel:
            return AutoModel.from_pretrained(
                name, config=config, attn_implementation=implementation, dtype=torch.float32
            )

        try:
            try:
                backbone = load(attn_implementation)
            except ValueError as err:
                if attn_implementation != "sdpa" or "scaled_dot_product_attention" not in str(err):
                    raise
                backbone = load(None)  # this architecture has no SDPA path: transformers' default
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"cannot load backbone {name!r}: {_first_line(err)}") from err
        return cls(backbone, spec, backbone_name=name)

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
        return backbone_width(self.backbone.config)

    # --- forward ------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, num_labels) for ``input_ids`` (B, T) and ``attention_mask`` (B, T)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.backbone_hidden_states(input_ids, attention_mask)
        return self.classify_hidden_states(hidden, attention_mask)

    def backbone_hidden_states(
        self, input_ids: Tensor, attention_mask: Tensor, *, num_layers: int | None = None
    ) -> Tensor:
        """The backbone's last hidden state (B, T, backbone_width).

        ``num_layers=L`` (``1 <= L <`` the number of layers): the output of the first ``L``
        transformer layers instead, before the others and the final norm run (only the
        first ``L`` layers are computed). :meth:`backbone_from_layer` finishes the pass, so a
        feature cache can store the frozen lower layers' output and train the top ones.
        """
        kwargs = self._backbone_kwargs(attention_mask)
        if num_layers is None:
            output = self.backbone(input_ids=input_ids, **kwargs)
            return output[0] if isinstance(output, tuple) else output.last_hidden_state
        layers = self._split_layers(num_layers)
        captured: list[Tensor] = []

        def keep(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = layers[num_layers - 1].register_forward_hook(keep)
        try:
            with _only_layers(layers, 0, num_layers):
                self.backbone(input_ids=input_ids, **kwargs)
        finally:
            handle.remove()
        return captured[-1]

    def backbone_from_layer(self, hidden: Tensor, attention_mask: Tensor, start_layer: int) -> Tensor:
        """Finish a backbone pass from layer ``start_layer`` on: (B, T, W) -> last hidden state.

        ``hidden`` is what :meth:`backbone_hidden_states` returned with ``num_layers=start_layer``
        (e.g. read from a feature cache). The backbone's own forward runs with only layers
        ``start_layer:`` left in its layer list, so it builds its attention mask and position
        ids exactly as in a full pass; ``hidden`` replaces the input of layer ``start_layer``.
        Not re-entrant: the layer list is swapped for the duration of the call.
        """
        layers = self._split_layers(start_layer)
        dtype = next(self.backbone.parameters()).dtype
        hidden = hidden.to(dtype)

        def inject(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        handle = layers[start_layer].register_forward_pre_hook(inject, with_kwargs=True)
        # Token id 0 everywhere: the embeddings are computed (cheap) and then discarded.
        placeholder = torch.zeros(attention_mask.shape, dtype=torch.long, device=attention_mask.device)
        try:
            with _only_layers(layers, start_layer, len(layers)):
                output = self.backbone(input_ids=placeholder, **self._backbone_kwargs(attention_mask))
        finally:
            handle.remove()
        return output[0] if isinstance(output, tuple) else output.last_hidden_state

    def _backbone_kwargs(self, attention_mask: Tensor) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if self._pass_position_ids:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        if self._pass_use_cache:
            kwargs["use_cache"] = False
        return kwargs

    def _split_layers(self, layer: int) -> nn.ModuleList:
        layers = self.backbone_layers()
        if not isinstance(layer, int) or not 1 <= layer < len(layers):
            raise ConfigError(f"a backbone split point must be between 1 and {len(layers) - 1}, got {layer!r}")
        return layers

    def classify_hidden_states(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits from backbone hidden states: projection, blocks, ln_f, pooling, head.

        Also the entry point when the (frozen) backbone's hidden states come from a cache.
        """
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
            pooled = self.pooler(x, mask)
        elif self._spec.pooling == "mean":
            pooled = pool_mean(x, mask)
        else:
            pooled = pool_last_token(x, mask)
        return self.head(pooled)

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
        if train_top_layers is None:
            self.backbone.requires_grad_(freeze == "none")
            return
        if train_top_layers < 0:
            raise ConfigError(f"train_top_layers must be 0 or more, got {train_top_layers}")
        layers = self.backbone_layers()
        if train_top_layers > len(layers):
            raise ConfigError(
                f"train_top_layers is {train_top_layers} but the backbone has only {len(layers)} layers"
            )
        self.backbone.requires_grad_(False)
        if train_top_layers == 0:
            return
        for layer in layers[len(layers) - train_top_layers:]:
            layer.requires_grad_(True)
        for norm in self._backbone_final_norms():
            norm.requires_grad_(True)

    def backbone_layers(self) -> nn.ModuleList:
        """The backbone's list of transformer layers (GPT-2: ``h``; BERT: ``encoder.layer``)."""
        for path in _LAYER_PATHS:
            module: Any = self.backbone
            for part in path.split("."):
                module = getattr(module, part, None)
            if isinstance(module, nn.ModuleList) and len(module) > 0:
                return module
        # Unknown architecture: the longest ModuleList of same-typed modules.
        best: nn.ModuleList | None = None
        for module in self.backbone.modules():
            if (isinstance(module, nn.ModuleList) and len(module) > 0
                    and len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best))):
                best = module
        if best is None:
            raise ConfigError(
                f"cannot find the transformer layers of backbone {type(self.backbone).__name__}; "
                "use freeze=backbone or freeze=none instead of train_top_layers"
            )
        return best

    def _backbone_final_norms(self) -> list[nn.Module]:
        """Normalisation layers applied after the last backbone layer (GPT-2: ``ln_f``)."""
        norms = []
        children = [m for m in self.backbone.children() if not isinstance(m, nn.ModuleList)]
        for owner in (self.backbone, *children):
            for name in _FINAL_NORM_NAMES:
                module = getattr(owner, name, None)
                if isinstance(module, nn.Module) and module not in norms:
                    norms.append(module)
        return norms

    def _own_modules(self) -> list[nn.Module]:
        """Everything that is not the backbone: projection, blocks, ln_f, pooler, head."""
        own: list[nn.Module] = [self.input_projection, self.blocks, self.ln_f, self.head]
        if self.pooler is not None:
            own.append(self.pooler)
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
        if getattr(self.backbone, "supports_gradient_checkpointing", False):
            kwargs = {"use_reentrant": False}  # works with a frozen embedding layer too
            if hasattr(self.backbone, "activation_checkpointing_enable"):  # transformers >= 5.x
                self.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self._checkpoint_blocks = True

    # --- saving and loading -------------------------------------------------------------
    def save_pretrained(
        self, folder: str | Path, tokenizer: Any = None, extra: dict[str, Any] | None = None
    ) -> None:
        """Write a self-contained model folder, atomically (an existing one is replaced whole).

        ``config.json`` holds our spec and the backbone's full config, ``model.safetensors``
        every weight (backbone included), and the tokenizer's files are added if given.
        ``extra`` (JSON-able) is stored as is, e.g. training metadata.
        """
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "spec": asdict(self._spec),
            "backbone_name": self.backbone_name,
            "backbone_config": json.loads(self.backbone.config.to_json_string(use_diff=False)),
            "extra": extra or {},
        }
        json.dumps(config)  # fail before writing anything if ``extra`` is not JSON-able
        with atomic_directory(Path(folder)) as tmp:
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            tensors = _tensors_for_saving(self.state_dict())
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            atomic_write_json(tmp / CONFIG_NAME, config)  # last: ours wins over any tokenizer file

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, attn_implementation: str | None = "sdpa"
    ) -> GPT2Classifier:
        """Load a folder written by :meth:`save_pretrained`.

        Reads only JSON and safetensors (never pickle) and needs no network: the backbone is
        rebuilt from its saved config, then every weight is loaded strictly.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelLoadError(f"model folder not found: {folder}; pass a folder made by save_pretrained")
        config = _read_model_config(folder)
        try:
            spec = ClassifierSpec(**config["spec"])
        except (TypeError, ConfigError) as err:
            raise ModelLoadError(f"{folder / CONFIG_NAME} has an invalid spec: {_first_line(err)}") from err
        weights_path = folder / WEIGHTS_NAME
        if not weights_path.is_file():
            raise ModelLoadError(f"{weights_path} is missing; the folder is incomplete: save the model again")

        backbone_config = dict(config["backbone_config"])
        model_type = backbone_config.pop("model_type", None)
        try:
            hf_config = AutoConfig.for_model(model_type, **backbone_config)
        except (ValueError, TypeError, KeyError) as err:
            raise ModelLoadError(
                f"{folder / CONFIG_NAME} has an unusable backbone_config (model_type {model_type!r}): "
                f"{_first_line(err)}"
            ) from err
        try:
            try:
                backbone = AutoModel.from_config(hf_config, attn_implementation=attn_implementation,
                                                 dtype=torch.float32)
            except ValueError as err:
                if attn_implementation != "sdpa" or "scaled_dot_product_attention" not in str(err):
                    raise
                backbone = AutoModel.from_config(hf_config, dtype=torch.float32)
        except (ValueError, TypeError, KeyError) as err:
            raise ModelLoadError(f"cannot build the backbone described in {folder / CONFIG_NAME}: "
                                 f"{_first_line(err)}") from err
        model = cls(backbone, spec, backbone_name=config.get("backbone_name"))

        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as err:
            raise ModelLoadError(
                f"{weights_path} is truncated or corrupted ({_first_line(err)}); save or download it again"
            ) from err
        _check_weights_match(model, tensors, weights_path)
        model.load_state_dict(tensors, strict=False)  # strictness checked above, tied names aside
        model.eval()
        return model


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def backbone_width(config: Any) -> int:
    """The width of a backbone's hidden states (GPT-2's ``n_embd`` is aliased as ``hidden_size``)."""
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ConfigError(f"cannot tell the hidden size of backbone {type(config).__name__}")


def backbone_heads(config: Any) -> int | None:
    """The backbone's attention heads per layer (GPT-2's ``n_head``), if its config says."""
    for name in ("num_attention_heads", "n_head", "num_heads", "n_heads"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _is_decoder_only(config: Any) -> bool:
    """Whether a config describes a decoder-only (causal) model such as GPT-2."""
    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "is_decoder", False):
        return True
    try:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )
    except ImportError:  # pragma: no cover - layout of other transformers versions
        return getattr(config, "model_type", None) == "gpt2"
    # BERT-like encoders also have a causal-LM head class, but only they have a masked-LM one.
    model_type = getattr(config, "model_type", None)
    return (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


@contextlib.contextmanager
def _only_layers(layers: nn.ModuleList, start: int, stop: int) -> Iterator[None]:
    """Temporarily leave only ``layers[start:stop]`` in a layer list (its owner's loop runs just those)."""
    saved = layers._modules
    kept = list(saved.items())[start:stop]
    layers._modules = dict(kept)  # type: ignore[assignment]
    try:
        yield
    finally:
        layers._modules = saved


def _forward_parameters(module: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover - C extensions and the like
        return set()


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _alias_names(state_dict: dict[str, Tensor]) -> dict[str, str]:
    """Names that are the very same tensor as an earlier name (tied weights): alias -> kept name."""
    seen: dict[tuple[Any, ...], str] = {}
    aliases = {}
    for name, tensor in state_dict.items():
        if tensor.numel() == 0:
            continue
        identity = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if identity in seen:
            aliases[name] = seen[identity]
        else:
            seen[identity] = name
    return aliases


def _tensors_for_saving(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state dict as safetensors wants it: tied names once, on CPU, contiguous, unshared."""
    aliases = _alias_names(state_dict)
    kept = {name: t.detach().to("cpu") for name, t in state_dict.items() if name not in aliases}
    storages: dict[int, int] = {}
    for tensor in kept.values():
        if tensor.numel():
            key = tensor.untyped_storage().data_ptr()
            storages[key] = storages.get(key, 0) + 1
    out = {}
    for name, tensor in kept.items():
        shared = tensor.numel() and storages[tensor.untyped_storage().data_ptr()] > 1
        # safetensors refuses tensors that share memory (views of one buffer): copy those.
        out[name] = tensor.clone().contiguous() if shared else tensor.contiguous()
    return out


def _read_model_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; {folder} is not a model folder written by gpt2clf")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path} is not valid JSON ({_first_line(err)}); save the model again") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelLoadError(
            f"{path} is not a gpt2clf model config (no \"format\": \"gpt2clf\"); for a plain Hugging Face "
            "model use it as a backbone (GPT2Classifier.from_backbone)"
        )
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelLoadError(
            f"{path} has format_version {version!r}; this gpt2clf reads up to {FORMAT_VERSION}: upgrade it"
        )
    for key, kind in (("spec", dict), ("backbone_config", dict)):
        if not isinstance(config.get(key), kind):
            raise ModelLoadError(f"{path} lacks a valid {key!r} entry; save the model again")
    return config


def _check_weights_match(model: nn.Module, tensors: dict[str, Tensor], path: Path) -> None:
    """Raise :class:`ModelLoadError` naming one tensor where the file and the config disagree."""
    expected = model.state_dict()
    aliases = _alias_names(expected)
    wanted = [name for name in expected if name not in aliases]
    hint = "config.json and model.safetensors come from different models; save the model again"
    missing = [name for name in wanted if name not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelLoadError(f"{path} lacks tensor {missing[0]!r}{more}: {hint}")
    unexpected = [name for name in tensors if name not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ModelLoadError(f"{path} has unexpected tensor {unexpected[0]!r}{more}: {hint}")
    for name in wanted:
        if tuple(tensors[name].shape) != tuple(expected[name].shape):
            raise ModelLoadError(
                f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)} but config.json implies "
                f"{tuple(expected[name].shape)}: {hint}"
            )
