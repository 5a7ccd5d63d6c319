"""The Hugging Face adapter: everything gpt2clf needs to know about a pretrained backbone.

A backbone is any ``transformers`` base model (GPT-2, BERT, RoBERTa, MiniLM, ...). This module
loads one (:func:`load_pretrained_backbone`, :func:`backbone_from_config`) and wraps it in a
:class:`BackboneAdapter` that hides the differences between architectures:

* its width, head count and number of positions, whatever its config calls them;
* its list of transformer layers and the final norm after them (for ``train_top_layers``);
* running it, or only its first ``L`` layers, or only the layers from ``L`` on (a feature
  cache stores the frozen lower part and trains the top);
* position ids that count only real tokens, with the model's own offset, so that a
  document's hidden states do not depend on padding side or batch neighbours (GPT-2, BERT
  and MiniLM number positions from the first slot of the padded row; RoBERTa from its pad
  id plus one);
* :func:`use_fused_gelu` and :func:`conv1d_to_linear`, which swap GPT-2's Python modules for
  equivalent PyTorch kernels.

Data flow: ``input_ids, attention_mask (B, T)`` -> :meth:`BackboneAdapter.hidden_states` ->
``(B, T, width)``. Nothing here knows about our blocks, training or the command line.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gpt2clf.errors import ConfigError, ModelLoadError, first_line

__all__ = [
    "BackboneAdapter",
    "attention_heads",
    "backbone_from_config",
    "conv1d_to_linear",
    "hidden_width",
    "load_backbone_config",
    "load_pretrained_backbone",
    "max_positions",
    "native_body",
    "native_body_class",
    "position_ids_from_mask",
    "use_fused_gelu",
]

# Where Hugging Face models keep their list of transformer layers, most common first.
_LAYER_PATHS = (
    "h", "layers", "layer", "blocks", "block",
    "encoder.layer", "encoder.layers", "decoder.layers", "transformer.h", "transformer.layers",
    "model.layers", "gpt_neox.layers", "encoder.block",
)
# Names of a final LayerNorm applied after the last layer (GPT-2: ln_f).
_FINAL_NORM_NAMES = ("ln_f", "norm", "final_layer_norm", "final_layernorm", "final_norm")
# Names of learned absolute position embeddings (GPT-2: wpe; BERT, RoBERTa: position_embeddings).
_POSITION_EMBEDDING_NAMES = ("wpe", "position_embeddings", "embed_positions")
_OFFLINE_HINT = ("pass a local folder written by save_pretrained (offline: set HF_HUB_OFFLINE=1 "
                 "and use such a folder)")


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
def load_pretrained_backbone(name_or_path: str, *, attn_implementation: str | None = "sdpa") -> nn.Module:
    """The pretrained base model ``name_or_path`` (hub id or local folder), in float32.

    PyTorch's fused attention (SDPA) is used where the architecture supports it. An LM-head
    model (``GPT2LMHeadModel``) is unwrapped to its base transformer.

    Raises:
        ModelLoadError: not found locally or on the Hub, or unreadable.
    """
    from transformers import AutoModel

    name = str(name_or_path)
    config = load_backbone_config(name)

    def load(implementation: str | None) -> nn.Module:
        return AutoModel.from_pretrained(name, config=config, attn_implementation=implementation,
                                         dtype=torch.float32)

    try:
        model = _with_sdpa_fallback(load, attn_implementation)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"cannot load backbone {name!r}: {first_line(err)}") from err
    return _base_model(model)


def load_backbone_config(name_or_path: str) -> Any:
    """The Hugging Face config of backbone ``name_or_path`` (hub id or local folder): its shape, no weights.

    Raises:
        ModelLoadError: not found locally or on the Hub, or unreadable.
    """
    from transformers import AutoConfig

    name = str(name_or_path)
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        if Path(name).is_dir():
            raise ModelLoadError(f"cannot read backbone folder {name}: {first_line(err)}") from err
        raise ModelLoadError(f"backbone {name!r} was not found locally or on the Hugging Face Hub; "
                             f"{_OFFLINE_HINT}") from err


def backbone_from_config(backbone_config: dict[str, Any], *, origin: str,
                         attn_implementation: str | None = "sdpa", native: bool = False) -> nn.Module:
    """A base model built from a saved config dict (no download), its weights left uninitialised
    because the caller loads them next.

    ``origin`` names the file the config came from, for error messages. With ``native=True``
    a plain GPT-2 config is built as :class:`~gpt2clf.model.gpt2_body.GPT2Body` and an MPNet one as
    :class:`~gpt2clf.model.mpnet_body.MPNetBody` (the same networks without importing
    ``transformers``' model classes: faster start-up for inference); other configs are built
    by ``transformers`` as usual.

    Raises:
        ModelLoadError: the config names an unknown or unusable architecture.
    """
    if native:
        body = native_body(backbone_config)
        if body is not None:
            return body
    from transformers import AutoConfig, AutoModel

    values = dict(backbone_config)
    model_type = values.pop("model_type", None)
    try:
        hf_config = AutoConfig.for_model(model_type, **values)
    except (ValueError, TypeError, KeyError) as err:
        raise ModelLoadError(f"{origin} has an unusable backbone_config (model_type {model_type!r}): "
                             f"{first_line(err)}") from err

    def build(implementation: str | None) -> nn.Module:
        # Its weights are about to be loaded: skip the random initialisation (seconds for GPT-2 small).
        with _no_init_weights():
            return AutoModel.from_config(hf_config, attn_implementation=implementation, dtype=torch.float32)

    try:
        model = _with_sdpa_fallback(build, attn_implementation)
    except (ValueError, TypeError, KeyError) as err:
        raise ModelLoadError(f"cannot build the backbone described in {origin}: {first_line(err)}") from err
    return _base_model(model)


def native_body(backbone_config: dict[str, Any]) -> nn.Module | None:
    """The plain-PyTorch body for this saved config (:class:`~gpt2clf.model.gpt2_body.GPT2Body`,
    :class:`~gpt2clf.model.mpnet_body.MPNetBody`) with uninitialised weights, or None when none can run it."""
    body = native_body_class(backbone_config)
    return None if body is None else body(backbone_config)


def native_body_class(backbone_config: dict[str, Any]) -> type[nn.Module] | None:
    """The class of :func:`native_body` for this saved config, or None (builds nothing)."""
    from gpt2clf.model.gpt2_body import GPT2Body, native_gpt2_reason
    from gpt2clf.model.mpnet_body import MPNetBody, native_mpnet_reason

    for reason, body in ((native_gpt2_reason, GPT2Body), (native_mpnet_reason, MPNetBody)):
        if reason(backbone_config) is None:
            return body
    return None


def _no_init_weights() -> contextlib.AbstractContextManager:
    """transformers' context that builds a model without initialising its weights (a no-op if absent)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - other transformers layouts
        return contextlib.nullcontext()
    return no_init_weights()


def _with_sdpa_fallback(make: Any, attn_implementation: str | None) -> nn.Module:
    try:
        return make(attn_implementation)
    except ValueError as err:
        if attn_implementation != "sdpa" or "scaled_dot_product_attention" not in str(err):
            raise
        return make(None)  # this architecture has no SDPA path: transformers' default


def _base_model(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


# ------------------------------------------------------------------------------------------
# Shape facts, whatever the config calls them
# ------------------------------------------------------------------------------------------
def hidden_width(config: Any) -> int:
    """The width of a backbone's hidden states (GPT-2's ``n_embd`` is aliased as ``hidden_size``)."""
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ConfigError(f"cannot tell the hidden size of backbone {type(config).__name__}")


def attention_heads(config: Any) -> int | None:
    """The backbone's attention heads per layer (GPT-2's ``n_head``), if its config says."""
    for name in ("num_attention_heads", "n_head", "num_heads", "n_heads"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def max_positions(config: Any) -> int | None:
    """How many positions the backbone has embeddings for (1024 for GPT-2), if it says."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def position_ids_from_mask(attention_mask: Tensor, offset: int = 0, pad_position: int | None = None) -> Tensor:
    """Position ids that count only real tokens: ``[0 0 0 1 2]`` for the mask ``[0 0 1 1 1]``.

    A backbone with learned absolute positions reads position ``t`` as the ``t``-th slot of
    the padded row, so a left-padded document would be read at shifted positions. Counting
    from the first real token gives every document the positions it has unpadded. ``offset``
    is added to real tokens (RoBERTa numbers them from its pad id + 1); pad slots get
    ``pad_position`` (default: ``offset``; their value does not matter, they are masked).
    """
    mask = attention_mask.long()
    counted = (mask.cumsum(-1) - 1).clamp(min=0) + offset
    if pad_position is None or pad_position == offset:
        return counted if offset == 0 else torch.where(mask.bool(), counted, offset)
    return torch.where(mask.bool(), counted, pad_position)


# ------------------------------------------------------------------------------------------
# The adapter
# ------------------------------------------------------------------------------------------
class BackboneAdapter:
    """Runs a Hugging Face base model the way gpt2clf needs, whatever its architecture.

    Not an ``nn.Module``: it holds a reference to ``module`` (which the classifier owns and
    saves) and knows how to call it. Example::

        >>> adapter = BackboneAdapter(load_pretrained_backbone("gpt2"))  # doctest: +SKIP
        >>> states = adapter.hidden_states(input_ids, attention_mask)    # (B, T, 768)  # doctest: +SKIP
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        accepted = _forward_parameters(module)
        self._pass_use_cache = "use_cache" in accepted  # no KV cache: we never generate
        # Positions from the mask, with the architecture's own offset: padding then changes nothing.
        self.position_offset: int | None = None
        self._pad_position = 0
        if "position_ids" in accepted:
            self.position_offset, self._pad_position = _position_numbering(module)

    # --- facts ------------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.module.config

    @property
    def width(self) -> int:
        return hidden_width(self.module.config)

    @property
    def heads(self) -> int | None:
        return attention_heads(self.module.config)

    @property
    def max_positions(self) -> int | None:
        """The longest input the backbone can read: its position embeddings less those below the
        first real token's number (RoBERTa and MPNet: 514 embeddings, tokens numbered from 2, so 512)."""
        positions = max_positions(self.module.config)
        if positions is None or not self.position_offset:
            return positions
        return positions - self.position_offset

    def layers(self) -> nn.ModuleList:
        """The transformer layers (GPT-2: ``h``; BERT: ``encoder.layer``)."""
        for path in _LAYER_PATHS:
            module: Any = self.module
            for part in path.split("."):
                module = getattr(module, part, None)
            if isinstance(module, nn.ModuleList) and len(module) > 0:
                return module
        # Unknown architecture: the longest ModuleList of same-typed modules.
        best: nn.ModuleList | None = None
        for module in self.module.modules():
            if (isinstance(module, nn.ModuleList) and len(module) > 0
                    and len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best))):
                best = module
        if best is None:
            raise ConfigError(
                f"cannot find the transformer layers of backbone {type(self.module).__name__}; "
                "use freeze=backbone or freeze=none instead of train_top_layers"
            )
        return best

    def final_norms(self) -> list[nn.Module]:
        """Normalisation layers applied after the last layer (GPT-2: ``ln_f``)."""
        norms: list[nn.Module] = []
        children = [m for m in self.module.children() if not isinstance(m, nn.ModuleList)]
        for owner in (self.module, *children):
            for name in _FINAL_NORM_NAMES:
                module = getattr(owner, name, None)
                if isinstance(module, nn.Module) and module not in norms:
                    norms.append(module)
        return norms

    def parameter_depths(self) -> dict[int, int]:
        """``id(parameter) -> depth``: 0 for embeddings (and anything below the first layer),
        ``i + 1`` for layer ``i``, ``L`` (the top layer's) for the final norm after the layers."""
        layers = self.layers()
        depths = {id(p): 0 for p in self.module.parameters()}
        for i, layer in enumerate(layers):
            for p in layer.parameters():
                depths[id(p)] = i + 1
        for norm in self.final_norms():
            for p in norm.parameters():
                depths[id(p)] = len(layers)
        return depths

    def describe_positions(self) -> str:
        """How positions are passed (part of a feature cache's key: it changes the states)."""
        return f"position_ids_from_mask offset={self.position_offset} pad={self._pad_position}"

    # --- running ------------------------------------------------------------------------------
    def forward_kwargs(self, attention_mask: Tensor) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if self.position_offset is not None:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask, self.position_offset,
                                                            self._pad_position)
        if self._pass_use_cache:
            kwargs["use_cache"] = False
        return kwargs

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor, *, num_layers: int | None = None) -> Tensor:
        """The last hidden state (B, T, width), or with ``num_layers=L`` the output of the first ``L`` layers.

        With ``L`` (``1 <= L <`` the number of layers) only those layers are computed, before
        the others and the final norm; :meth:`from_layer` finishes the pass.
        """
        kwargs = self.forward_kwargs(attention_mask)
        if num_layers is None:
            return _last_hidden_state(self.module(input_ids=input_ids, **kwargs))
        layers = self._split_layers(num_layers)
        captured: list[Tensor] = []

        def keep(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        handle = layers[num_layers - 1].register_forward_hook(keep)
        try:
            with _only_layers(layers, 0, num_layers):
                self.module(input_ids=input_ids, **kwargs)
        finally:
            handle.remove()
        return captured[-1]

    def from_layer(self, hidden: Tensor, attention_mask: Tensor, start_layer: int) -> Tensor:
        """Finish a pass from layer ``start_layer`` on: (B, T, W) -> last hidden state.

        ``hidden`` is what :meth:`hidden_states` returned with ``num_layers=start_layer`` (e.g.
        read from a feature cache). The model's own forward runs with only layers
        ``start_layer:`` left in its layer list, so it builds its attention mask and position
        ids exactly as in a full pass; ``hidden`` replaces the input of layer ``start_layer``.
        Not re-entrant: the layer list is swapped for the duration of the call.
        """
        return self.run_layers(hidden, attention_mask, start_layer)

    def run_layers(self, hidden: Tensor, attention_mask: Tensor, start_layer: int, stop_layer: int | None = None
                   ) -> Tensor:
        """Layers ``start_layer`` to ``stop_layer - 1`` over ``hidden``, the input of layer ``start_layer``.

        ``stop_layer`` None runs to the end (the final norm included, as :meth:`from_layer`); otherwise
        the result is the output of layer ``stop_layer - 1``, what :meth:`hidden_states` with
        ``num_layers=stop_layer`` returns.
        """
        layers = self._split_layers(start_layer)
        stop = len(layers) if stop_layer is None else stop_layer
        if not start_layer < stop <= len(layers):
            raise ConfigError(f"cannot run layers {start_layer} to {stop} of a {len(layers)}-layer backbone")
        hidden = hidden.to(next(self.module.parameters()).dtype)

        def inject(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        captured: list[Tensor] = []

        def keep(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)

        handles = [layers[start_layer].register_forward_pre_hook(inject, with_kwargs=True)]
        if stop_layer is not None:
            handles.append(layers[stop - 1].register_forward_hook(keep))
        # Token id 0 everywhere: the embeddings are computed (cheap) and then discarded.
        placeholder = torch.zeros(attention_mask.shape, dtype=torch.long, device=attention_mask.device)
        try:
            with _only_layers(layers, start_layer, stop):
                output = self.module(input_ids=placeholder, **self.forward_kwargs(attention_mask))
        finally:
            for handle in handles:
                handle.remove()
        return captured[-1] if stop_layer is not None else _last_hidden_state(output)

    def _split_layers(self, layer: int) -> nn.ModuleList:
        layers = self.layers()
        if not isinstance(layer, int) or not 1 <= layer < len(layers):
            raise ConfigError(f"a backbone split point must be between 1 and {len(layers) - 1}, got {layer!r}")
        return layers

    # --- training helpers -------------------------------------------------------------------
    def set_trainable(self, train: bool, top_layers: int | None = None) -> None:
        """Train everything (``train``), nothing, or with ``top_layers=K`` only the top ``K`` layers and final norm.

        :meth:`trained_modules` then names the parts that train, which :meth:`set_train_mode` puts
        in train mode (dropout on) while the rest of the backbone stays in eval mode.
        """
        if top_layers is None:
            self.module.requires_grad_(train)
            self._trained = [self.module] if train else []
            return
        if top_layers < 0:
            raise ConfigError(f"train_top_layers must be 0 or more, got {top_layers}")
        layers = self.layers()
        if top_layers > len(layers):
            raise ConfigError(f"train_top_layers is {top_layers} but the backbone has only {len(layers)} layers")
        self.module.requires_grad_(False)
        self._trained = []
        if top_layers == 0:
            return
        self._trained = [*layers[len(layers) - top_layers:], *self.final_norms()]
        for module in self._trained:
            module.requires_grad_(True)

    def trained_modules(self) -> list[nn.Module]:
        """The parts of the backbone that train (the whole backbone unless :meth:`set_trainable` froze some)."""
        return list(getattr(self, "_trained", [self.module]))

    def set_train_mode(self, mode: bool) -> None:
        """Train mode for the parts that train, eval mode for the frozen rest (``mode=False``: all eval).

        ``from_pretrained`` returns a backbone in eval mode, so without this a fine-tuned backbone
        would train with its own dropout off. Frozen parts stay in eval mode: they compute what
        a feature cache computed (no dropout), and a frozen layer has nothing to regularise.
        """
        self.module.eval()
        if mode:
            for module in self.trained_modules():
                module.train()

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the backbone's activations in the backward pass, where the architecture supports it."""
        if getattr(self.module, "supports_gradient_checkpointing", False):
            kwargs = {"use_reentrant": False}  # works with a frozen embedding layer too
            if hasattr(self.module, "activation_checkpointing_enable"):  # transformers >= 5.x
                self.module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _position_numbering(module: nn.Module) -> tuple[int, int]:
    """(offset of the first real token, position of pad slots) of a model's learned positions.

    RoBERTa-style embeddings reserve the pad id as a position (``padding_idx``) and number real
    tokens from ``padding_idx + 1``; everything else numbers them from 0.
    """
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Embedding) and name.rsplit(".", 1)[-1] in _POSITION_EMBEDDING_NAMES:
            if sub.padding_idx is not None:
                return sub.padding_idx + 1, sub.padding_idx
            return 0, 0
    return 0, 0


def _last_hidden_state(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output.last_hidden_state


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


# ------------------------------------------------------------------------------------------
# Faster equivalent modules
# ------------------------------------------------------------------------------------------
def use_fused_gelu(model: nn.Module) -> int:
    """Swap transformers' Python tanh-GELU (``NewGELUActivation``, GPT-2's ``gelu_new``) for PyTorch's kernel.

    ``nn.GELU(approximate="tanh")`` computes the same function (outputs agree to float
    rounding) in one kernel instead of seven elementwise ops, and keeps one tensor for the
    backward pass instead of several: GPT-2 small training at 16 x 512 on CPU peaks at
    ~7 GB instead of ~9.5 GB (micro-batches of 4). Returns how many modules were replaced;
    the model has no new parameters, so saving and loading are unaffected.
    """
    if "transformers.activations" not in sys.modules:  # then no module can be one: skip the import
        return 0
    try:
        from transformers.activations import NewGELUActivation
    except ImportError:  # pragma: no cover - other transformers layouts
        return 0
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, nn.GELU(approximate="tanh"))
                replaced += 1
    return replaced


def conv1d_to_linear(module: nn.Module) -> None:
    """Replace ``Conv1D`` layers (transformers' and :mod:`gpt2clf.model.gpt2_body`'s, weight (in, out)) by the
    equivalent ``nn.Linear`` (weight (out, in))."""
    from gpt2clf.model.gpt2_body import Conv1D as NativeConv1D

    kinds: tuple[type, ...] = (NativeConv1D,)
    if "transformers.pytorch_utils" in sys.modules:  # otherwise no module can be transformers' Conv1D
        from transformers.pytorch_utils import Conv1D

        kinds += (Conv1D,)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, kinds):
                continue
            n_in, n_out = child.weight.shape
            linear = nn.Linear(n_in, n_out, bias=child.bias is not None)
            with torch.no_grad():
                linear.weight.copy_(child.weight.t())
                if child.bias is not None:
                    linear.bias.copy_(child.bias)
            setattr(parent, name, linear)
