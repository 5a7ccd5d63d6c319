"""GPT-2's transformer body in plain PyTorch, for loading model folders fast.

Importing ``transformers``' model classes costs about 1.3 s on a 2-core CPU (its model
loading machinery pulls in ``torch.distributed.tensor``, ``torch._dynamo`` and ``scipy``),
which is most of the start-up of ``gpt2clf predict MODEL "one text"``. A model folder
already holds the backbone's config and every weight, so for plain GPT-2 backbones
inference can skip those imports: :class:`GPT2Body` is the same network as
``transformers.GPT2Model`` in eval mode (the same parameter names and shapes, so the same
``model.safetensors`` loads strictly), written the way nanoGPT's ``model.py`` writes it.

Data flow: ``input_ids, attention_mask, position_ids (B, T)`` -> token + position embeddings
-> ``n_layer`` x [LayerNorm -> causal self-attention -> residual; LayerNorm -> GELU MLP ->
residual] -> final LayerNorm -> ``(B, T, n_embd)``.

Guarantees:

* For every config that :func:`native_gpt2_reason` accepts, the hidden states of real tokens
  equal ``GPT2Model``'s (tested to 1e-5 for left and right padding); configs with options
  this module does not implement (cross-attention, inverse-layer-index scaling, ...) are
  refused, and the caller builds ``transformers``' model instead.
* Padded query positions attend to themselves, so their (masked, ignored) states are finite.
* Parameters are created uninitialised: the caller loads the weights next.

Used by :meth:`gpt2clf.model.classifier.GPT2Classifier.from_pretrained` with ``native_backbone=True``
(prediction, evaluation, serving). Training always builds ``transformers``' own model.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["BodyConfig", "GPT2Body", "GPT2BodyConfig", "native_gpt2_reason"]

# GPT-2 activations this module implements (transformers' ACT2FN names).
_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}
# Config options that must have these values (anything else changes the network).
_REQUIRED = {"add_cross_attention": False, "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True}


def native_gpt2_reason(backbone_config: dict[str, Any]) -> str | None:
    """Why :class:`GPT2Body` cannot run this saved backbone config (None when it can)."""
    if backbone_config.get("model_type") != "gpt2":
        return f"model_type is {backbone_config.get('model_type')!r}, not 'gpt2'"
    for name, wanted in _REQUIRED.items():
        if bool(backbone_config.get(name, wanted)) != wanted:
            return f"{name} is {backbone_config.get(name)!r}"
    activation = backbone_config.get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS:
        return f"activation_function {activation!r} is not implemented natively"
    for name in ("n_embd", "n_head", "n_layer", "n_positions", "vocab_size"):
        if not isinstance(backbone_config.get(name), int) or backbone_config[name] < 1:
            return f"{name} is missing"
    if backbone_config["n_embd"] % backbone_config["n_head"]:
        return "n_embd is not a multiple of n_head"
    return None


class BodyConfig:
    """A saved backbone config, read-only, for a native body (this module's, :mod:`gpt2clf.model.mpnet_body`'s).

    Keeps the whole dict so that saving a model loaded this way writes the same config back;
    subclasses add the attribute names gpt2clf and their network look up.
    """

    model_type = ""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = dict(values)
        self._name_or_path: str = values.get("_name_or_path", "")

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def to_json_string(self, use_diff: bool = False) -> str:
        """The saved config as JSON (``use_diff`` is accepted for transformers' signature)."""
        return json.dumps(self._values, indent=2, sort_keys=True)


class GPT2BodyConfig(BodyConfig):
    """GPT-2's saved config with the attribute names gpt2clf looks up."""

    model_type = "gpt2"

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.n_embd: int = values["n_embd"]
        self.hidden_size = self.n_embd
        self.n_head: int = values["n_head"]
        self.num_attention_heads = self.n_head
        self.n_layer: int = values["n_layer"]
        self.n_positions: int = values["n_positions"]
        self.vocab_size: int = values["vocab_size"]
        self.n_inner: int = values.get("n_inner") or 4 * self.n_embd
        self.layer_norm_epsilon: float = values.get("layer_norm_epsilon", 1e-5)
        self.activation_function: str = values.get("activation_function", "gelu_new")
        self.embd_pdrop: float = values.get("embd_pdrop", 0.1)
        self.attn_pdrop: float = values.get("attn_pdrop", 0.1)
        self.resid_pdrop: float = values.get("resid_pdrop", 0.1)


class Conv1D(nn.Module):
    """transformers' GPT-2 linear layer: ``x @ weight + bias`` with ``weight`` stored (in, out)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.empty(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight).view(*x.shape[:-1], -1)


class Attention(nn.Module):
    """Causal multi-head self-attention. Per head, the QK circuit (``c_attn``'s query and key
    thirds) scores where to read from; the OV circuit (its value third, then ``c_proj``) says what."""

    def __init__(self, config: GPT2BodyConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.attn_dropout = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: Tensor, allowed: Tensor | None) -> Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(C, dim=2))
        dropout = self.attn_dropout if self.training else 0.0
        # SDPA's default scale 1/sqrt(head_dim) is GPT-2's (scale_attn_weights=True).
        if allowed is None:  # no padding: the fused causal kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, config: GPT2BodyConfig) -> None:
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, config.n_inner)
        self.act = nn.GELU(approximate=_ACTIVATIONS[config.activation_function])
        self.c_proj = Conv1D(config.n_inner, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer layer: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPT2BodyConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, allowed: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), allowed)
        return x + self.mlp(self.ln_2(x))


class GPT2Body(nn.Module):
    """``transformers.GPT2Model`` (no KV cache, no cross-attention) with uninitialised weights.

    ``forward`` takes the keyword arguments :class:`~gpt2clf.model.backbone.BackboneAdapter` passes
    and returns a one-tuple holding the last hidden state ``(B, T, n_embd)``.
    """

    def __init__(self, backbone_config: dict[str, Any]) -> None:
        super().__init__()
        reason = native_gpt2_reason(backbone_config)
        if reason is not None:
            raise ValueError(f"GPT2Body cannot run this backbone: {reason}")
        self.config = config = GPT2BodyConfig(backbone_config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd, _weight=torch.empty(config.vocab_size, config.n_embd))
        self.wpe = nn.Embedding(config.n_positions, config.n_embd,
                                _weight=torch.empty(config.n_positions, config.n_embd))
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None) -> tuple[Tensor]:
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device).unsqueeze(0)
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        allowed = None
        if attention_mask is not None and not bool(attention_mask.all()):
            real = attention_mask.bool()
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            itself = torch.eye(T, dtype=torch.bool, device=x.device)
            # Query t reads key s <= t when s is a real token; a padded query also reads itself
            # (its state is ignored, but an all-masked row would make it NaN).
            allowed = (causal & (real[:, None, None, :] | itself)).expand(B, 1, T, T)
        for block in self.h:
            x = block(x, allowed)
        return (self.ln_f(x),)

