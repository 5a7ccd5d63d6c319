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

import contextlib
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2clf.data import PaddingCollator, length_sorted_batches, load_tokenizer, tokenize_texts
from gpt2clf.errors import ConfigError, ModelLoadError
from gpt2clf.model import GPT2Classifier


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast for ``*-mixed`` precisions, a no-op for full precision."""
    if precision.startswith("bf16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def inference_context(model: torch.nn.Module, device: torch.device, precision: str) -> Iterator[None]:
    """Eval mode (restored afterwards), ``torch.inference_mode`` and the autocast of ``precision``."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast_context(device, precision):
            yield
    finally:
        model.train(was_training)


def batched_logits(
    model: GPT2Classifier,
    token_lists: Sequence[list[int]],
    *,
    batch_size: int,
    pad_token_id: int,
    padding_side: str = "right",
    device: torch.device | str = "cpu",
    precision: str = "32-true",
) -> torch.Tensor:
    """Float32 logits (N, num_labels) for tokenized documents, returned in input order.

    Batches are formed from length-sorted documents; padding and batch neighbours do not
    change a document's logits (the model masks padding), only the speed.
    """
    device = torch.device(device)
    collate = PaddingCollator(pad_token_id, padding_side)
    out = torch.empty(len(token_lists), model.spec.num_labels, dtype=torch.float32)
    with inference_context(model, device, precision):
        for batch_indices in length_sorted_batches([len(t) for t in token_lists], batch_size):
            batch = collate([{"input_ids": token_lists[i], "index": i} for i in batch_indices])
            logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out[batch["index"]] = logits.float().cpu()
    return out


@dataclass
class Prediction:
    """One document's prediction: the top label and its class probabilities."""

    label: str
    probabilities: dict[str, float]
    top_k: list[tuple[str, float]]

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "probabilities": self.probabilities,
                "top_k": [{"label": name, "probability": p} for name, p in self.top_k]}


def read_training_config(folder: str | Path) -> dict:
    """The training :class:`~gpt2clf.config.Config` (as a dict) recorded in a model folder."""
    try:
        meta = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return dict(meta.get("extra", {}).get("config", {}))


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """Classifies raw text with a saved gpt2clf model folder.

    Parameters
    ----------
    model, tokenizer:
        A :class:`GPT2Classifier` and its tokenizer (with a pad token).
    max_length:
        Tokens kept per document (the length the model was trained with).
    batch_size, device, precision:
        How inference runs; ``precision`` is ``32-true`` or a ``*-mixed`` autocast mode.
    int8:
        Run an int8 copy of the model (:func:`gpt2clf.features.quantize_for_cpu_inference`):
        CPU and ``32-true`` only; about 1.4x faster on an AVX2 CPU, probabilities move by ~0.01.
    """

    def __init__(self, model: GPT2Classifier, tokenizer, *, max_length: int = 512, batch_size: int = 32,
                 device: torch.device | str | None = None, precision: str = "32-true", int8: bool = False) -> None:
        from gpt2clf.features import quantize_for_cpu_inference, use_fused_gelu

        if device is None:
            device = "cpu" if int8 else best_device()
        self.device = torch.device(device)
        if int8 and (self.device.type != "cpu" or precision not in ("32-true", "32")):
            raise ConfigError(f"int8 inference runs on the CPU in float32 only, not on {self.device.type} "
                              f"with precision {precision}; drop --int8 or use --device cpu")
        use_fused_gelu(model)  # the same function as GPT-2's Python GELU, in one kernel
        self.model = (quantize_for_cpu_inference(model) if int8 else model).to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.precision = precision

    @classmethod
    def from_folder(cls, folder: str | Path, **kwargs) -> Predictor:
        """Load a model folder written by training (weights, tokenizer and max length)."""
        model = GPT2Classifier.from_pretrained(folder)
        training = read_training_config(folder)
        try:
            tokenizer = load_tokenizer(str(folder), padding_side=training.get("padding_side", "right"))
        except ModelLoadError as err:
            raise ModelLoadError(f"model folder {folder} has no usable tokenizer files: {err}") from err
        kwargs.setdefault("max_length", int(training.get("max_length", 512)))
        return cls(model, tokenizer, **kwargs)

    @property
    def label_names(self) -> list[str]:
        return list(self.model.spec.label_names)

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """Float32 logits (N, num_labels) for ``texts``, in input order."""
        token_lists = tokenize_texts(list(texts), self.tokenizer, self.max_length)
        return batched_logits(self.model, token_lists, batch_size=self.batch_size,
                              pad_token_id=self.tokenizer.pad_token_id,
                              padding_side=self.tokenizer.padding_side, device=self.device,
                              precision=self.precision)

    def predict_proba(self, texts: Sequence[str]) -> torch.Tensor:
        """Class probabilities (N, num_labels), rows summing to 1."""
        return torch.softmax(self.logits(texts), dim=-1)

    def predict(self, texts: Iterable[str], top_k: int = 3, chunk_size: int | None = None) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per text, streaming ``chunk_size`` texts at a time."""
        chunk_size = chunk_size or self.batch_size * 16
        names = self.label_names
        k = max(1, min(top_k, len(names)))
        iterator = iter(texts)
        while chunk := list(itertools.islice(iterator, chunk_size)):
            for row in self.predict_proba(chunk):
                values, indices = row.topk(k)
                probabilities = {name: float(p) for name, p in zip(names, row.tolist(), strict=True)}
                top = [(names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]
                yield Prediction(label=top[0][0], probabilities=probabilities, top_k=top)
