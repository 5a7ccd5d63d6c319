"""The model-folder format: what a saved gpt2clf model is on disk, written and read safely.

A model folder holds::

    config.json         {"format": "gpt2clf", "format_version": 1, "spec": {...our architecture...},
                         "backbone_name": ..., "backbone_config": {...the backbone's full config...},
                         "extra": {"config": {...training Config...}, "data_source": {...},
                                   "thresholds": {...per-label decision thresholds, multi-label only...},
                                   "label_types": {...original label types, scikit-learn estimator only...}}}
    model.safetensors   every weight, the backbone's included (tied weights stored once)
    tokenizer files     whatever the tokenizer's save_pretrained writes
    (optional parts that other modules add, e.g. fusion/ for a TF-IDF model)

Guarantees: a folder is written into a temporary folder and renamed into place whole
(:func:`gpt2clf.files.atomic_directory`); reading uses only JSON and safetensors (never
pickle) and no network; every inconsistency (missing file, truncated weights, a config that
does not match the weights) raises :class:`~gpt2clf.errors.ModelLoadError` naming it.

One reader and one writer. :func:`read_model_config` is the only code that parses
``config.json`` (a test checks that no other module opens it); :class:`TrainingRecord` is the
only definition of what ``extra`` holds, and :func:`save_model` the one way a trained model is
written, by ``gpt2clf train`` (:class:`~gpt2clf.training.loop.FitResult`) and by the scikit-learn
estimator alike, so a folder has the same parts (fusion included) whoever wrote it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2clf.config import Config
from gpt2clf.errors import ModelLoadError, first_line
from gpt2clf.files import atomic_directory, atomic_write_json

if TYPE_CHECKING:  # reading and writing folders needs no torch import of its own (the ONNX runtime has none)
    from torch import Tensor, nn

FORMAT = "gpt2clf"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "TrainingRecord",
    "check_weights_match",
    "config_sha256",
    "read_model_config",
    "read_model_extra",
    "read_training_config",
    "read_training_record",
    "read_weights",
    "recorded_config",
    "save_model",
    "write_model_folder",
]


@dataclass
class TrainingRecord:
    """What a model folder records about how its model was trained (``config.json`` -> ``extra``).

    Written by :func:`save_model`, read by :func:`read_training_record`: the one definition of
    these keys. Keys this version does not know are kept in ``other`` and written back as they were.
    """

    config: dict[str, Any] = field(default_factory=dict)
    """The training :class:`~gpt2clf.config.Config` as a dict (paths absolute, precision resolved)."""
    data_source: dict[str, Any] = field(default_factory=dict)
    """Where the data came from (dataset name, files), for ``evaluate`` and reports."""
    test_metrics: dict[str, Any] | None = None
    """The test figures of the best epoch, when the run had a test split."""
    thresholds: dict[str, float] | None = None
    """Multi-label: each label's decision threshold, tuned on the validation split."""
    sklearn_classes: list[Any] | None = None
    """The scikit-learn estimator's ``classes_`` as JSON values (None for folders written by ``train``)."""
    other: dict[str, Any] = field(default_factory=dict)

    def to_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {**self.other, "config": self.config, "data_source": self.data_source,
                                 "test_metrics": self.test_metrics}
        if self.thresholds is not None:
            extra["thresholds"] = dict(self.thresholds)
        if self.sklearn_classes is not None:
            extra["sklearn"] = {"classes": list(self.sklearn_classes)}
        return extra

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> TrainingRecord:
        def mapping(value: Any) -> dict[str, Any] | None:
            return dict(value) if isinstance(value, dict) else None

        known = ("config", "data_source", "test_metrics", "thresholds", "sklearn")
        sklearn = mapping(extra.get("sklearn")) or {}
        classes = sklearn.get("classes")
        return cls(config=mapping(extra.get("config")) or {}, data_source=mapping(extra.get("data_source")) or {},
                   test_metrics=mapping(extra.get("test_metrics")), thresholds=mapping(extra.get("thresholds")),
                   sklearn_classes=list(classes) if isinstance(classes, list) else None,
                   other={k: v for k, v in extra.items() if k not in known})


def save_model(folder: str | Path, model: Any, tokenizer: Any, record: TrainingRecord, *,
               fusion: Any = None) -> None:
    """Write a trained model's folder atomically: weights, tokenizer, ``config.json`` with ``record``,
    and ``fusion/`` when the model has a TF-IDF part.

    ``model`` is a :class:`~gpt2clf.model.classifier.GPT2Classifier` (its ``save_pretrained`` lays out the
    architecture and weights); ``fusion`` a :class:`~gpt2clf.model.fusion.Fusion` (it writes its own part).
    """
    model.save_pretrained(folder, tokenizer=tokenizer, extra=record.to_extra(),
                          write_more=fusion.save if fusion is not None else None)


def write_model_folder(folder: str | Path, *, spec: dict[str, Any], backbone_name: str | None,
                       backbone_config: dict[str, Any], state_dict: dict[str, Tensor], tokenizer: Any = None,
                       extra: dict[str, Any] | None = None,
                       write_more: Callable[[Path], None] | None = None) -> None:
    """Write a complete model folder atomically (an existing one is replaced whole).

    ``extra`` (JSON-able) is stored as is, e.g. training metadata; ``write_more(tmp)`` may add
    files of its own to the folder before it is renamed into place.
    """
    from safetensors.torch import save_file

    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": spec,
        "backbone_name": backbone_name,
        "backbone_config": backbone_config,
        "extra": extra or {},
    }
    json.dumps(config)  # fail before writing anything if ``extra`` is not JSON-able
    with atomic_directory(Path(folder)) as tmp:
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        save_file(_tensors_for_saving(state_dict), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if write_more is not None:
            write_more(tmp)
        atomic_write_json(tmp / CONFIG_NAME, config)  # last: ours wins over any tokenizer file


def read_model_config(folder: str | Path) -> dict[str, Any]:
    """The validated ``config.json`` of a model folder.

    Raises:
        ModelLoadError: no folder, no or unreadable config.json, not a gpt2clf config, a newer
            format version, or a missing ``spec`` / ``backbone_config``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"model folder not found: {folder}; pass a folder made by save_pretrained")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing: {folder} has no config.json, so it is not a model folder "
                             "written by gpt2clf")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path} is not valid JSON ({first_line(err)}); save the model again") from err
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
    for key in ("spec", "backbone_config"):
        if not isinstance(config.get(key), dict):
            raise ModelLoadError(f"{path} lacks a valid {key!r} entry; save the model again")
    return config


def read_training_record(folder: str | Path) -> TrainingRecord:
    """The :class:`TrainingRecord` of a model folder (empty fields when it records none).

    Raises:
        ModelLoadError: as :func:`read_model_config`.
    """
    extra = read_model_config(folder).get("extra")
    return TrainingRecord.from_extra(extra if isinstance(extra, dict) else {})


def read_model_extra(folder: str | Path) -> dict[str, Any]:
    """The ``extra`` metadata of a model folder's ``config.json`` as a dict (see :class:`TrainingRecord`)."""
    return read_training_record(folder).to_extra()


def read_training_config(folder: str | Path) -> dict[str, Any]:
    """The training :class:`~gpt2clf.config.Config` (as a dict) recorded in a model folder; {} if none."""
    return dict(read_training_record(folder).config)


def recorded_config(folder: str | Path) -> Config:
    """The training :class:`~gpt2clf.config.Config` recorded in a model folder (keys this version knows)."""
    known = {f.name for f in dataclasses.fields(Config)}
    saved = read_training_config(folder)
    return Config().updated(**{k: v for k, v in saved.items() if k in known})


def config_sha256(folder: str | Path) -> str:
    """SHA-256 of a model folder's ``config.json`` bytes ("" without one): what an exported file was made from."""
    path = Path(folder) / CONFIG_NAME
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def read_weights(folder: str | Path) -> dict[str, Tensor]:
    """Every tensor of ``model.safetensors`` (never unpickles anything).

    Raises:
        ModelLoadError: the file is missing, truncated or corrupted.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; the folder is incomplete: save the model again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelLoadError(f"{path} is truncated or corrupted ({first_line(err)}); "
                             "save or download it again") from err


def check_weights_match(model: nn.Module, tensors: dict[str, Tensor], path: Path) -> None:
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
