"""Why did the model say that? Per-token attributions and attention routing for one document.

Data flow for one document (never a batch: every figure here is per document, so a caller
that splits a long text into chunks can explain each chunk and combine them)::

    text -> tokenize_texts (the ids the Predictor sees, truncated to max_length)
         -> offsets from the fast tokenizer -> readable token strings (spans of the text)
         -> one forward pass with hooks on each block's ln1 and on ln_f
              -> probabilities, predicted label
              -> per block and head: the attention weights of the pooled query (recomputed)
         -> method "integrated-gradients": Captum LayerIntegratedGradients on the backbone's
              input embedding layer, towards the target class's logit, baseline = the pad
              token at every position (same attention mask) -> one attribution per token
            method "attention": the last block's head-averaged pooled-query weights

Guarantees:

* Integrated gradients are *complete* up to Captum's convergence ``delta``: the
  attributions sum to ``logit_target(text) - logit_target(baseline) + delta``; both the
  logit difference and the delta are reported.
* Token strings are cut from the original text with the fast tokenizer's character
  offsets (multi-byte characters split over several byte-level tokens repeat that
  character); without offsets they are decoded. Byte-level markers such as ``Ġ`` never
  appear.
* The attention weights are recomputed from each block's input with the block's own
  ``qkv`` projection, scale and key mask, so they are the weights SDPA used.
* Every user mistake (unknown label or method, bad step count) raises a
  :class:`~gpt2clf.errors.UserError` subclass with one line.

Example::

    >>> predictor = Predictor.from_folder("runs/20ng/model")                 # doctest: +SKIP
    >>> exp = explain(predictor, "My X server crashes on resize", steps=32)   # doctest: +SKIP
    >>> exp.label, exp.top_tokens(3)                                        # doctest: +SKIP
    ('comp.windows.x', [(1, ' X', 0.91), (2, ' server', 0.40), (3, ' crashes', 0.12)])
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gpt2clf.errors import ConfigError, UserError
from gpt2clf.files import atomic_write_text

__all__ = [
    "METHODS", "Explanation", "attention_weights", "display_token", "explain", "explain_folder",
    "explanation_view", "integrated_gradients", "png_data_uri", "readable_tokens", "render_html",
    "template_environment"
]

METHODS = ("integrated-gradients", "attention")
DEFAULT_STEPS = 50
MAX_STEPS = 10_000


@dataclass
class Explanation:
    """One document's explanation; :meth:`to_dict` is its JSON form.

    ``attributions`` has one value per entry of ``tokens``: for integrated gradients the
    contribution of that token to the ``target`` logit (positive: towards ``target``); for
    attention the last block's pooled-query weight averaged over heads (non-negative, sums
    to 1). ``head_weights[b][h][t]`` is how much block ``b``'s head ``h`` routes token ``t``
    into the pooled position; ``pooling_weights`` are the learned pooling weights (attention
    pooling only).
    """

    text: str
    label: str
    """The predicted label."""
    target: str
    """The label explained (the predicted one unless another was asked for)."""
    probabilities: dict[str, float]
    tokens: list[str]
    attributions: list[float]
    method: str
    offsets: list[tuple[int, int]] | None = None
    """Character span of each token in ``text`` (None when the tokenizer gives no offsets)."""
    delta: float | None = None
    """Captum's convergence delta: sum(attributions) - logit_difference (integrated gradients)."""
    logit_difference: float | None = None
    """Target logit of the text minus that of the all-pad baseline (integrated gradients)."""
    steps: int | None = None
    pooling: str = "last"
    head_weights: list[list[list[float]]] = field(default_factory=list)
    pooling_weights: list[float] | None = None
    truncated: bool = False
    """Whether the text had more tokens than the model's max_length (only the first were used)."""
    chunk: dict[str, int] | None = None
    """For a model that reads long documents in windows: ``{"index": i, "count": n}``, the window
    explained (the one with the largest logit for the target label); ``text`` is then that
    window's text, while ``label`` and ``probabilities`` are the whole document's."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: label, probabilities, tokens, attributions, method, delta and the rest.

        Example::

            >>> json.dumps(explain(predictor, "text").to_dict())  # doctest: +SKIP
        """
        out = asdict(self)
        if self.offsets is not None:
            out["offsets"] = [list(span) for span in self.offsets]
        return out

    def top_tokens(self, k: int = 10) -> list[tuple[int, str, float]]:
        """The ``k`` tokens with the largest absolute attribution: (position, token, attribution).

        Example::

            >>> exp.top_tokens(2)  # doctest: +SKIP
            [(4, ' hockey', 1.93), (0, 'The', -0.21)]
        """
        order = sorted(range(len(self.tokens)), key=lambda i: -abs(self.attributions[i]))
        return [(i, self.tokens[i], self.attributions[i]) for i in order[:max(0, k)]]

    def summary(self, top_k: int = 5) -> str:
        """A few human-readable lines: label, probability, the top tokens and the delta."""
        lines = [f"{self.label}  (p={self.probabilities[self.label]:.3f}; explaining {self.target!r} "
                 f"with {self.method})"]
        for i, token, value in self.top_tokens(top_k):
            lines.append(f"  {value:+.4f}  {token!r} (token {i})")
        if self.delta is not None and self.logit_difference is not None:
            lines.append(f"  logit difference {self.logit_difference:+.4f}, convergence delta {self.delta:+.2e}")
            if abs(self.delta) > 0.05 * abs(self.logit_difference):
                lines.append("  (the delta is large: more --steps give a closer approximation)")
        if self.truncated:
            lines.append(f"  (only the first {len(self.tokens)} tokens were read)")
        if self.chunk is not None:
            lines.append(f"  (explained inside window {self.chunk['index'] + 1} of {self.chunk['count']}, the one "
                         f"that scores {self.target!r} highest)")
        return "\n".join(lines)

    def display_segments(self) -> list[tuple[str, float]]:
        """The document as (text piece, attribution) pairs covering it in order, for shading.

        With offsets the pieces are exact spans of ``text`` (gaps between tokens get 0; tokens
        sharing one multi-byte character are merged, their attributions summed); without, the
        decoded tokens.
        """
        if self.offsets is None:
            return list(zip(self.tokens, self.attributions, strict=True))
        pieces: list[tuple[str, float]] = []
        cursor = 0
        for (start, end), value in zip(self.offsets, self.attributions, strict=True):
            if end <= cursor and pieces:  # a continuation byte of the character just shown
                text, total = pieces[-1]
                pieces[-1] = (text, total + value)
                continue
            start = max(start, cursor)
            if start > cursor:
                pieces.append((self.text[cursor:start], 0.0))
            pieces.append((self.text[start:end], value))
            cursor = max(cursor, end)
        if cursor < len(self.text) and not self.truncated:
            pieces.append((self.text[cursor:], 0.0))
        return pieces


# ------------------------------------------------------------------------------------------
# tokens
# ------------------------------------------------------------------------------------------
def readable_tokens(text: str, ids: Sequence[int], tokenizer: Any) -> tuple[list[str], list[tuple[int, int]] | None]:
    """Token strings for ``ids`` (the tokenization of ``text``) and their character spans.

    Uses the fast tokenizer's ``return_offsets_mapping`` when it reproduces ``ids``; special
    tokens without a span show as themselves (``<|endoftext|>``). Otherwise each id is
    decoded on its own and the spans are None.

    Example::

        >>> readable_tokens("Hi there", [17250, 612], tokenizer)  # doctest: +SKIP
        (['Hi', ' there'], [(0, 2), (2, 8)])
    """
    ids = list(ids)
    if getattr(tokenizer, "is_fast", False) and text:
        try:
            encoded = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=len(ids),
                                add_special_tokens=True, verbose=False)
        except (TypeError, ValueError, NotImplementedError):
            encoded = None
        if encoded is not None and list(encoded["input_ids"]) == ids:
            offsets = [(int(a), int(b)) for a, b in encoded["offset_mapping"]]
            tokens = []
            for token_id, (start, end) in zip(ids, offsets, strict=True):
                tokens.append(text[start:end] if end > start else _decode_one(tokenizer, token_id))
            return tokens, offsets
    return [_decode_one(tokenizer, token_id) for token_id in ids], None


def _decode_one(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([int(token_id)], clean_up_tokenization_spaces=False)


DISPLAY_LIMIT = 20
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def display_token(token: str, limit: int = DISPLAY_LIMIT) -> str:
    """How every view shows one token (top-tokens table, heat map axis, report): the one rule.

    The token's own characters without the spaces around them (a word token carries its
    leading space; drawn, it reads as a stray glyph), line breaks and tabs as ``\\n``/``\\t``,
    a token of spaces only as ``␣`` per space, at most ``limit`` characters (then ``…``).

    Example::

        >>> display_token(" people"), display_token("\\n\\n"), display_token("  ")
        ('people', '\\\\n\\\\n', '␣␣')
    """
    text = token.strip(" ") or "␣" * len(token)
    text = "".join(_ESCAPES.get(char, char) for char in text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


# ------------------------------------------------------------------------------------------
# attention routing
# ------------------------------------------------------------------------------------------
def pooled_query_weights(model: Any, final_hidden: Tensor, mask: Tensor) -> Tensor:
    """How the pooled vector weights the query positions: a distribution over tokens (T,).

    ``last``: one-hot on the last real token; ``mean``: uniform over real tokens;
    ``attention``: the learned pooling weights computed from ``ln_f``'s output.
    """
    real = mask[0].bool()
    if model.pooler is not None:
        scores = model.pooler.score(final_hidden).squeeze(-1)[0].float()
        return scores.masked_fill(~real, torch.finfo(scores.dtype).min).softmax(-1)
    if model.spec.pooling == "mean":
        return real.float() / real.sum().clamp(min=1)
    weights = torch.zeros(real.shape, dtype=torch.float32)
    last = int(torch.nonzero(real).max()) if bool(real.any()) else 0
    weights[last] = 1.0
    return weights


def attention_weights(block: Any, block_input: Tensor, mask: Tensor) -> Tensor:
    """A block's attention weights (B, heads, T, T) from its LayerNorm'd input ``block_input``.

    The same computation as :class:`gpt2clf.model.classifier.SelfAttention` (fused qkv, scale
    1/sqrt(head_dim), padded keys masked, every query may attend to itself), with the
    softmax made explicit instead of inside SDPA.
    """
    attn = block.attn
    B, T, C = block_input.shape
    heads, width = attn.n_heads, C // attn.n_heads
    q, k, _ = attn.qkv(block_input).split(attn.n_embed, dim=2)
    q = q.view(B, T, heads, width).transpose(1, 2).float()
    k = k.view(B, T, heads, width).transpose(1, 2).float()
    scores = q @ k.transpose(-1, -2) / math.sqrt(width)
    allowed = mask.bool()[:, None, None, :] | torch.eye(T, dtype=torch.bool, device=scores.device)
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)


def _forward_with_routing(model: Any, ids: Tensor, mask: Tensor) -> tuple[Tensor, list[Tensor], Tensor | None]:
    """Logits (C,), per block the pooled query's weights (heads, T), and the pooling weights."""
    block_inputs: list[Tensor] = []
    final: list[Tensor] = []
    handles = [block.ln1.register_forward_hook(lambda m, a, out: block_inputs.append(out.detach()))
               for block in model.blocks]
    handles.append(model.ln_f.register_forward_hook(lambda m, a, out: final.append(out.detach())))
    try:
        with torch.no_grad():
            logits = model(ids, mask)[0].float()
            pooled = pooled_query_weights(model, final[-1], mask).to(ids.device)
            routed = [torch.einsum("t,htk->hk", pooled, attention_weights(block, x, mask)[0]).cpu()
                      for block, x in zip(model.blocks, block_inputs, strict=True)]
    finally:
        for handle in handles:
            handle.remove()
    return logits.cpu(), routed, pooled.cpu() if model.pooler is not None else None


# ------------------------------------------------------------------------------------------
# integrated gradients
# ------------------------------------------------------------------------------------------
def integrated_gradients(model: Any, ids: Tensor, mask: Tensor, baseline_ids: Tensor, target: int, *,
                         steps: int = DEFAULT_STEPS, internal_batch_size: int | None = 16
                         ) -> tuple[Tensor, float, float]:
    """Per-token IG attributions (T,) to the ``target`` logit, Captum's delta and the logit difference.

    Captum's :class:`~captum.attr.LayerIntegratedGradients` interpolates the output of the
    backbone's input embedding layer between ``baseline_ids`` and ``ids`` (position
    embeddings and the attention mask stay the same on the whole path) and sums each token's
    attribution over the embedding dimension.
    """
    try:
        from captum.attr import LayerIntegratedGradients
    except ImportError as err:
        raise UserError("integrated gradients need Captum: pip install 'gpt2clf[explain]' "
                        "(or use --method attention)") from err

    def forward(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return model(input_ids, attention_mask).float()

    layer = model.backbone.get_input_embeddings()
    lig = LayerIntegratedGradients(forward, layer)
    with torch.enable_grad():
        attributions, delta = lig.attribute(
            ids, baselines=baseline_ids, target=target, additional_forward_args=(mask,), n_steps=steps,
            internal_batch_size=internal_batch_size, return_convergence_delta=True)
    with torch.no_grad():
        difference = float(forward(ids, mask)[0, target] - forward(baseline_ids, mask)[0, target])
    return attributions.sum(dim=-1)[0].detach().float().cpu(), float(delta.reshape(-1)[0]), difference


# ------------------------------------------------------------------------------------------
# the entry point
# ------------------------------------------------------------------------------------------
def check_options(method: str, steps: Any) -> None:
    """Raise :class:`ConfigError` for an unknown method or a step count that is not 1..10000."""
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")


def explain(predictor: Any, text: str, *, method: str = "integrated-gradients", label: str | None = None,
            steps: int = DEFAULT_STEPS, internal_batch_size: int | None = 16) -> Explanation:
    """Explain the prediction of ``predictor`` (a :class:`~gpt2clf.infer.predictor.Predictor`) on ``text``.

    ``label``: the class to explain (default: the predicted one). ``steps``: integration
    steps of integrated gradients (more: smaller delta, proportionally slower).

    Example::

        >>> predictor = Predictor.from_folder("runs/20ng/model", device="cpu")  # doctest: +SKIP
        >>> exp = explain(predictor, "The goalie stopped 40 shots", label="rec.sport.hockey")  # doctest: +SKIP
        >>> print(exp.summary())                                                # doctest: +SKIP
    """
    from gpt2clf.data.batching import tokenize_texts

    check_options(method, steps)
    names = predictor.label_names
    if label is not None and label not in names:
        shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
        raise ConfigError(f"unknown label {label!r}; the model knows: {shown}")
    model, tokenizer = predictor.model, predictor.tokenizer
    if not hasattr(model, "blocks"):
        raise ConfigError("explanations need the float model; load the Predictor without int8")
    device = next(model.parameters()).device
    max_length = int(predictor.max_length)
    windowing = getattr(predictor, "windowing", None)
    if windowing is not None and windowing.windowed:
        return _explain_in_window(predictor, text, method=method, label=label, steps=steps,
                                  internal_batch_size=internal_batch_size)
    ids_list = tokenize_texts([text], tokenizer, max_length)[0]
    full_length = len(tokenize_texts([text], tokenizer, 10**9)[0]) if len(ids_list) >= max_length else 0
    tokens, offsets = readable_tokens(text, ids_list, tokenizer)
    ids = torch.tensor([ids_list], dtype=torch.long, device=device)
    mask = torch.ones_like(ids)

    was_training = model.training
    model.eval()
    try:
        logits, routed, pooling = _forward_with_routing(model, ids, mask)
        probabilities = logits.softmax(-1)
        predicted = int(probabilities.argmax())
        target = names.index(label) if label is not None else predicted
        delta = difference = None
        if method == "integrated-gradients":
            baseline = torch.full_like(ids, int(tokenizer.pad_token_id))
            scores, delta, difference = integrated_gradients(model, ids, mask, baseline, target, steps=steps,
                                                             internal_batch_size=internal_batch_size)
        elif routed:
            scores = routed[-1].mean(dim=0)
        elif pooling is not None:
            scores = pooling
        else:
            raise ConfigError("--method attention needs attention blocks or attention pooling; this model has "
                              "n_blocks 0 and pooling " + model.spec.pooling + ": use integrated-gradients")
    finally:
        model.train(was_training)
    return Explanation(
        text=text, label=names[predicted], target=names[target],
        probabilities={name: float(p) for name, p in zip(names, probabilities.tolist(), strict=True)},
        tokens=tokens, attributions=[float(v) for v in scores.tolist()], method=method, offsets=offsets,
        delta=delta, logit_difference=difference, steps=steps if method == "integrated-gradients" else None,
        pooling=model.spec.pooling, head_weights=[r.tolist() for r in routed],
        pooling_weights=pooling.tolist() if pooling is not None else None,
        truncated=full_length > len(ids_list))


def _explain_in_window(predictor: Any, text: str, **options: Any) -> Explanation:
    """Explain a long document read in windows: inside the window that scores the target label highest.

    The document's own prediction (all windows aggregated, fused with TF-IDF when the model
    has it) gives the label and probabilities; the attributions are those of the chosen window.
    """
    import dataclasses

    from gpt2clf.data.batching import Windowing, encode_documents, special_tokens_around

    names = predictor.label_names
    document = predictor.predict_proba([text])[0]
    label = options.get("label")
    target = names.index(label) if label is not None else int(document.argmax())
    windows = encode_documents([text], predictor.tokenizer, predictor.windowing)[0]
    model = predictor.model
    device = next(model.parameters()).device
    with torch.inference_mode():
        scores = [float(model(torch.tensor([w], device=device), torch.ones(1, len(w), dtype=torch.long,
                                                                         device=device))[0, target])
                  for w in windows]
    best = max(range(len(windows)), key=scores.__getitem__)
    prefix, suffix = special_tokens_around(predictor.tokenizer)
    body = windows[best][len(prefix):len(windows[best]) - len(suffix)]
    window_text = predictor.tokenizer.decode(body, clean_up_tokenization_spaces=False)
    single = dataclasses.replace(predictor.windowing, mode="truncate")
    inner = _WindowPredictor(predictor, single if isinstance(single, Windowing) else predictor.windowing)
    explanation = explain(inner, window_text, **{**options, "label": names[target]})
    return dataclasses.replace(
        explanation, label=names[int(document.argmax())],
        probabilities={name: float(p) for name, p in zip(names, document.tolist(), strict=True)},
        chunk={"index": best, "count": len(windows)})


class _WindowPredictor:
    """A predictor's model and tokenizer, reading one window (what :func:`explain` needs)."""

    def __init__(self, predictor: Any, windowing: Any) -> None:
        self.model, self.tokenizer = predictor.model, predictor.tokenizer
        self.label_names, self.max_length, self.windowing = predictor.label_names, predictor.max_length, windowing


def explain_folder(model_dir: str | Path, texts: Sequence[str], *, method: str = "integrated-gradients",
                   label: str | None = None, steps: int = DEFAULT_STEPS, device: str | None = None,
                   html: str | Path | None = None) -> list[Explanation]:
    """Load a model folder and explain each text; write them to one HTML page if ``html`` is given.

    It runs in float32 (integrated gradients need it) on ``device`` (None: auto, as
    :class:`~gpt2clf.config.InferenceSettings` says: cuda if available, else cpu).

    Example::

        >>> exps = explain_folder("runs/20ng/model", ["GPU drivers for X11?"], html="why.html")  # doctest: +SKIP
    """
    from gpt2clf.infer.predictor import Predictor

    check_options(method, steps)
    if not texts:
        raise UserError("nothing to explain: give TEXT arguments or --file F")
    # float32: gradients of integrated gradients need it, and the shown probabilities then match them
    predictor = Predictor.from_folder(model_dir, device=device, precision="32-true")
    explanations = [explain(predictor, text, method=method, label=label, steps=steps) for text in texts]
    if html is not None:
        atomic_write_text(Path(html), render_html(explanations, title=f"gpt2clf explain: {Path(model_dir)}"))
    return explanations


# ------------------------------------------------------------------------------------------
# HTML
# ------------------------------------------------------------------------------------------
POSITIVE_RGB = (26, 133, 255)  # towards the target label
NEGATIVE_RGB = (230, 75, 53)  # against it


def shade(value: float, scale: float) -> str:
    """A CSS background for one attribution: blue for positive, red for negative, alpha by size."""
    if not scale or not value:
        return "transparent"
    r, g, b = POSITIVE_RGB if value > 0 else NEGATIVE_RGB
    alpha = min(1.0, abs(value) / scale) * 0.85
    return f"rgba({r}, {g}, {b}, {alpha:.3f})"


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for inline images (the pages never load anything)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def template_environment() -> Any:
    """The Jinja2 environment over ``gpt2clf/templates`` (autoescaping on)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("gpt2clf.report", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals["shade"] = shade
    env.globals["positive_rgb"] = "rgb({}, {}, {})".format(*POSITIVE_RGB)
    env.globals["negative_rgb"] = "rgb({}, {}, {})".format(*NEGATIVE_RGB)
    return env


def explanation_view(exp: Explanation, *, top_k: int = 10, heatmap: bool = True,
                     window: int | None = None) -> dict[str, Any]:
    """What the templates need for one explanation: shaded pieces, top-k bars, the heat map.

    The bars and the heat map's axis name tokens with :func:`display_token`; the shaded
    pieces are the document's own text.

    ``window``: keep only about this many characters around the strongest token (a snippet).
    """
    from gpt2clf.report import plots

    pieces = exp.display_segments()
    scale = max((abs(v) for _, v in pieces), default=0.0)
    if window is not None:
        pieces = _snippet(pieces, window)
    top = exp.top_tokens(top_k)
    top_scale = max((abs(v) for _, _, v in top), default=0.0) or 1.0
    bars = [{"token": display_token(token), "position": i, "value": value, "width": 100 * abs(value) / top_scale,
             "colour": shade(value, abs(value))} for i, token, value in top]
    image = None
    if heatmap and exp.head_weights:
        labels = [display_token(token) for token in exp.tokens]
        image = png_data_uri(plots.attention_heatmap_png(labels, exp.head_weights, exp.pooling_weights,
                                                         title=f"What each head routes to the pooled position "
                                                               f"(pooling: {exp.pooling})"))
    return {"exp": exp, "pieces": [(text, shade(value, scale), value) for text, value in pieces],
            "bars": bars, "heatmap": image, "scale": scale}


def _snippet(pieces: list[tuple[str, float]], window: int) -> list[tuple[str, float]]:
    """The pieces within about ``window`` characters around the piece of largest |attribution|."""
    if not pieces:
        return pieces
    peak = max(range(len(pieces)), key=lambda i: abs(pieces[i][1]))
    starts = [0]
    for text, _ in pieces:
        starts.append(starts[-1] + len(text))
    centre = starts[peak]
    keep = [p for p, s in zip(pieces, starts, strict=False) if centre - window // 2 <= s <= centre + window // 2]
    before = starts[0] < centre - window // 2
    after = starts[len(pieces) - 1] > centre + window // 2
    return ([("… ", 0.0)] if before else []) + keep + ([(" …", 0.0)] if after else [])


def render_html(explanations: Sequence[Explanation], *, title: str = "gpt2clf explain") -> str:
    """One self-contained HTML page for ``explanations`` (inline CSS and PNGs, no URLs).

    Example::

        >>> Path("why.html").write_text(render_html([exp]))  # doctest: +SKIP
    """
    env = template_environment()
    views = [explanation_view(exp) for exp in explanations]
    return env.get_template("explain.html.j2").render(title=title, views=views)
