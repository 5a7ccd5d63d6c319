"""Export a model folder to ONNX, checked against PyTorch before it is kept.

Data flow of :func:`export_onnx`::

    MODEL_DIR (config.json, model.safetensors, tokenizer)
      -> GPT2Classifier.from_pretrained (float32, SDPA attention), wrapped in _ExportWrapper
      -> torch.onnx.export(dynamo=True): torch.export graph capture, dynamic dims "batch", "seq"
      -> gpt2clf.* metadata_props (labels, max_length, padding side, pad id, folder hashes)
      -> a temporary file beside OUTPUT
      -> parity: onnxruntime vs Predictor (torch, CPU, fp32) on sample texts of different
         lengths, once all padded into one batch and once in batches of two
      -> max |Δprobability| <= tolerance (1e-3): renamed into place; else deleted and refused

Guarantees: OUTPUT is written atomically (rename of a complete, checked file) or not at all;
its inputs are ``input_ids`` and ``attention_mask`` (int64, [batch, seq]), its output is
``logits`` (float32, [batch, num_labels]), batch and seq are symbolic dims; the reported
parity figure is measured on the very file that is kept.

Why the dynamo exporter and a wrapper: ``GPT2Classifier.classify_hidden_states`` skips the
key mask when a batch has no padding (``bool(mask.all())``), a data-dependent branch that
``torch.export`` cannot capture. The legacy TorchScript exporter (``dynamo=False``, still
present in torch 2.13 but deprecated) traces through it, but writes the blocks' boolean
``torch.eye`` as ``EyeLike(bool)``, which ONNX Runtime has no kernel for. ``_ExportWrapper``
therefore runs the same modules with the mask always applied (identical results: an
all-ones mask masks nothing), and the dynamo exporter captures that. Its native opset is 18;
it cannot convert our graph down to 17, so opsets below 18 are refused rather than silently
written as 18.

Example::

    >>> report = export_onnx("runs/20ng/model", "runs/20ng/model/model.onnx")  # doctest: +SKIP
    >>> report.max_abs_probability_diff < 1e-3  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2clf.errors import ConfigError, ModelLoadError, UserError
from gpt2clf.infer.onnx_runtime import (
    DEFAULT_ONNX_NAME,
    INPUT_NAMES,
    OUTPUT_NAME,
    OnnxMetadata,
    folder_fingerprints,
    import_onnxruntime,
    pad_batch,
    softmax,
    unsupported_reason,
)
from gpt2clf.model.folder import read_training_config

__all__ = ["EXPORT_FORMATS", "ExportError", "ExportReport", "check_export_dependencies", "export_onnx"]

EXPORT_FORMATS = ("onnx",)
DEFAULT_OPSET = 18
MIN_OPSET = 18
DEFAULT_TOLERANCE = 1e-3
EXPORT_DEPENDENCIES_MISSING = 'export --format onnx needs onnx, onnxscript and onnxruntime: pip install "gpt2clf[onnx]"'
# Fixed parity texts: different lengths (a few tokens to several hundred, so max_length
# truncates some), punctuation, digits, non-ASCII and an empty string.
SAMPLE_TEXTS = (
    "Hi.",
    "My X server crashes whenever I resize an xterm window; any ideas?",
    "The team scored twice in the last ten minutes and won the league 2-1.",
    "",
    "Bake the bread at 220 °C for 25 minutes, then let it cool on a rack before slicing. " * 3,
    "Re: GPU drivers. " + "I upgraded the kernel and now the card is not detected at boot. " * 20,
    "Ünïcödé, emoji 🙂 and CJK 漢字 in one line.",
)


class ExportError(UserError):
    """A model that cannot be exported, or whose export does not reproduce PyTorch's output."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how closely it matches PyTorch."""

    output: str
    format: str
    opset: int
    label_names: list[str]
    max_length: int
    padding_side: str
    texts_checked: int
    max_abs_probability_diff: float
    tolerance: float
    batch_shapes_checked: list[list[int]]
    seconds: float
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for the command line."""
        shape = f"ONNX opset {self.opset}, {len(self.label_names)} labels, {self.bytes / 1e6:.1f} MB"
        shapes = ", ".join("x".join(map(str, s)) for s in self.batch_shapes_checked)
        return (f"wrote {self.output} ({shape}, {self.seconds:.1f} s); parity with torch on {self.texts_checked} "
                f"texts, batch shapes {shapes}: max |Δprobability| "
                f"{self.max_abs_probability_diff:.2e} (limit {self.tolerance:g})")


def check_export_dependencies() -> None:
    """Raise :class:`UserError` naming the extra to install when onnx, onnxscript or onnxruntime is missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise UserError(EXPORT_DEPENDENCIES_MISSING) from err
    try:
        import_onnxruntime()
    except UserError as err:
        raise UserError(EXPORT_DEPENDENCIES_MISSING) from err


def export_onnx(model_dir: str | Path, output: str | Path | None = None, *, opset: int = DEFAULT_OPSET,
                check_texts: Sequence[str] = (), tolerance: float = DEFAULT_TOLERANCE) -> ExportReport:
    """Export ``model_dir`` to an ONNX file at ``output`` (default ``MODEL_DIR/model.onnx``).

    ``check_texts`` are checked for parity in addition to :data:`SAMPLE_TEXTS`. Raises
    :class:`ExportError` (one line) when the model cannot be exported or its ONNX
    probabilities differ from PyTorch's by more than ``tolerance``; ``output`` is then left
    as it was.

    Example::

        >>> report = export_onnx("runs/reviews/model", check_texts=["great value"])  # doctest: +SKIP
        >>> print(report.summary())  # doctest: +SKIP
        wrote runs/reviews/model/model.onnx (ONNX opset 18, 5 labels, ...): max |Δprobability| 4.5e-08 ...
    """
    started = time.perf_counter()
    folder = Path(model_dir)
    output = Path(output) if output is not None else folder / DEFAULT_ONNX_NAME
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ConfigError(f"--opset must be {MIN_OPSET} or more, got {opset}: torch's ONNX exporter writes opset "
                          f"{MIN_OPSET}+ (ONNX Runtime 1.14 and newer read it)")
    if not tolerance >= 0:
        raise ConfigError(f"tolerance must be 0 or more, got {tolerance}")
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; give a file name such as {output / DEFAULT_ONNX_NAME}")
    check_export_dependencies()
    if not folder.is_dir():
        raise ModelLoadError(f"model folder not found: {folder}; pass a folder written by 'gpt2clf train'")
    reason = unsupported_reason(read_training_config(folder))
    if reason:
        raise ExportError(f"cannot export {folder} to ONNX: {reason}")

    from gpt2clf.infer.predictor import Predictor
    from gpt2clf.model.classifier import GPT2Classifier

    # The reference is exactly what `gpt2clf predict` computes on the CPU in float32.
    reference = Predictor.from_folder(folder, device="cpu", precision="32-true")
    tokenizer = reference.tokenizer
    model = GPT2Classifier.from_pretrained(folder).eval()
    texts = [*SAMPLE_TEXTS, *check_texts]
    _, tokenize_texts = _tokenizer_helpers()
    token_lists = tokenize_texts(texts, tokenizer, reference.max_length)
    metadata = OnnxMetadata(label_names=list(model.spec.label_names), max_length=reference.max_length,
                            padding_side=tokenizer.padding_side, pad_token_id=int(tokenizer.pad_token_id),
                            **folder_fingerprints(folder))

    output.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"))
    try:
        staged = workdir / output.name
        _export_graph(model, token_lists, metadata, staged, opset)
        written_opset = _check_graph(staged, len(metadata.label_names))
        expected = reference.predict_proba(texts).float().numpy()
        diff, shapes = _parity(staged, token_lists, metadata, expected)
        if not diff <= tolerance:
            raise ExportError(f"the ONNX export of {folder} does not match PyTorch: max |Δprobability| {diff:.2e} "
                              f"> {tolerance:g} on {len(texts)} texts; nothing was written to {output}")
        size = sum(p.stat().st_size for p in workdir.iterdir())
        _move_into_place(workdir, output)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return ExportReport(output=str(output), format="onnx", opset=written_opset, label_names=metadata.label_names,
                        max_length=metadata.max_length, padding_side=metadata.padding_side, texts_checked=len(texts),
                        max_abs_probability_diff=diff, tolerance=tolerance, batch_shapes_checked=shapes,
                        seconds=time.perf_counter() - started, bytes=size)


# ------------------------------------------------------------------------------------------
# steps
# ------------------------------------------------------------------------------------------
def _tokenizer_helpers() -> tuple[Any, Any]:
    from gpt2clf.infer.onnx_runtime import _tokenization

    return _tokenization()


def _export_wrapper(model: Any) -> Any:
    """``model`` behind a forward that always applies the key mask (see the module docstring)."""
    from torch import nn

    from gpt2clf.model.classifier import pool_last_token, pool_mean

    class _ExportWrapper(nn.Module):
        """GPT2Classifier.forward without its data-dependent "no padding: no mask" shortcut."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            m = self.inner
            hidden = m.backbone_hidden_states(input_ids, attention_mask)
            mask = attention_mask.bool()
            x = hidden.to(m.ln_f.weight.dtype).masked_fill(~mask.unsqueeze(-1), 0.0)
            x = m.input_projection(x)
            for block in m.blocks:
                x = block(x, mask)
            x = m.ln_f(x)
            if m.pooler is not None:
                pooled = m.pooler(x, mask)
            elif m.spec.pooling == "mean":
                pooled = pool_mean(x, mask)
            else:
                pooled = pool_last_token(x, mask)
            return m.head(pooled)

    return _ExportWrapper(model).eval()


def _example_inputs(token_lists: Sequence[Sequence[int]], metadata: OnnxMetadata) -> tuple[Any, Any]:
    """A padded batch of three sample documents: batch != seq and both >= 2, so no dim is specialised."""
    import torch

    rows = [list(t) for t in token_lists[:3]]
    while max(len(r) for r in rows) < 2:  # max_length 1: pad a row to length 2 with real tokens
        rows[0] = rows[0] * 2
    ids, mask = pad_batch(rows, metadata.pad_token_id, metadata.padding_side)
    if ids.shape[1] == ids.shape[0]:
        rows.append(rows[0])
        ids, mask = pad_batch(rows, metadata.pad_token_id, metadata.padding_side)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _export_graph(model: Any, token_lists: Sequence[Sequence[int]], metadata: OnnxMetadata, path: Path,
                  opset: int) -> None:
    import torch

    wrapper = _export_wrapper(model)
    example = _example_inputs(token_lists, metadata)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dims = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    quiet = io.StringIO()
    torch_onnx_log = logging.getLogger("torch.onnx")
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapper, example, None, input_names=list(INPUT_NAMES),
                                        output_names=[OUTPUT_NAME], opset_version=opset, dynamo=True,
                                        dynamic_shapes=dims, verbose=False)
    except Exception as err:
        raise ExportError(f"torch.onnx could not export this model: {_first_line(err)} (run with --debug for the "
                          "traceback)") from err
    finally:
        torch_onnx_log.setLevel(level)
    program.model.metadata_props.update(metadata.to_props())
    # Protobuf files stop at 2 GB: larger models keep their weights in OUTPUT.data beside it.
    program.save(str(path), external_data=size > 1_800_000_000)


def _check_graph(path: Path, num_labels: int) -> int:
    """The file's default-domain opset, after checking names, dtypes and symbolic dims."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    problems = []
    for name in INPUT_NAMES:
        kind = inputs.get(name)
        if kind is None or kind.elem_type != onnx.TensorProto.INT64 or not all(d.dim_param for d in kind.shape.dim):
            problems.append(f"input {name} is not int64 [batch, seq] with symbolic dims")
    out = outputs.get(OUTPUT_NAME)
    if (out is None or out.elem_type != onnx.TensorProto.FLOAT or len(out.shape.dim) != 2
            or not out.shape.dim[0].dim_param or out.shape.dim[1].dim_value not in (0, num_labels)):
        problems.append(f"output {OUTPUT_NAME} is not float32 [batch, {num_labels}]")
    if problems:
        raise ExportError(f"the exported graph has the wrong signature: {'; '.join(problems)}")
    return opset


def _parity(path: Path, token_lists: Sequence[Sequence[int]], metadata: OnnxMetadata,
            expected: np.ndarray) -> tuple[float, list[list[int]]]:
    """Max |Δprobability| of the ONNX file against ``expected``: one padded batch, then pairs."""
    ort = import_onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    shapes: list[list[int]] = []
    groupings = [list(range(len(token_lists))), *[[i, i + 1] for i in range(0, len(token_lists) - 1, 2)]]
    for group in groupings:
        ids, mask = pad_batch([token_lists[i] for i in group], metadata.pad_token_id, metadata.padding_side)
        (logits,) = session.run([OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})
        worst = max(worst, float(np.abs(softmax(logits) - expected[group]).max()))
        if list(ids.shape) not in shapes:
            shapes.append(list(ids.shape))
    return worst, shapes


def _move_into_place(workdir: Path, output: Path) -> None:
    """Rename the staged files beside ``output``: external data first, the .onnx file last."""
    staged = workdir / output.name
    for extra in workdir.iterdir():
        if extra != staged:
            os.replace(extra, output.parent / extra.name)
    os.replace(staged, output)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
