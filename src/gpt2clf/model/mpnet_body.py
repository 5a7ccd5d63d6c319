"""MPNet's encoder in plain PyTorch, for loading model folders fast (all-mpnet-base-v2 and the like).

The same reason as :mod:`gpt2clf.model.gpt2_body`: building ``transformers.MPNetModel`` means
importing transformers' model-loading machinery (``torch.distributed.tensor``,
``torch._dynamo``, ``scipy``), most of a one-text ``gpt2clf predict``'s start-up. A model
folder holds the backbone's config and every weight, so inference can build
:class:`MPNetBody` instead: the same network as ``transformers.MPNetModel`` in eval mode,
with the same parameter names and shapes (the pooler included, though unused), so the same
``model.safetensors`` loads strictly.

Data flow: ``input_ids, attention_mask, position_ids (B, T)`` -> LayerNorm(token + position
embeddings) -> ``num_hidden_layers`` x [self-attention with a relative position bias ->
residual, LayerNorm; GELU MLP -> residual, LayerNorm] -> ``(B, T, hidden_size)``.

MPNet facts this mirrors (transformers' ``modeling_mpnet``):

* the pad id of both embeddings is 1 whatever the config says, and real tokens are numbered
  from 2 (:class:`~gpt2clf.model.backbone.BackboneAdapter` passes those position ids);
* every layer adds the same bias to its attention scores: per head, a learned value for the
  bucket of the distance ``key - query`` between slots of the row (32 buckets, exact up to 8,
  logarithmic up to 128). Distances between real tokens do not change with padding on either
  side, so the bias does not either.

Guarantees: for every config that :func:`native_mpnet_reason` accepts, the hidden states of
real tokens equal ``MPNetModel``'s (tested to 1e-5 for left and right padding); any other
config is refused and the caller builds ``transformers``' model. Parameters are created
uninitialised: the caller loads the weights next. Used by
:meth:`gpt2clf.model.classifier.GPT2Classifier.from_pretrained` with ``native_backbone=True``
(prediction, evaluation, serving); training always builds ``transformers``' own model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gpt2clf.model.gpt2_body import BodyConfig

__all__ = ["MPNetBody", "MPNetBodyConfig", "native_mpnet_reason"]

# transformers' ACT2FN names this module implements, as nn.GELU's ``approximate``.
_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
PAD_POSITION = 1  # MPNetEmbeddings.padding_idx: fixed, not read from the config
BUCKETS = 32  # MPNetEncoder.compute_position_bias's num_buckets: fixed, not read from the config
MAX_DISTANCE = 128  # relative_position_bucket's max_distance
_SIZES = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
          "max_position_embeddings", "vocab_size")


def native_mpnet_reason(backbone_config: dict[str, Any]) -> str | None:
    """Why :class:`MPNetBody` cannot run this saved backbone config (None when it can)."""
    if backbone_config.get("model_type") != "mpnet":
        return f"model_type is {backbone_config.get('model_type')!r}, not 'mpnet'"
    activation = backbone_config.get("hidden_act", "gelu")
    if activation not in _ACTIVATIONS:
        return f"hidden_act {activation!r} is not implemented natively"
    if backbone_config.get("relative_attention_num_buckets", BUCKETS) != BUCKETS:
        return f"relative_attention_num_buckets is {backbone_config.get('relative_attention_num_buckets')!r}"
    for name in _SIZES:
        if not isinstance(backbone_config.get(name), int) or backbone_config[name] < 2:
            return f"{name} is missing"
    if backbone_config["hidden_size"] % backbone_config["num_attention_heads"]:
        return "hidden_size is not a multiple of num_attention_heads"
    return None


class MPNetBodyConfig(BodyConfig):
    """MPNet's saved config with the attribute names gpt2clf looks up."""

    model_type = "mpnet"

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(values)
        for name in _SIZES:
            setattr(self, name, int(values[name]))
        self.pad_token_id: int | None = values.get("pad_token_id")
        self.hidden_act: str = values.get("hidden_act", "gelu")
        self.layer_norm_eps: float = values.get("layer_norm_eps", 1e-12)
        self.hidden_dropout_prob: float = values.get("hidden_dropout_prob", 0.1)
        self.attention_probs_dropout_prob: float = values.get("attention_probs_dropout_prob", 0.1)


def _embedding(rows: int, width: int, padding_idx: int | None = None) -> nn.Embedding:
    return nn.Embedding(rows, width, padding_idx=padding_idx, _weight=torch.empty(rows, width))


def _linear(n_in: int, n_out: int) -> nn.Linear:
    """An ``nn.Linear`` (the very type, so int8 inference quantizes it) with uninitialised weights.

    Built on the meta device, where its random initialisation costs nothing, then given empty
    CPU tensors (``to_empty`` would import ~500 torch modules: 0.7 s)."""
    layer = nn.Linear(n_in, n_out, device="meta")
    layer.weight = nn.Parameter(torch.empty(n_out, n_in))
    layer.bias = nn.Parameter(torch.empty(n_out))
    return layer


class Embeddings(nn.Module):
    def __init__(self, config: MPNetBodyConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.word_embeddings = _embedding(config.vocab_size, width, PAD_POSITION)
        self.position_embeddings = _embedding(config.max_position_embeddings, width, PAD_POSITION)
        self.LayerNorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        return self.dropout(self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(position_ids)))


class SelfAttention(nn.Module):
    """Multi-head attention whose scores get the layer-shared position bias and the key mask added."""

    def __init__(self, config: MPNetBodyConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.q, self.k, self.v, self.o = (_linear(width, width) for _ in range(4))
        self.dropout = config.attention_probs_dropout_prob

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = (proj(x).view(B, T, self.heads, C // self.heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        # SDPA's default scale is MPNet's 1/sqrt(head_dim); ``bias`` is additive, like its eager scores.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class Attention(nn.Module):
    def __init__(self, config: MPNetBodyConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.attn(x, bias)) + x)


class Intermediate(nn.Module):
    def __init__(self, config: MPNetBodyConfig) -> None:
        super().__init__()
        self.dense = _linear(config.hidden_size, config.intermediate_size)
        self.act = nn.GELU(approximate=_ACTIVATIONS[config.hidden_act])

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class Output(nn.Module):
    def __init__(self, config: MPNetBodyConfig) -> None:
        super().__init__()
        self.dense = _linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Layer(nn.Module):
    """Post-LayerNorm encoder layer: ``h = LN(x + attn(x))``, then ``LN(h + dense(gelu(dense(h))))``."""

    def __init__(self, config: MPNetBodyConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = Output(config)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        h = self.attention(x, bias)
        return self.output(self.intermediate(h), h)


class Encoder(nn.Module):
    def __init__(self, config: MPNetBodyConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([Layer(config) for _ in range(config.num_hidden_layers)])
        self.relative_attention_bias = _embedding(BUCKETS, config.num_attention_heads)

    def position_bias(self, length: int, device: torch.device) -> Tensor:
        """(1, heads, T, T): each head's learned bias for the bucket of ``key slot - query slot``."""
        slots = torch.arange(length, dtype=torch.long, device=device)
        bucket = relative_position_bucket(slots[None, :] - slots[:, None])
        return self.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0)


def relative_position_bucket(relative_position: Tensor) -> Tensor:
    """transformers' MPNet (and T5, bidirectional) bucketing: 16 buckets each way, the first 8 exact."""
    half = BUCKETS // 2
    n = -relative_position
    ret = (n < 0).to(torch.long) * half
    n = torch.abs(n)
    max_exact = half // 2
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(MAX_DISTANCE / max_exact)
                         * (half - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, half - 1))
    return ret + torch.where(n < max_exact, n, large)


class Pooler(nn.Module):
    """transformers' pooler (tanh of a dense layer on the first token): kept so the weights load strictly."""

    def __init__(self, config: MPNetBodyConfig) -> None:
        super().__init__()
        self.dense = _linear(config.hidden_size, config.hidden_size)


class MPNetBody(nn.Module):
    """``transformers.MPNetModel`` (its last hidden state) with uninitialised weights.

    ``forward`` takes the keyword arguments :class:`~gpt2clf.model.backbone.BackboneAdapter` passes
    and returns a one-tuple holding the last hidden state ``(B, T, hidden_size)``.
    """

    def __init__(self, backbone_config: dict[str, Any]) -> None:
        super().__init__()
        reason = native_mpnet_reason(backbone_config)
        if reason is not None:
            raise ValueError(f"MPNetBody cannot run this backbone: {reason}")
        self.config = config = MPNetBodyConfig(backbone_config)
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None) -> tuple[Tensor]:
        length = input_ids.shape[1]
        if position_ids is None:  # MPNet's own default: pads at 1, real tokens counted from 2
            real = input_ids.ne(PAD_POSITION).long()
            position_ids = torch.cumsum(real, dim=1) * real + PAD_POSITION
        x = self.embeddings(input_ids, position_ids)
        bias = self.encoder.position_bias(length, x.device).to(x.dtype)
        if attention_mask is not None and not bool(attention_mask.all()):
            # Padded keys get the dtype's lowest value, as transformers' additive mask does.
            blocked = ~attention_mask.bool()[:, None, None, :]
            bias = bias.masked_fill(blocked, torch.finfo(x.dtype).min)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return (x,)
