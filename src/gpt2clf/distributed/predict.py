"""Batch prediction on Ray Data: a pool of model actors over a stream of documents, written as Parquet.

Data flow::

    model folder (local path or URI) --read once on the driver--> ray.put  (ShippedModel)
    --input files --read tasks (sources.read_rows)--> blocks of (id or row, text)
      --map_batches(PredictBatches, compute=ActorPoolStrategy)--> each actor copies the folder out of
        the object store into a private temp folder, loads a Predictor (or OnnxPredictor) once,
        and classifies its blocks with Predictor.predict
      --write_parquet--> --output folder: the id column (or ``row``), ``label``, ``prob_<class>`` per
        class (float32), ``labels`` (multi-label models), ``error`` (null when classified)

Guarantees:

* probabilities are ``Predictor.predict_proba``'s for the same text (the same Predictor, fusion,
  long-document windows and multi-label thresholds); the text is what ``predict --input`` reads;
* a null or blank text gives a row with ``error`` set and no label; the job goes on;
* every input row gives exactly one output row: a batch lost with its actor (killed, crashed) is
  retried on a restarted actor (a few times: a batch that kills its actor every time fails the job
  instead of looping), and the output goes to a fresh folder that replaces the old one only at the end;
* the workers need not see the driver's disk: the model travels through Ray's object store;
* the actor pool leaves a CPU for reading (:func:`gpt2clf.distributed.cluster.choose_pool_size`).

Example::

    >>> import ray; ray.init()                                              # doctest: +SKIP
    >>> ds = ray.data.read_parquet("s3://bucket/posts/")                    # doctest: +SKIP
    >>> out = predict_dataset("runs/20ng/model", ds, text_column="body", id_column="id")  # doctest: +SKIP
    >>> out.write_parquet("s3://bucket/predictions/")                       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2clf.config import InferenceSettings, check_batch_size
from gpt2clf.distributed.settings import ClusterSettings
from gpt2clf.errors import ConfigError, PerformanceWarning, UserError
from gpt2clf.files import atomic_directory

__all__ = ["ERROR_COLUMN", "PredictBatches", "PredictOptions", "PredictSummary", "ShippedModel", "predict_dataset",
           "predict_files", "probability_column"]

ERROR_COLUMN = "error"
EMPTY_TEXT_ERROR = "empty text"
RESERVED_COLUMNS = ("label", "labels", ERROR_COLUMN)
# A batch whose actor dies is retried on the restarted actor this many times, then the job fails.
BATCH_RETRIES = 3
# Rows per output file at least (fewer, larger files than one per block).
MIN_ROWS_PER_FILE = 100_000


def probability_column(label: str) -> str:
    """The output column holding a class's probability: ``prob_`` and the class name."""
    return f"prob_{label}"


@dataclass(frozen=True)
class PredictOptions:
    """How each model actor runs: the inference flags of ``gpt2clf predict``, and the pool's resources."""

    batch_size: int = InferenceSettings.batch_size
    """Documents per forward pass at most (as in predict)."""
    precision: str = "auto"
    """auto, 32-true, bf16-mixed or 16-mixed (as in predict)."""
    device: str = "auto"
    """auto (cuda when the actor has a GPU, else cpu), cpu or cuda."""
    int8: bool = False
    """An int8 copy of the model (CPU, torch runtime)."""
    runtime: str = "torch"
    """torch, or onnx (ONNX Runtime on the CPU with the folder's model.onnx or onnx_model)."""
    onnx_model: str | None = None
    """With runtime onnx: the ONNX file (default: MODEL_DIR/model.onnx); shipped with the folder."""
    gpus_per_worker: float = 0.0
    """GPUs each model actor takes (0: CPU only)."""
    rows_per_call: int | None = None
    """Rows handed to an actor per call (the unit of retry); None: 4 x batch_size."""
    ray_remote_args: dict[str, Any] | None = None
    """More Ray options for the actors (e.g. runtime_env, resources, scheduling_strategy)."""
    record_worker: bool = False
    """Add a ``worker`` column, ``NODE_ID:PID`` of the actor that classified the row (to see where work went)."""

    def __post_init__(self) -> None:
        check_batch_size(self.batch_size)
        if self.runtime not in ("torch", "onnx"):
            raise ConfigError(f"unknown --runtime {self.runtime!r}; choose torch or onnx")
        if self.runtime == "onnx" and self.int8:
            raise ConfigError("--int8 quantizes the torch model; with --runtime onnx drop it")
        if self.runtime == "onnx" and (self.device not in ("auto", "cpu") or self.gpus_per_worker):
            raise ConfigError("--runtime onnx runs on the CPU; drop --device and --gpus-per-worker")
        if self.onnx_model and self.runtime != "onnx":
            raise ConfigError("--onnx-model needs --runtime onnx")
        if self.rows_per_call is not None:
            check_batch_size(self.rows_per_call, "rows_per_call")


@dataclass(frozen=True)
class ShippedModel:
    """A model folder's files in Ray's object store, for workers that do not share the driver's disk.

    ``files`` holds one ObjectRef (in a list, so that Ray hands actors the reference, not the value) to a
    mapping of relative path -> uint8 array (zero-copy out of the store); ``source`` names the folder.
    """

    files: list[Any]
    source: str

    @classmethod
    def ship(cls, ray: Any, model_dir: str | Path, onnx_model: str | None = None) -> ShippedModel:
        """Read every file under ``model_dir`` (a local folder or a URI) once and put them in the store."""
        import numpy as np
        from pyarrow import fs

        from gpt2clf.distributed.sources import _filesystem, open_file

        filesystem, root = _filesystem(str(model_dir))
        if filesystem.get_file_info(root).type != fs.FileType.Directory:
            raise ConfigError(f"model folder not found: {model_dir}")
        listed = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
        files = {}
        for item in listed:
            if item.type == fs.FileType.File:
                with filesystem.open_input_file(item.path) as handle:
                    files[item.path[len(root):].lstrip("/")] = np.frombuffer(handle.read(), dtype=np.uint8)
        if onnx_model:
            with open_file(onnx_model) as handle:
                files["model.onnx"] = np.frombuffer(handle.read(), dtype=np.uint8)
        if "config.json" not in files:
            raise ConfigError(f"{model_dir} has no config.json, so it is not a model folder written by gpt2clf")
        return cls([ray.put(files)], str(model_dir))

    def materialise(self) -> Path:
        """Write the files into a new private temp folder (the caller removes it) and return its path."""
        import ray

        folder = Path(tempfile.mkdtemp(prefix="gpt2clf-model-"))
        for relative, data in ray.get(self.files[0]).items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data.tobytes())
        return folder


class PredictBatches:
    """Ray Data callable class: loads the model once per actor, then classifies Arrow blocks.

    Output columns: ``keep`` columns of the input, ``label``, ``prob_<class>`` (float32), ``labels`` for a
    multi-label model, ``error`` (null, or why the row has no label).
    """

    def __init__(self, model: ShippedModel, options: PredictOptions, text_columns: list[str],
                 keep: list[str]) -> None:
        folder = model.materialise()
        try:
            if options.runtime == "onnx":
                from gpt2clf.infer.onnx_runtime import OnnxPredictor

                self.predictor: Any = OnnxPredictor.from_folder(folder, batch_size=options.batch_size)
            else:
                from gpt2clf.infer.predictor import Predictor

                self.predictor = Predictor.from_folder(folder, batch_size=options.batch_size, device=options.device,
                                                       precision=options.precision, int8=options.int8)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # loaded: the actor keeps no copy on disk
        self.text_columns, self.keep = text_columns, keep
        self.multi_label = bool(getattr(self.predictor, "multi_label", False))
        self.worker = None
        if options.record_worker:
            import os

            import ray

            self.worker = f"{ray.get_runtime_context().get_node_id()}:{os.getpid()}"

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from gpt2clf.data.labelled_files import join_fields

        columns = [batch.column(name).to_pylist() for name in self.text_columns]
        texts = [join_fields(self.text_columns, [_as_text(v) for v in values]) for values in zip(*columns, strict=True)]
        todo = [i for i, text in enumerate(texts) if text is not None and text.strip()]
        predictions = dict(zip(todo, self.predictor.predict([texts[i] for i in todo], top_k=1,
                                                            chunk_size=max(1, len(todo))), strict=True))
        names = self.predictor.label_names
        out: dict[str, Any] = {name: batch.column(name) for name in self.keep}
        out["label"] = pa.array([p.label if (p := predictions.get(i)) else None for i in range(len(texts))],
                                pa.string())
        for name in names:
            out[probability_column(name)] = pa.array(
                [p.probabilities[name] if (p := predictions.get(i)) else None for i in range(len(texts))],
                pa.float32())
        if self.multi_label:
            out["labels"] = pa.array([p.labels if (p := predictions.get(i)) else None for i in range(len(texts))],
                                     pa.list_(pa.string()))
        if self.worker:
            out["worker"] = pa.array([self.worker] * len(texts), pa.string())
        out[ERROR_COLUMN] = pa.array([None if i in predictions else EMPTY_TEXT_ERROR for i in range(len(texts))],
                                     pa.string())
        return pa.table(out)


def _as_text(value: Any) -> str | None:
    """A text cell as a string (numbers as written), None for a missing one."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def predict_dataset(model_dir: str | Path | ShippedModel, dataset: Any, *, text_column: str | Sequence[str] = "text",
                    id_column: str | None = None, workers: int | None = None,
                    options: PredictOptions | None = None) -> Any:
    """A lazy Ray Dataset of predictions for ``dataset`` (a ``ray.data.Dataset`` with ``text_column``).

    Needs Ray initialised (``ray.init()``; else Ray starts a local cluster). The model folder is read
    here, once, into the object store (pass a :class:`ShippedModel` to reuse one); nothing runs until the
    result is consumed (``write_parquet``, ``iter_batches``, ...). Output: ``id_column`` (else every
    input column but the text ones), ``label``, ``prob_<class>``, ``labels`` (multi-label), ``error``.
    ``workers``: model actors (None: every CPU but one; more is lowered, with a PerformanceWarning).
    """
    from gpt2clf.distributed.cluster import choose_pool_size, import_ray

    ray = import_ray()
    options = options or PredictOptions()
    text_columns = [text_column] if isinstance(text_column, str) else list(text_column)
    if not text_columns:
        raise ConfigError("give at least one text column")
    if id_column in RESERVED_COLUMNS or (id_column or "").startswith("prob_"):
        raise ConfigError(f"--id-column {id_column!r} would clash with an output column; rename it")
    shipped = model_dir if isinstance(model_dir, ShippedModel) else ShippedModel.ship(ray, model_dir,
                                                                                      options.onnx_model)
    size, why = choose_pool_size(workers, ray.cluster_resources(), options.gpus_per_worker)
    if workers is not None and size < workers:
        warnings.warn(PerformanceWarning(why), stacklevel=2)
    keep = [id_column] if id_column else [c for c in dataset.columns() if c not in text_columns]
    remote_args = {"max_restarts": -1, "max_task_retries": BATCH_RETRIES, **(options.ray_remote_args or {})}
    with warnings.catch_warnings():
        # Ray 2.60 warns that such keyword arguments go in 2.64 (map_batches has no named ones for these) but
        # obeys them; bounding max_task_retries stops a batch that kills its actor every time looping forever.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
        return dataset.map_batches(
            PredictBatches, fn_constructor_args=(shipped, options, text_columns, keep), batch_format="pyarrow",
            batch_size=options.rows_per_call or 4 * options.batch_size,
            compute=ray.data.ActorPoolStrategy(size=size), num_cpus=1, num_gpus=options.gpus_per_worker or None,
            **remote_args)


@dataclass
class PredictSummary:
    """What a :func:`predict_files` job did.

    ``rows_written`` and ``rows_with_errors`` are counted in the written files (so a duplicate would
    show). ``rows_read`` is the count taken before the job when rows are numbered across several files;
    otherwise it is ``rows_written``, as every row read gives exactly one output row.
    """

    rows_read: int
    rows_written: int
    rows_with_errors: int
    seconds: float
    output: str
    actors: int

    @property
    def rows_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The one summary line the command prints."""
        return (f"read {self.rows_read} rows, wrote {self.rows_written} ({self.rows_with_errors} with errors) in "
                f"{self.seconds:.1f} s, {self.rows_per_second:.1f} rows/s, on {self.actors} model actor(s); "
                f"predictions in {self.output}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "rows_per_second": self.rows_per_second}


def predict_files(model_dir: str | Path, input_path: str, output: str, *, text_column: Sequence[str] = ("text",),
                  id_column: str | None = None, cluster: ClusterSettings | None = None,
                  options: PredictOptions | None = None, overwrite: bool = False) -> PredictSummary:
    """Classify every row of ``input_path`` (CSV/TSV/JSONL/Parquet: a file, folder, glob or URI) on Ray and
    write a folder of Parquet files to ``output`` (see :func:`predict_dataset` for the columns; ``row``
    holds the 0-based input position when there is no ``id_column``).

    Joins the Ray cluster ``cluster.address`` (else starts a local one and stops it at the end). A
    non-empty ``output`` is refused unless ``overwrite``; a local ``output`` appears whole at the end.
    """
    from gpt2clf.distributed.cluster import choose_pool_size, import_ray, ray_cluster
    from gpt2clf.distributed.sources import ROW_COLUMN, TEXT_COLUMN, check_output_folder, is_uri, list_input_files

    import_ray()  # first: without Ray, say how to install it whatever else is wrong
    cluster = cluster or ClusterSettings(engine="ray")
    options = dataclasses.replace(options or PredictOptions(), gpus_per_worker=cluster.gpus_per_worker)
    files = list_input_files(input_path)
    check_output_folder(output, overwrite)
    with ray_cluster(cluster.address) as ray:
        started = time.perf_counter()
        try:
            rows, counted = _read_input(ray, files, list(text_column), id_column,
                                        options.rows_per_call or 4 * options.batch_size)
            actors, _ = choose_pool_size(cluster.workers, ray.cluster_resources(), options.gpus_per_worker)
            predictions = predict_dataset(ShippedModel.ship(ray, model_dir, options.onnx_model), rows,
                                          text_column=TEXT_COLUMN, id_column=id_column or ROW_COLUMN,
                                          workers=cluster.workers, options=options)
            if is_uri(output):
                _write(predictions, output, overwrite)
            else:  # written beside, moved into place whole at the end
                with atomic_directory(Path(output)) as folder:
                    _write(predictions, str(folder), False)
        except Exception as err:
            raise _user_error_in(err) or err from None
        seconds = time.perf_counter() - started
    written, errors = _count_output(output)
    return PredictSummary(rows_read=written if counted is None else counted, rows_written=written,
                          rows_with_errors=errors, seconds=seconds, output=output, actors=actors)


def _read_input(ray: Any, files: list[str], text_columns: list[str], id_column: str | None,
                chunk_rows: int) -> tuple[Any, int | None]:
    """The lazy dataset of (id or row, text) rows of ``files`` (one read task per file, blocks of
    ``chunk_rows``), and the number of rows when they were counted first (to number them across files)."""
    from gpt2clf.distributed.sources import read_rows, row_offsets

    offsets, total = row_offsets(ray, files, text_columns, counted=id_column is None)
    listing = ray.data.from_items([{"path": path, "offset": offset} for path, offset in zip(files, offsets,
                                                                                              strict=True)],
                                  override_num_blocks=len(files))
    rows = listing.map_batches(read_rows, batch_size=1, fn_kwargs={"text_columns": text_columns,
                                                                   "id_column": id_column,
                                                                   "chunk_rows": chunk_rows})
    # A read task's output is merged into large blocks, and an actor takes a whole block: cut them to one
    # actor call each (streaming, no shuffle) so that the rows spread over the pool.
    return rows.repartition(target_num_rows_per_block=chunk_rows), total


def _write(predictions: Any, path: str, overwrite: bool) -> None:
    from ray.data import SaveMode

    predictions.write_parquet(path, mode=SaveMode.OVERWRITE if overwrite else SaveMode.APPEND,
                              min_rows_per_file=MIN_ROWS_PER_FILE)


def _count_output(output: str) -> tuple[int, int]:
    """Rows in the written Parquet files, and those with an error (read from the files, so duplicates show)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from gpt2clf.distributed.sources import _filesystem

    filesystem, inner = _filesystem(output)
    written = pads.dataset(inner, format="parquet", filesystem=filesystem)
    return written.count_rows(), written.count_rows(filter=pc.field(ERROR_COLUMN).is_valid())


def _user_error_in(err: BaseException) -> UserError | None:
    """The UserError (a bad row, file or model folder) behind an error Ray raised from a worker, itself: one
    line, not a remote traceback (Ray's wrappers subclass the cause's class but print the traceback)."""
    seen: BaseException | None = err
    for _ in range(20):
        if seen is None:
            return None
        if isinstance(seen, UserError) and type(seen).__module__.startswith("gpt2clf"):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__ or seen.__context__
    return None
