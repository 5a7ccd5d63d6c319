"""Inference: logits and probabilities for new text, batched by length, in input order.

Documents are sorted by token length inside each chunk so a batch pads little, run under
``torch.inference_mode``, and put back in the order they came in. Large inputs stream:
:meth:`Predictor.predict` consumes any iterable of texts a chunk at a time.

Example::

    >>> predictor = Predictor.from_folder("runs/20ng/model")      # doctest: +SKIP
    >>> for p in predictor.predict(["GPU drivers for X11?"], top_k=3):  # doctest: +SKIP
    ...     print(p.label, p.top_k)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2clf.config import InferenceSettings, check_batch_size
from gpt2clf.data.batching import PaddingCollator, TokenizedDataset, Windowing, encode_documents, load_tokenizer
from gpt2clf.data.json_tokenizer import load_json_tokenizer
from gpt2clf.errors import ConfigError, ModelLoadError
from gpt2clf.infer.runtime import (
    DEFAULT_BATCH_TOKENS,
    Progress,
    logits_in_input_order,
    quantize_for_cpu_inference,
    resolve_device,
    resolve_precision,
)
from gpt2clf.model.backbone import use_fused_gelu
from gpt2clf.model.classifier import GPT2Classifier
from gpt2clf.model.folder import read_model_extra, read_training_config
from gpt2clf.model.fusion import Fusion

__all__ = ["Prediction", "Predictor", "batched_logits"]


def batched_logits(
    model: GPT2Classifier,
    documents: TokenizedDataset | Sequence[list[int]],
    padding: PaddingCollator,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    precision: str = "32-true",
    max_batch_tokens: int | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Float32 logits (N, num_labels) for tokenized documents, returned in input order.

    ``documents`` is a :class:`~gpt2clf.data.batching.TokenizedDataset` (the model reads a windowed
    document window by window and aggregates the windows), or plain token lists, one unwindowed document
    each. Batches are formed from length-sorted documents and padded by ``padding`` (the tokenizer's pad
    token, on its side); padding and batch neighbours do not change a document's logits (the model masks
    padding), only the speed. ``progress(done, N)`` hears of the documents done after each batch.
    """
    device = torch.device(device)
    dataset = documents if isinstance(documents, TokenizedDataset) else TokenizedDataset.from_token_lists(documents)

    def run_batch(indices: list[int]) -> torch.Tensor:
        batch = padding([dataset[i] for i in indices])
        document_index = batch.get("document_index")
        return model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                     None if document_index is None else document_index.to(device))

    return logits_in_input_order(model, dataset.lengths, run_batch, device=device,
                                 precision=precision, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                 progress=progress)


@dataclass
class Prediction:
    """One document's prediction: the top label and its class probabilities.

    For a multi-label model ``labels`` holds every label whose probability (its own sigmoid)
    reaches that label's threshold (possibly none), ``label`` the most probable one, and the
    probabilities do not sum to 1.
    """

    label: str
    probabilities: dict[str, float]
    top_k: list[tuple[str, float]]
    labels: list[str] | None = None

    def to_dict(self) -> dict[str, object]:
        values: dict[str, object] = {"label": self.label, "probabilities": self.probabilities,
                                     "top_k": [{"label": name, "probability": p} for name, p in self.top_k]}
        if self.labels is not None:
            values["labels"] = self.labels
        return values


def stream_predictions(predict_proba: Callable[..., Any], texts: Iterable[str], names: Sequence[str], *,
                       top_k: int, chunk_size: int, thresholds: Sequence[float] | None = None,
                       progress: Progress | None = None) -> Iterator[Prediction]:
    """:class:`Prediction` objects for ``texts``, ``chunk_size`` texts per ``predict_proba`` call, in order.

    ``predict_proba`` returns (N, C) probabilities (a tensor or an array); with ``thresholds``
    (multi-label) each prediction's ``labels`` are those at or above their threshold. With
    ``progress``, ``predict_proba(chunk, progress=...)`` reports each batch and
    ``progress(done, None)`` hears the documents done over the whole stream (its length is unknown).
    """
    k = max(1, min(top_k, len(names)))
    iterator = iter(texts)
    done = 0
    while chunk := list(itertools.islice(iterator, chunk_size)):
        if progress is None:
            rows = predict_proba(chunk)
        else:
            rows = predict_proba(chunk, progress=lambda n, _total, start=done: progress(start + n, None))
        done += len(chunk)
        for row in rows:
            values = [float(p) for p in row.tolist()]
            order = sorted(range(len(values)), key=lambda i: -values[i])[:k]  # sorted() is stable: ties by index
            top = [(names[i], values[i]) for i in order]
            chosen = None
            if thresholds is not None:
                chosen = [name for name, p, t in zip(names, values, thresholds, strict=True) if p >= t]
            yield Prediction(label=top[0][0], probabilities=dict(zip(names, values, strict=True)), top_k=top,
                             labels=chosen)


class Predictor:
    """Classifies raw text with a saved gpt2clf model folder.

    Parameters
    ----------
    model, tokenizer:
        A :class:`GPT2Classifier` and its tokenizer (with a pad token).
    max_length:
        Tokens kept per document (the length the model was trained with).
    batch_size, max_batch_tokens:
        At most this many documents, and padded tokens, per batch (default budget: 4,096 tokens
        on a CPU, 65,536 on a GPU; measured in BENCHMARKS.md).
    device, precision:
        Where and how inference runs: ``device`` is ``auto`` (None), ``cpu``, ``cuda`` or
        ``cuda:N``; ``precision`` is ``auto`` (bf16 autocast where the hardware has native
        bf16, else float32), ``32-true`` or a ``*-mixed`` autocast mode.
    int8:
        Run an int8 copy of the model (:func:`gpt2clf.infer.runtime.quantize_for_cpu_inference`):
        CPU and ``32-true`` only; about 1.4x faster on an AVX2 CPU, probabilities move by ~0.01.
    windowing:
        How long documents are read (truncated, head and tail, or in chunks); default: the
        first ``max_length`` tokens. A model folder records it.
    fusion:
        A TF-IDF model whose probabilities are mixed with the network's (recorded in the folder).
    multi_label, thresholds:
        A multi-label model: probabilities are per-label sigmoids, and a label is predicted when
        its probability reaches its threshold (default 0.5 each; a model folder records the
        ones tuned on the validation split).
    """

    def __init__(self, model: GPT2Classifier, tokenizer: Any, *, max_length: int = 512,
                 batch_size: int = InferenceSettings.batch_size,
                 max_batch_tokens: int | None = None, device: torch.device | str | None = None,
                 precision: str = "auto", int8: bool = False, windowing: Windowing | None = None,
                 fusion: Fusion | None = None, multi_label: bool = False,
                 thresholds: Sequence[float] | None = None) -> None:
        check_batch_size(batch_size)
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ConfigError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")
        if int8 and device is not None and str(device) not in ("cpu", "auto"):
            raise ConfigError(f"int8 inference runs on the CPU in float32 only, not on {device}; drop --int8 or "
                              "use --device cpu")
        self.device = resolve_device("cpu" if int8 else device)
        if int8:
            if precision not in ("auto", "32-true", "32"):
                raise ConfigError(f"int8 inference runs on the CPU in float32 only, not on {self.device.type} "
                                  f"with precision {precision}; drop --int8 or use --device cpu")
            precision = "32-true"
        self.precision = resolve_precision(precision, self.device)
        use_fused_gelu(model)  # the same function as GPT-2's Python GELU, in one kernel
        self.model = (quantize_for_cpu_inference(model) if int8 else model).to(self.device).eval()
        self.tokenizer = tokenizer
        self.windowing = windowing or Windowing(max_length)
        self.max_length = self.windowing.max_length
        self.fusion = fusion
        self.multi_label = multi_label
        self.thresholds = list(thresholds) if thresholds is not None else [0.5] * model.num_labels
        if len(self.thresholds) != model.num_labels:
            raise ConfigError(f"got {len(self.thresholds)} thresholds for {model.num_labels} labels")
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens or DEFAULT_BATCH_TOKENS.get(self.device.type,
                                                                             DEFAULT_BATCH_TOKENS["cpu"])

    @classmethod
    def from_folder(cls, folder: str | Path, *, fast_start: bool = True, **kwargs: Any) -> Predictor:
        """Load a model folder written by training (weights, tokenizer and max length).

        With ``fast_start`` (the default) a plain GPT-2 backbone is built by
        :mod:`gpt2clf.model.gpt2_body` and a GPT-2 tokenizer read by :mod:`gpt2clf.data.json_tokenizer`,
        which skips importing ``transformers`` (about 2 s of a one-text ``predict``) and gives
        the same token ids and probabilities; other backbones and tokenizers, or
        ``fast_start=False``, use ``transformers``' classes. Other keyword arguments are those
        of :class:`Predictor` (``device``, ``precision``, ...).
        """
        model = GPT2Classifier.from_pretrained(folder, native_backbone=fast_start)
        training = read_training_config(folder)
        padding_side = training.get("padding_side", "right")
        tokenizer = load_json_tokenizer(folder, padding_side) if fast_start else None
        try:
            tokenizer = tokenizer or load_tokenizer(str(folder), padding_side=padding_side)
        except ModelLoadError as err:
            raise ModelLoadError(f"model folder {folder} has no usable tokenizer files: {err}") from err
        kwargs.setdefault("windowing", Windowing.of(training))
        kwargs.setdefault("fusion", Fusion.load(Path(folder)))
        if training.get("multi_label"):
            kwargs.setdefault("multi_label", True)
            recorded = read_model_extra(folder).get("thresholds") or {}
            kwargs.setdefault("thresholds", [float(recorded.get(name, 0.5)) for name in model.label_names])
        return cls(model, tokenizer, **kwargs)

    @property
    def label_names(self) -> list[str]:
        return list(self.model.spec.label_names)

    def logits(self, texts: Sequence[str], progress: Progress | None = None) -> torch.Tensor:
        """The network's float32 logits (N, num_labels) for ``texts``, in input order (before any fusion).

        ``progress(done, N)`` is called after each batch (see :data:`gpt2clf.infer.runtime.Progress`).
        """
        documents = TokenizedDataset(encode_documents(list(texts), self.tokenizer, self.windowing),
                                     windowed=self.windowing.windowed)
        padding = PaddingCollator(self.tokenizer.pad_token_id, self.tokenizer.padding_side)
        return batched_logits(self.model, documents, padding, batch_size=self.batch_size, device=self.device,
                              precision=self.precision, max_batch_tokens=self.max_batch_tokens, progress=progress)

    def predict_proba(self, texts: Sequence[str], progress: Progress | None = None) -> torch.Tensor:
        """Class probabilities (N, num_labels), rows summing to 1 (fused with TF-IDF when the model has it);
        for a multi-label model each label's own probability (a sigmoid; rows need not sum to 1)."""
        return self.component_probabilities(texts, progress)["fused" if self.fusion is not None else "network"]

    def component_probabilities(self, texts: Sequence[str], progress: Progress | None = None
                                ) -> dict[str, torch.Tensor]:
        """``network`` probabilities, and with fusion also ``tfidf`` and ``fused`` ones (N, num_labels)."""
        texts = list(texts)
        if self.multi_label:
            return {"network": torch.sigmoid(self.logits(texts, progress))}
        network = torch.softmax(self.logits(texts, progress), dim=-1)
        if self.fusion is None:
            return {"network": network}
        return self.fusion.component_probabilities(network, texts)

    def predict(self, texts: Iterable[str], top_k: int = 3, chunk_size: int | None = None,
                progress: Progress | None = None) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per text, streaming ``chunk_size`` texts at a time.

        ``progress(done, None)``: documents done so far, after each batch (the stream's length is unknown).
        """
        thresholds = self.thresholds if self.multi_label else None
        yield from stream_predictions(self.predict_proba, texts, self.label_names, top_k=top_k,
                                      chunk_size=chunk_size or self.batch_size * 16, thresholds=thresholds,
                                      progress=progress)
