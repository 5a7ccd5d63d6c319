"""Before a run: what this machine can run, the resolved config, the run folder, the plan and its time estimate.

Every check here guards the library, so Python callers of :func:`gpt2clf.training.loop.train` get the
same one-line refusals as the command line (which only turns them into messages):

* :func:`check_hardware`: an accelerator, device count, strategy or precision this machine lacks;
* :func:`check_run_dir`: an output folder that already holds a run (without ``overwrite``/``resume``);
* :func:`resumed_config`: a resumed run whose config changed in anything but where it runs;
* :func:`check_fusion_data`: a validation split too small to choose the fusion weight.

:func:`resolved_config` settles what depends on the machine (precision ``auto``, absolute paths), and
:func:`checked_config` is both. :func:`set_up_run` is the one sequence that :func:`gpt2clf.training.loop.fit`
and ``--dry-run`` (:func:`plan_run`) start from: checks, seed, prepared data, model and input pipeline, as
a :class:`RunSetup`. :func:`estimate_seconds` times short passes of the real model and scales them to the
planned tokens. Nothing here trains.
"""

from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2clf.config import Config, check_float16_device
from gpt2clf.data.batching import Windowing
from gpt2clf.data.splits import SplitSets
from gpt2clf.data.text_dataset import DatasetSplits
from gpt2clf.errors import ConfigError, PerformanceWarning, UserError
from gpt2clf.infer.frozen_pass import FrozenPass
from gpt2clf.infer.runtime import autocast_context, cpu_has_native_bf16, resolve_precision
from gpt2clf.model.classifier import GPT2Classifier
from gpt2clf.model.fusion import MIN_VALIDATION_DOCUMENTS, TfidfModel
from gpt2clf.report.run_report import ERROR_STEPS, NUM_ERRORS
from gpt2clf.training.feature_cache import layers_to_compute
from gpt2clf.training.inputs import (
    InputPipeline,
    PreparedData,
    build_model,
    check_backbone,
    choose_inputs,
    compute_device,
    prepare_data,
    seed_all,
    warn_about_unread_text,
)

__all__ = [
    "RESUMABLE_FIELDS",
    "RUN_MARKER",
    "RunSetup",
    "check_fusion_data",
    "check_hardware",
    "check_run_dir",
    "checked_config",
    "describe_estimate",
    "estimate_seconds",
    "is_worker_process",
    "make_plan",
    "plan_run",
    "resolved_config",
    "resumed_config",
    "saved_run_config",
    "set_up_run",
    "warn_about_slow_settings",
]

# Fields that may change when a run is resumed: where and how it runs, not what it computes.
RESUMABLE_FIELDS = ("accelerator", "devices", "strategy", "num_nodes", "num_workers")


RUN_MARKER = "config.yaml"


def warn_about_slow_settings(config: Config) -> None:
    """bf16 autocast on a CPU without bf16 hardware emulates it: ~30x slower than float32 (BENCHMARKS.md)."""
    if config.precision.startswith("bf16") and compute_device(config).type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(PerformanceWarning(
            f"--precision {config.precision} on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated and "
            "runs many times slower than --precision 32-true (or auto)"), stacklevel=2)


def is_worker_process() -> bool:
    """True in the extra processes that Lightning's DDP launcher starts (ranks other than 0)."""
    return int(os.environ.get("LOCAL_RANK", 0)) > 0 or int(os.environ.get("NODE_RANK", 0)) > 0


def check_run_dir(run_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse to clobber an existing run unless asked to resume it or overwrite it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output {run_dir} exists and is not a folder; choose another --output")
    holds_run = (run_dir / RUN_MARKER).exists() or (run_dir / "model").exists()
    if resume:
        # config.yaml is written before anything runs; without a checkpoint (stopped before the end of its first
        # epoch, e.g. in the feature cache pass) the run restarts its training, and the cache keeps its progress.
        if not (run_dir / RUN_MARKER).is_file():
            raise UserError(f"nothing to resume in {run_dir}: no {RUN_MARKER}; start it without --resume")
    elif holds_run and not overwrite:
        raise UserError(f"output folder {run_dir} already holds a run; pass --overwrite to replace it, "
                        "--resume to continue it, or choose another --output")
    elif run_dir.is_dir() and any(run_dir.iterdir()) and not holds_run and not overwrite:
        raise UserError(f"output folder {run_dir} is not empty; pass --overwrite or choose another --output")


def make_plan(setup: RunSetup) -> dict[str, Any]:
    """A JSON-able summary of what a run will do (printed by ``--dry-run``)."""
    config, model, data = setup.config, setup.model, setup.data
    plan: dict[str, Any] = {
        "backbone": config.backbone,
        "model": {"n_embed": model.spec.n_embed, "n_heads": model.spec.n_heads, "n_blocks": config.n_blocks,
                  "pooling": config.pooling, "dropout": config.dropout, "freeze": config.freeze,
                  "train_top_layers": config.train_top_layers},
        "feature_cache": setup.inputs.cache is not None,
        "precision": config.precision,
        "parameters": model.parameter_counts(),
    }
    if data is not None:
        steps = math.ceil(len(data.train) / config.batch_size / config.accumulate_grad_batches)
        plan["data"] = {"source": data.source, "num_classes": len(data.label_names),
                        "train": len(data.train), "validation": len(data.validation), "test": len(data.test),
                        "train_tokens": int(sum(data.train.lengths)),
                        "reading": {"windows": Windowing.of(config).describe(),
                                    **{name: c.to_dict() for name, c in data.coverage.items()}}}
        plan["optimizer_steps"] = {"per_epoch": steps, "total": steps * config.epochs}
    else:
        plan["data"] = {"error": setup.data_error}
    plan["config"] = config.to_dict()
    return plan


def check_fusion_data(config: Config, data: PreparedData) -> None:
    """Refuse TF-IDF fusion before training when the validation split is too small to choose its weight."""
    if config.fusion == "tfidf" and len(data.validation) < MIN_VALIDATION_DOCUMENTS:
        raise ConfigError(f"--fusion tfidf chooses its weight on the validation split, which has "
                          f"{len(data.validation)} documents; it needs at least {MIN_VALIDATION_DOCUMENTS} (use more "
                          "data or a larger --validation-ratio, or --fusion none)")


def estimate_seconds(setup: RunSetup, *, epochs_done: int = 0) -> dict[str, Any]:
    """The run's wall time on this machine, from short measured passes and the planned tokens.

    Batches of training windows of median length run, on the run's device and precision, with the
    rows the real pass has (within :data:`REAL_BATCH_SECONDS` a call): forward and backward as a
    training step computes it (from cached backbone states when the run uses a feature cache),
    forward alone as evaluation computes it, and the frozen part of the backbone alone (the one-off
    feature-cache pass, on the path it will take: ``cache_path``, from
    :meth:`~gpt2clf.training.feature_cache.FeatureCacheSpec.frozen_pass`; counted only for splits not cached yet).
    Seconds per token then scale to every epoch's training tokens, the validation passes (one per
    epoch and one at the end), the test pass, the feature cache and, when ``setup.report``, the
    integrated-gradients pass over the report's ten test errors; TF-IDF fusion is timed on a
    sample of the training texts. The model's weights do not change (no optimizer step) and its
    gradients are cleared afterwards. A rough figure (the checks in ACCURACY.md compare it with
    measured runs). ``epochs_done``: epochs a resumed run has finished already (not counted).
    """
    config, model, data, report = setup.config, setup.model, setup.data, setup.report
    windows = data.train.windows
    if not windows:
        return {}
    device = compute_device(config)
    lengths = sorted(len(w) for w in windows)
    cache = setup.inputs.cache
    # The path the cache pass will take (body, precision; int8 checked on the training windows as it will be).
    frozen = None if cache is None else cache.frozen_pass(model, windows)
    rates = _measured_rates(config, model, lengths[len(lengths) // 2], device, full_pass=report,
                            windows_per_document=len(windows) / len(data.train), frozen=frozen)
    tokens = {split: sum(getattr(data, split).lengths) for split in ("train", "validation", "test")}
    cache_share = {}  # per split, the share of the frozen layers the cache pass still has to run
    if cache is not None:
        cache_share = {split: layers_to_compute(model, getattr(data, split).windows, cache) / cache.frozen_layers
                       for split in tokens if tokens[split]}
    epochs = max(0, config.epochs - epochs_done)
    estimate: dict[str, Any] = {
        "training": epochs * tokens["train"] * rates["train"],
        "evaluation": ((epochs + 1) * tokens["validation"] + tokens["test"]) * rates["eval"],
        "feature_cache": sum(tokens[split] * share for split, share in cache_share.items()) * rates.get("cache", 0.0),
        "fusion": _fusion_seconds(config, data),
        "report": (NUM_ERRORS * (ERROR_STEPS + 1) * min(lengths[len(lengths) // 2], config.max_length) * rates["full"]
                   if report and len(data.test) else 0.0),
        "device": device.type,
        "precision": config.precision,
        "tokens_per_second": {name: round(1 / rate) for name, rate in rates.items() if rate > 0},
    }
    if frozen is not None:
        estimate["cache_path"] = frozen.describe()
    estimate["total"] = sum(estimate[part] for part in ESTIMATE_PARTS)
    return estimate


# The parts of an estimate that add up to its total, in the order describe_estimate names them.
ESTIMATE_PARTS = ("training", "evaluation", "feature_cache", "fusion", "report")


# Timed calls of one measured pass stop once they add up to this (at most three are timed).
TIMING_SECONDS = 1.0


def median_call_seconds(fn: Callable[[], Any], *, sync: Callable[[], Any] = lambda: None,
                        clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds one call of ``fn`` takes: the median of up to three calls, timed until they add up to
    :data:`TIMING_SECONDS` (so a slow call is timed once). ``sync`` waits for queued device work.

    One short call can be a third or more off, even on a quiet CPU (ACCURACY.md, round 3); the
    median of three is not moved by one outlier.
    """
    seconds: list[float] = []
    while len(seconds) < 3 and sum(seconds) < TIMING_SECONDS:
        sync()
        started = clock()
        fn()
        sync()
        seconds.append(clock() - started)
    return statistics.median(seconds)


# Each pass is warmed up and first timed on a small batch (4 rows), then timed on a batch with the
# rows the real pass has (batch size x windows per document), cut to fit this many seconds a call:
# per token, a small batch ran faster than the 32-70-row batches real runs use (ACCURACY.md, round 3).
REAL_BATCH_SECONDS = 10.0


def _measured_rates(config: Config, model: GPT2Classifier, length: int, device: torch.device, *,
                    full_pass: bool, windows_per_document: float = 1.0, frozen: FrozenPass | None = None
                    ) -> dict[str, float]:
    """Seconds per token of a training step, an evaluation forward, the cache pass (on ``frozen``'s path:
    the run uses a feature cache; None: it does not) and (``full_pass``) a forward and backward through the
    whole model, on rows of ``length`` tokens: each timed on a batch shaped like the real pass's (within
    :data:`REAL_BATCH_SECONDS`), the median of up to three calls."""
    small = min(config.batch_size, 4)
    length = min(length, config.max_length)
    # Any ids the backbone has embeddings for (a small vocabulary may have fewer than 100).
    vocabulary = model.backbone.get_input_embeddings().num_embeddings
    ids = torch.randint(0, min(100, vocabulary), (small, length), device=device)
    start_layer = frozen.start_layer if frozen is not None else None
    model.to(device)
    was_training = model.training
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def rows_of(tensor: torch.Tensor, rows: int) -> torch.Tensor:
        """``tensor``'s small batch repeated to ``rows`` rows (what the rows hold does not change the time)."""
        return tensor.repeat(math.ceil(rows / small), *([1] * (tensor.dim() - 1)))[:rows]

    def top_part(hidden: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=device)
        if start_layer is not None:
            hidden = model.backbone_from_layer(hidden, mask, start_layer)
        return model.classify_hidden_states(hidden, mask)

    def timed(call: Callable[[int], Callable[[], Any]], real_rows: float, *, train: bool,
              grad: bool | None = None, precision: str = config.precision) -> float:
        model.train(train)
        with autocast_context(device, precision), \
                (torch.enable_grad() if (train if grad is None else grad) else torch.inference_mode()):
            fn = call(small)
            fn()  # warm-up: first-call allocations and kernel selection
            per_token = median_call_seconds(fn, sync=sync) / (small * length)
            rows = min(round(real_rows), int(REAL_BATCH_SECONDS / max(per_token * length, 1e-9)))
            if rows > small:
                per_token = median_call_seconds(call(rows), sync=sync) / (rows * length)
            return per_token

    train_rows = config.batch_size * windows_per_document
    eval_rows = config.effective_eval_batch_size * windows_per_document
    try:
        rates: dict[str, float] = {}
        if frozen is not None:
            with torch.no_grad(), autocast_context(device, config.precision):  # no_grad: usable in autograd later
                hidden = model.backbone_hidden_states(ids, torch.ones_like(ids), num_layers=start_layer)

            def cache_call(rows: int) -> Callable[[], Any]:
                batch = rows_of(ids, rows)
                return lambda: frozen.hidden_states(batch, torch.ones_like(batch))

            def top_call(rows: int, backward: bool) -> Callable[[], Any]:
                batch = rows_of(hidden, rows)
                return (lambda: top_part(batch).float().sum().backward()) if backward else (lambda: top_part(batch))

            rates["cache"] = timed(cache_call, config.effective_eval_batch_size, train=False,
                                   precision=frozen.autocast_precision)
            rates["train"] = timed(lambda rows: top_call(rows, True), train_rows, train=True)
            rates["eval"] = timed(lambda rows: top_call(rows, False), eval_rows, train=False)
        else:
            def model_call(rows: int, backward: bool) -> Callable[[], Any]:
                batch = rows_of(ids, rows)
                mask = torch.ones_like(batch)
                return (lambda: model(batch, mask).float().sum().backward()) if backward else \
                    (lambda: model(batch, mask))

            rates["train"] = timed(lambda rows: model_call(rows, True), train_rows, train=True)
            rates["eval"] = timed(lambda rows: model_call(rows, False), eval_rows, train=False)
        if full_pass:  # integrated gradients: forward and backward to the input embeddings, in eval mode
            rates["full"] = timed(lambda rows: lambda: _backward_to_inputs(model, ids, torch.ones_like(ids)),
                                  small, train=False, grad=True)
        return rates
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        model.to("cpu")


def _backward_to_inputs(model: GPT2Classifier, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """One forward and backward pass down to the input embeddings, as integrated gradients runs it."""
    embeddings = model.backbone.get_input_embeddings()
    handle = embeddings.register_forward_hook(lambda module, args, output: output.requires_grad_(True))
    try:
        model(ids, mask).float().sum().backward()
    finally:
        handle.remove()


def _fusion_seconds(config: Config, data: PreparedData) -> float:
    """TF-IDF fusion's fit (and refit) time: a fit on a sample of the training texts, scaled to the run's sizes.

    The calibrated linear SVM's cost grows about linearly with the documents, as does scoring."""
    if config.fusion != "tfidf" or not len(data.train):
        return 0.0
    texts = data.texts["train"]
    sample = min(len(texts), 1000)
    step = max(1, len(texts) // sample)
    picked = texts[::step][:sample]
    labels = data.train.labels[::step][:sample]
    if len(set(labels)) < 2:
        return 0.0
    started = time.perf_counter()
    TfidfModel.fit(picked, labels, len(data.label_names), seed=config.seed)
    per_document = (time.perf_counter() - started) / len(picked)
    fitted = len(texts) + ((len(texts) + len(data.validation)) if config.fusion_refit else 0)
    return per_document * fitted


def describe_estimate(estimate: dict[str, Any]) -> str:
    """One line for an estimate, naming faster recipes when a CPU run would take over two hours."""
    if not estimate:
        return "estimated time: unknown (no training documents)"

    def clock(seconds: float) -> str:
        minutes = seconds / 60
        return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{max(minutes, 0.1):.1f} min"

    names = {"feature_cache": "feature cache", "fusion": "TF-IDF fusion", "report": "report"}
    parts = [f"{names.get(part, part)} {clock(estimate[part])}" for part in ESTIMATE_PARTS
             if part in ("training", "evaluation") or estimate.get(part)]
    line = (f"estimated time on this {estimate['device'].upper()} ({estimate['precision']}): "
            f"~{clock(estimate['total'])} ({', '.join(parts)})")
    if estimate["device"] == "cpu" and estimate["total"] > 2 * 3600:
        if estimate.get("feature_cache"):  # already the frozen recipe: its one backbone pass is the cost
            line += ("; faster: fewer or shorter documents (--max-train-samples, --max-length), --preset cpu-quick, "
                     "or a GPU")
        else:
            line += ("; faster: --preset cpu (one backbone pass into a feature cache), --freeze backbone, "
                     "--preset cpu-quick, or a GPU")
    return line


def check_hardware(config: Config) -> None:
    """Refuse, in one line, an accelerator, device count, strategy or precision this machine cannot run.

    Lightning would raise its own (multi-line) errors later, some only after the data is loaded.
    """
    from lightning.pytorch.strategies import StrategyRegistry

    accelerator = config.accelerator
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    known = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")
    if accelerator not in known:
        raise ConfigError(f"unknown accelerator {accelerator!r}; choose one of {', '.join(known)}")
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise ConfigError(f"--accelerator {accelerator} but no CUDA GPU is visible here; use --accelerator cpu "
                          "(or auto)")
    if accelerator == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--accelerator mps but this machine has no Apple GPU; use --accelerator cpu (or auto)")
    if accelerator in ("tpu", "hpu"):
        raise ConfigError(f"--accelerator {accelerator} is not available on this machine; use cpu"
                          f"{' or gpu' if gpus else ''} (or auto)")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)
    devices = str(config.devices).strip()
    if devices not in ("auto", "-1"):
        try:
            wanted = [int(d) for d in devices.strip("[]").split(",") if d.strip()]
        except ValueError:
            raise ConfigError(f"--devices must be auto, a count such as 2, or a list such as 0,1; "
                              f"got {devices!r}") from None
        if not wanted:
            raise ConfigError(f"--devices must name at least one device; got {devices!r}")
        if on_gpu:
            listed = "," in devices or devices.startswith("[")
            if listed and max(wanted) >= gpus:
                raise ConfigError(f"--devices {devices} names GPU {max(wanted)}, but this machine has {gpus} "
                                  f"(0 to {gpus - 1})")
            if not listed and wanted[0] > gpus:
                raise ConfigError(f"--devices {devices} asks for {wanted[0]} GPUs, but this machine has {gpus}")
        elif wanted[0] < 1 or "," in devices:
            raise ConfigError(f"--devices {devices}: on the CPU give a process count such as 1 or 2")
    strategies = sorted({"auto", *StrategyRegistry.available_strategies()})
    if config.strategy not in strategies:
        variants = ("deepspeed_", "fsdp_", "ddp_fork", "ddp_notebook")
        shown = ", ".join(s for s in strategies if not s.startswith(variants))
        raise ConfigError(f"unknown strategy {config.strategy!r}; choose one of: {shown}")
    check_float16_device(config.precision, on_gpu=on_gpu)


def resolved_config(config: Config) -> Config:
    """``config`` with what depends on this machine and folder settled: precision ``auto`` resolved
    for the device the run uses, and local paths made absolute (a run or model folder then reads
    the same files from anywhere)."""
    precision = resolve_precision(config.precision, compute_device(config))
    return config.with_absolute_paths().updated(precision=precision)


def checked_config(config: Config) -> Config:
    """``config`` refused in one line when this machine cannot run it (:func:`check_hardware`), else resolved
    for it (:func:`resolved_config`): what a run records in its ``config.yaml`` and runs with."""
    check_hardware(config)
    return resolved_config(config)


@dataclass
class RunSetup:
    """What a run starts from, built the same way for training and ``--dry-run`` (:func:`set_up_run`)."""

    config: Config
    """The checked, resolved config (:func:`checked_config`)."""
    model: GPT2Classifier
    data: PreparedData | None
    """The prepared splits; None only in a dry run whose data could not be loaded (``data_error`` says why)."""
    inputs: InputPipeline
    """How batches reach the model (also ``data.inputs``): chosen once, here."""
    report: bool = False
    """Whether the run ends with a report, whose integrated-gradients pass its estimate then counts."""
    data_error: str | None = None


def set_up_run(config: Config, data: DatasetSplits | SplitSets | None = None, *, report: bool = False,
               dry_run: bool = False) -> RunSetup:
    """The steps every run starts with, for a ``config`` from :func:`checked_config`: the backbone checked
    before any data is read, the seed set, the data prepared and checked, the model built, its input
    pipeline chosen (:func:`gpt2clf.training.inputs.choose_inputs`). Nothing is trained or cached yet.

    ``data``: texts in memory (see :func:`gpt2clf.training.inputs.prepare_data`); None reads the dataset
    ``config`` names. ``dry_run`` (``--dry-run``): a dataset or tokenizer that cannot be loaded is noted in
    ``data_error`` and the model is built for placeholder classes (20 Newsgroups has 20); empty splits are
    not refused and unread text is not warned about (the plan shows both).
    """
    check_backbone(config)  # a missing backbone or a --max-length past its positions, before any data
    warn_about_slow_settings(config)
    seed_all(config.seed)
    try:
        prepared = prepare_data(config, data)
    except UserError as err:
        if not dry_run:
            raise
        model = build_model(config, [f"class_{i}" for i in range(20 if config.train_file is None else 2)])
        return RunSetup(config, model, None, choose_inputs(config, model), report, str(err))
    if not dry_run:
        if not len(prepared.train):
            raise UserError("no training documents; give at least one labelled text per class")
        if not len(prepared.validation):
            raise UserError("the validation split is empty; use more data or a larger --validation-ratio")
    check_fusion_data(config, prepared)
    if not dry_run:
        warn_about_unread_text(config, prepared)
    seed_all(config.seed)
    model = build_model(config, prepared.label_names)
    prepared.inputs = choose_inputs(config, model)
    return RunSetup(config, model, prepared, prepared.inputs, report)


def plan_run(config: Config, *, report: bool = True) -> dict[str, Any]:
    """What a run would do (``--dry-run``): data sizes, model and parameter counts, the resolved config, and
    the time estimate (with the report's share when ``report`` and the run is single-label).

    A dataset or tokenizer that cannot be loaded is noted in the plan, and the model is still
    built (20 Newsgroups has 20 classes).
    """
    config = checked_config(config)
    setup = set_up_run(config, report=report and not config.multi_label, dry_run=True)
    plan = make_plan(setup)
    if setup.data is not None:
        plan["estimated_seconds"] = estimate_seconds(setup)
    return plan


def saved_run_config(run_dir: str | Path) -> Config:
    """The ``config.yaml`` a run folder was started with (what ``--resume`` continues)."""
    path = Path(run_dir) / RUN_MARKER
    if not path.is_file():
        raise UserError(f"nothing to resume: {path} does not exist; start the run without --resume")
    return Config.from_yaml(path)


def resumed_config(run_dir: str | Path, asked: Config) -> Config:
    """The config a resumed run continues with: the saved one, with ``asked``'s values of the
    :data:`RESUMABLE_FIELDS`; refused when ``asked`` changes anything else (what the run computes).

    ``asked`` is compared as :func:`resolved_config` would record it (absolute paths, and
    precision ``auto`` taken as the saved precision).
    """
    saved = saved_run_config(run_dir)
    asked = asked.with_absolute_paths()
    if asked.precision == "auto":
        asked = asked.updated(precision=saved.precision)
    changed = [name for name in saved.to_dict() if name not in RESUMABLE_FIELDS
               and getattr(asked, name) != getattr(saved, name)]
    if changed:
        what = ", ".join(f"--{n.replace('_', '-')} ({getattr(saved, n)!r} -> {getattr(asked, n)!r})"
                         for n in changed[:3])
        raise UserError(f"--resume continues the run with its saved config.yaml, but these differ: {what}; "
                        "drop them or start a new run")
    return saved.updated(**{name: getattr(asked, name) for name in RESUMABLE_FIELDS})
