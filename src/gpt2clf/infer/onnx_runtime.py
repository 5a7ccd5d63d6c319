"""Prediction through ONNX Runtime: a model exported by ``gpt2clf export --format onnx``.

Data flow for a list of texts::

    texts -> the model folder's tokenizer (same tokenization and truncation as Predictor)
          -> length-sorted batches, padded with numpy (int64 input_ids, attention_mask)
          -> onnxruntime.InferenceSession (CPUExecutionProvider)        logits (B, num_labels)
          -> back in input order -> softmax in float64 -> float32 probabilities

Guarantees:

* the same tokenization as :class:`gpt2clf.infer.predictor.Predictor` (the model folder's own
  tokenizer, padding side and ``max_length``); the ONNX file records the labels, length,
  padding side and pad token in its ``metadata_props`` so a runtime without PyTorch can
  use it too (keys ``gpt2clf.*``, see :func:`read_onnx_metadata`);
* the ONNX file belongs to its model folder: the SHA-256 of the folder's ``config.json`` and
  tokenizer files are recorded at export and checked at load, so a stale export (the folder
  was retrained since) is refused instead of giving silently different answers;
* outputs have the :class:`Predictor` interface: :meth:`OnnxPredictor.predict` yields the
  same :class:`~gpt2clf.infer.predictor.Prediction` objects; ``logits``/``predict_proba`` return
  numpy arrays (Predictor returns torch tensors);
* model folders whose recorded config asks for inference this graph does not compute
  (long-document chunking, TF-IDF fusion) are refused with a message, never approximated.

Nothing here imports PyTorch directly: the ONNX arithmetic is numpy plus onnxruntime. (The
tokenizer helpers come from :mod:`gpt2clf.data.batching`, which does import it.)

Example::

    >>> predictor = OnnxPredictor.from_folder("runs/20ng/model")  # doctest: +SKIP
    >>> [p.label for p in predictor.predict(["My X server crashes"])]  # doctest: +SKIP
    ['comp.windows.x']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt2clf.config import InferenceSettings, check_batch_size
from gpt2clf.errors import ConfigError, ModelLoadError, UserError
from gpt2clf.model.folder import config_sha256, read_training_config

if TYPE_CHECKING:
    from gpt2clf.infer.runtime import Progress

__all__ = [
    "DEFAULT_ONNX_NAME", "INPUT_NAMES", "OUTPUT_NAME", "OnnxMetadata", "OnnxPredictor", "folder_fingerprints",
    "import_onnxruntime", "pad_batch", "read_onnx_metadata", "softmax", "unsupported_reason"
]

ONNX_FORMAT = "gpt2clf-onnx"
ONNX_FORMAT_VERSION = 1
DEFAULT_ONNX_NAME = "model.onnx"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
METADATA_PREFIX = "gpt2clf."
ONNXRUNTIME_MISSING = '--runtime onnx needs onnxruntime: pip install "gpt2clf[onnx]"'
# Tokenizer files whose content defines the token ids (hashed at export, checked at load).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


# ------------------------------------------------------------------------------------------
# Model folder checks shared with gpt2clf.infer.export
# ------------------------------------------------------------------------------------------


def unsupported_reason(config: dict[str, Any]) -> str | None:
    """Why the ONNX path cannot reproduce this model's predictions, or None when it can.

    The exported graph computes one window of at most ``max_length`` tokens per document
    (truncation). Long-document chunking and TF-IDF fusion happen outside that graph in
    :class:`~gpt2clf.infer.predictor.Predictor`; they are refused here rather than approximated.

    Example::

        >>> unsupported_reason({"long_documents": "truncate", "fusion": "none"}) is None
        True
        >>> unsupported_reason({"fusion": "tfidf"}).startswith("the model fuses")
        True
    """
    long_documents = config.get("long_documents", "truncate")
    if long_documents not in (None, "truncate"):
        return (f"the model reads long documents as several windows (long_documents={long_documents!r}); "
                "the ONNX export computes one truncated window per document, so it would predict differently: "
                "use --runtime torch, or retrain with long_documents=truncate")
    fusion = config.get("fusion", "none")
    if fusion not in (None, "none"):
        return (f"the model fuses its probabilities with a TF-IDF linear model (fusion={fusion!r}), which the ONNX "
                "export does not contain yet: use --runtime torch")
    return None


def folder_fingerprints(model_dir: str | Path) -> dict[str, str]:
    """SHA-256 of the model folder's ``config.json`` and of its tokenizer files, concatenated in order."""
    folder = Path(model_dir)
    tokenizer = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            tokenizer.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {
        "config_sha256": config_sha256(folder),
        "tokenizer_sha256": tokenizer.hexdigest(),
    }


# ------------------------------------------------------------------------------------------
# Metadata stored in the ONNX file
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnnxMetadata:
    """What a runtime needs besides the graph, stored as ``gpt2clf.*`` metadata_props strings."""

    label_names: list[str]
    max_length: int
    padding_side: str
    pad_token_id: int
    config_sha256: str = ""
    tokenizer_sha256: str = ""
    format: str = ONNX_FORMAT
    format_version: int = ONNX_FORMAT_VERSION

    def to_props(self) -> dict[str, str]:
        """String key/values for ``ModelProto.metadata_props`` (lists as JSON)."""
        return {
            f"{METADATA_PREFIX}format": self.format,
            f"{METADATA_PREFIX}format_version": str(self.format_version),
            f"{METADATA_PREFIX}label_names": json.dumps(self.label_names),
            f"{METADATA_PREFIX}max_length": str(self.max_length),
            f"{METADATA_PREFIX}padding_side": self.padding_side,
            f"{METADATA_PREFIX}pad_token_id": str(self.pad_token_id),
            f"{METADATA_PREFIX}inputs": json.dumps(list(INPUT_NAMES)),
            f"{METADATA_PREFIX}output": OUTPUT_NAME,
            f"{METADATA_PREFIX}config_sha256": self.config_sha256,
            f"{METADATA_PREFIX}tokenizer_sha256": self.tokenizer_sha256,
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str | Path) -> OnnxMetadata:
        """Parse :meth:`to_props` output; :class:`ModelLoadError` naming ``source`` when it is not ours."""
        def get(key: str) -> str:
            value = props.get(METADATA_PREFIX + key)
            if value is None:
                raise ModelLoadError(f"{source} has no {METADATA_PREFIX}{key} metadata: it was not written by "
                                     "'gpt2clf export'; export the model folder again")
            return value

        if get("format") != ONNX_FORMAT:
            raise ModelLoadError(f"{source} is not a gpt2clf ONNX export (format {get('format')!r})")
        try:
            version = int(get("format_version"))
            meta = cls(label_names=[str(n) for n in json.loads(get("label_names"))],
                       max_length=int(get("max_length")), padding_side=get("padding_side"),
                       pad_token_id=int(get("pad_token_id")),
                       config_sha256=props.get(f"{METADATA_PREFIX}config_sha256", ""),
                       tokenizer_sha256=props.get(f"{METADATA_PREFIX}tokenizer_sha256", ""),
                       format_version=version)
        except (ValueError, TypeError) as err:
            raise ModelLoadError(f"{source} has malformed gpt2clf metadata ({err}); export it again") from err
        if version > ONNX_FORMAT_VERSION:
            raise ModelLoadError(f"{source} has gpt2clf ONNX format_version {version}; this gpt2clf reads up to "
                                 f"{ONNX_FORMAT_VERSION}: upgrade it")
        if meta.padding_side not in ("left", "right"):
            raise ModelLoadError(f"{source} has padding_side {meta.padding_side!r}; expected left or right")
        return meta


def read_onnx_metadata(onnx_path: str | Path) -> OnnxMetadata:
    """The gpt2clf metadata of an exported file, read with ``onnx`` (weights are not loaded).

    Example::

        >>> read_onnx_metadata("runs/20ng/model/model.onnx").label_names[:2]  # doctest: +SKIP
        ['alt.atheism', 'comp.graphics']
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return OnnxMetadata.from_props({p.key: p.value for p in model.metadata_props}, onnx_path)


# ------------------------------------------------------------------------------------------
# numpy helpers
# ------------------------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, returned as float32 (rows sum to 1)."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


def pad_batch(token_lists: Sequence[Sequence[int]], pad_token_id: int,
              padding_side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """int64 ``input_ids`` and ``attention_mask`` (B, longest), padded on ``padding_side``.

    Example::

        >>> ids, mask = pad_batch([[5, 6, 7], [8]], pad_token_id=0, padding_side="left")
        >>> ids.tolist(), mask.tolist()
        ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    longest = max(len(t) for t in token_lists)
    ids = np.full((len(token_lists), longest), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(token_lists), longest), dtype=np.int64)
    for row, tokens in enumerate(token_lists):
        span = slice(longest - len(tokens), longest) if padding_side == "left" else slice(0, len(tokens))
        ids[row, span] = tokens
        mask[row, span] = 1
    return ids, mask


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a :class:`UserError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise UserError(ONNXRUNTIME_MISSING) from err
    return onnxruntime


def _tokenization() -> tuple[Any, Any]:
    """(load_tokenizer, tokenize_texts): the one place this module touches gpt2clf's data helpers."""
    from gpt2clf.data.batching import load_tokenizer, tokenize_texts

    return load_tokenizer, tokenize_texts


# ------------------------------------------------------------------------------------------
# The predictor
# ------------------------------------------------------------------------------------------
class OnnxPredictor:
    """Classifies raw text with an exported ONNX model, on the CPU through ONNX Runtime.

    Same interface as :class:`gpt2clf.infer.predictor.Predictor` (``label_names``, ``logits``,
    ``predict_proba``, ``predict``), with numpy arrays where Predictor returns tensors.

    Parameters
    ----------
    session:
        An ``onnxruntime.InferenceSession`` over a file written by ``gpt2clf export``.
    tokenizer:
        The model folder's tokenizer (a pad token, the recorded padding side).
    metadata:
        The file's :class:`OnnxMetadata` (labels, ``max_length``, padding).
    batch_size:
        Documents per ``session.run``.

    Example::

        >>> predictor = OnnxPredictor.from_folder("runs/20ng/model", batch_size=16)  # doctest: +SKIP
        >>> predictor.predict_proba(["GPU drivers for X11?"]).shape  # doctest: +SKIP
        (1, 20)
    """

    def __init__(self, session: Any, tokenizer: Any, metadata: OnnxMetadata, *,
                 batch_size: int = InferenceSettings.batch_size) -> None:
        check_batch_size(batch_size)
        self.session = session
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.max_length = metadata.max_length
        self.batch_size = batch_size

    @classmethod
    def from_folder(cls, model_dir: str | Path, onnx_path: str | Path | None = None, *,
                    batch_size: int = InferenceSettings.batch_size, num_threads: int | None = None,
                    device: str = "cpu", int8: bool = False) -> OnnxPredictor:
        """Load ``onnx_path`` (default ``MODEL_DIR/model.onnx``) with the tokenizer of ``model_dir``.

        Raises :class:`UserError` subclasses, one line each: onnxruntime missing, a ``device`` other
        than the CPU (or auto), ``int8`` (which quantizes the torch model), no such file, a file that is
        not a gpt2clf export, an export of another model folder, or a model folder whose predictions
        this graph does not reproduce.
        """
        ort = import_onnxruntime()  # first: without it, say how to install it whatever else is wrong
        if int8:
            raise UserError("--int8 quantizes the torch model; with --runtime onnx drop it")
        if device not in ("auto", "cpu"):
            raise UserError(f"--runtime onnx runs on the CPU; drop --device {device}")
        folder = Path(model_dir)
        if not folder.is_dir():
            raise ModelLoadError(f"model folder not found: {folder}")
        reason = unsupported_reason(read_training_config(folder))
        if reason:
            raise ConfigError(f"cannot run {folder} through ONNX: {reason}")
        path = Path(onnx_path) if onnx_path is not None else folder / DEFAULT_ONNX_NAME
        if not path.is_file():
            raise ModelLoadError(f"no ONNX model at {path}; write one with: gpt2clf export {folder} --format onnx "
                                 f"--output {path}")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for unreadable files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelLoadError(f"onnxruntime cannot load {path}: {first}") from err
        metadata = OnnxMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map), path)
        _check_same_folder(metadata, folder, path)
        _check_signature(session, len(metadata.label_names), path)
        load_tokenizer, _ = _tokenization()
        try:
            tokenizer = load_tokenizer(str(folder), padding_side=metadata.padding_side)
        except ModelLoadError as err:
            raise ModelLoadError(f"model folder {folder} has no usable tokenizer files: {err}") from err
        return cls(session, tokenizer, metadata, batch_size=batch_size)

    @property
    def label_names(self) -> list[str]:
        return list(self.metadata.label_names)

    def logits(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """Float32 logits (N, num_labels) for ``texts``, in input order."""
        _, tokenize_texts = _tokenization()
        token_lists = tokenize_texts(list(texts), self.tokenizer, self.max_length)
        return self.logits_from_tokens(token_lists, progress)

    def logits_from_tokens(self, token_lists: Sequence[Sequence[int]], progress: Progress | None = None
                           ) -> np.ndarray:
        """Float32 logits for already tokenized documents; batches of similar length, input order kept.

        ``progress(done, N)`` is called with 0 first and after each batch, as PyTorch's loop does.
        """
        out = np.empty((len(token_lists), len(self.metadata.label_names)), dtype=np.float32)
        order = sorted(range(len(token_lists)), key=lambda i: -len(token_lists[i]))  # longest first, stable
        if progress is not None:
            progress(0, len(order))
        for start in range(0, len(order), self.batch_size):
            indices = order[start:start + self.batch_size]
            ids, mask = pad_batch([token_lists[i] for i in indices], self.metadata.pad_token_id,
                                  self.metadata.padding_side)
            (logits,) = self.session.run([OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})
            out[indices] = logits
            if progress is not None:
                progress(start + len(indices), len(order))
        return out

    def predict_proba(self, texts: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """Class probabilities (N, num_labels), float32 rows summing to 1."""
        return softmax(self.logits(texts, progress))

    def predict(self, texts: Iterable[str], top_k: int = 3, chunk_size: int | None = None,
                progress: Progress | None = None) -> Iterator[Any]:
        """Yield one :class:`~gpt2clf.infer.predictor.Prediction` per text, ``chunk_size`` texts at a time;
        ``progress(done, None)`` after each batch, as :meth:`gpt2clf.infer.predictor.Predictor.predict` does."""
        from gpt2clf.infer.predictor import stream_predictions

        yield from stream_predictions(self.predict_proba, texts, self.label_names, top_k=top_k,
                                      chunk_size=chunk_size or self.batch_size * 16, progress=progress)


def _check_same_folder(metadata: OnnxMetadata, folder: Path, path: Path) -> None:
    current = folder_fingerprints(folder)
    if metadata.config_sha256 and metadata.config_sha256 != current["config_sha256"]:
        raise ModelLoadError(f"{path} was exported from another model (its config.json differs from {folder}'s, "
                             f"e.g. retrained since): export again with gpt2clf export {folder} --format onnx")
    if metadata.tokenizer_sha256 and metadata.tokenizer_sha256 != current["tokenizer_sha256"]:
        raise ModelLoadError(f"{path} was exported with another tokenizer than the one in {folder}; "
                             f"export again with gpt2clf export {folder} --format onnx")


def _check_signature(session: Any, num_labels: int, path: Path) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    for name in INPUT_NAMES:
        if name not in inputs or inputs[name].type != "tensor(int64)":
            raise ModelLoadError(f"{path} lacks the int64 input {name!r}; export it again")
    if OUTPUT_NAME not in outputs:
        raise ModelLoadError(f"{path} lacks the output {OUTPUT_NAME!r}; export it again")
    width = outputs[OUTPUT_NAME].shape[-1] if outputs[OUTPUT_NAME].shape else None
    if isinstance(width, int) and width != num_labels:
        raise ModelLoadError(f"{path} outputs {width} logits but its metadata names {num_labels} labels")
