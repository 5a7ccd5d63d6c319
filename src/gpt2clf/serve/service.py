"""The model side of the server: one :class:`ModelService` per app.

It holds the predictor, its one inference thread and the :class:`~gpt2clf.serve.microbatch.MicroBatcher`
in front of it, and readiness. Route handlers check what HTTP brings and call one method here:
``classify`` (token counts -> the batcher's bounded queue -> the model thread; 503 when the queue
is full, 504 past the request timeout), ``explain`` (on the model thread between batches) and
``model_info`` (what ``/v1/model`` shows: labels, limits and the recorded training settings that
say how text is read, never local paths, and nothing of the API key, which the service never holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpt2clf.config import ServeSettings
from gpt2clf.errors import ModelLoadError, UserError
from gpt2clf.model.folder import read_model_config, read_model_extra, read_training_config
from gpt2clf.serve.extra import missing_extra
from gpt2clf.serve.http_errors import ApiError
from gpt2clf.serve.metrics import ServiceMetrics
from gpt2clf.serve.microbatch import MicroBatcher, QueueFull

try:
    from starlette.concurrency import run_in_threadpool
except ImportError as err:  # pragma: no cover - exercised by a test that hides the extra
    raise missing_extra(err) from err

__all__ = ["ModelService", "check_model_folder", "default_model_name", "recorded_metadata"]

log = logging.getLogger("gpt2clf.serve.app")

# Training-config keys worth showing on /v1/model: how text is cut and combined. Others
# (paths, seeds, optimiser settings) say nothing about serving and may leak local paths.
MODEL_INFO_KEYS = ("max_length", "padding_side", "pooling", "long_documents", "fusion")
MODEL_INFO_PREFIXES = ("chunk", "fusion", "tfidf", "long_")
# Requests with fewer characters are tokenized on the event loop (well under a millisecond);
# longer ones on a worker thread, so a big request never stalls the loop.
INLINE_TOKENIZE_CHARS = 20_000
WARMUP_TEXT = "Warm-up: the first prediction allocates buffers and picks kernels."


def check_model_folder(folder: str | Path) -> Path:
    """Fail early, with a user error naming the problem, for a path that is not a gpt2clf model folder."""
    read_model_config(folder)
    return Path(folder)


def recorded_metadata(folder: str | Path | None) -> dict[str, Any]:
    """What ``/v1/model`` shows of a model folder: ``backbone``, ``training`` (its recorded
    config) and ``test_metrics``; {} when there is no folder or it cannot be read."""
    if folder is None:
        return {}
    try:
        backbone = read_model_config(folder).get("backbone_name")
    except ModelLoadError:
        return {}
    metrics = read_model_extra(folder).get("test_metrics")
    return {"backbone": backbone, "training": read_training_config(folder),
            "test_metrics": metrics if isinstance(metrics, dict) else None}


def default_model_name(folder: str | Path | None) -> str:
    """``runs/20ng/model`` -> ``20ng``; any other folder -> its own name."""
    if folder is None:
        return "gpt2clf-model"
    path = Path(folder).resolve()
    return path.parent.name if path.name == "model" and path.parent.name else path.name


class ModelService:
    """The predictor, its one inference thread, the batcher and readiness, for one app.

    The route handlers are thin: each checks what HTTP brings and calls one method here.
    """

    def __init__(self, predictor_or_folder: Any, settings: ServeSettings, *, model_dir: str | Path | None,
                 predictor_kwargs: dict[str, Any]) -> None:
        if isinstance(predictor_or_folder, (str, Path)):
            self.folder: Path | None = check_model_folder(predictor_or_folder)
            self.predictor: Any = None
        else:
            self.folder = Path(model_dir) if model_dir is not None else None
            self.predictor = predictor_or_folder
        self.predictor_kwargs = predictor_kwargs
        self.settings = settings
        self.metadata = recorded_metadata(self.folder)
        self.model_name = settings.model_name or default_model_name(self.folder)
        self.metrics = ServiceMetrics()
        self.executor, self.batcher = self.new_worker()
        self.ready = False
        self.load_error: str | None = None
        self.startup_task: asyncio.Task | None = None

    def new_worker(self) -> tuple[ThreadPoolExecutor, MicroBatcher]:
        # One thread: the model is not re-entrant, and on a CPU one call already uses every core.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpt2clf-model")
        settings = self.settings
        return executor, MicroBatcher(self.predict_batch, executor=executor,
                                      max_batch_tokens=settings.max_batch_tokens, max_wait_ms=settings.max_wait_ms,
                                      max_queue=settings.max_queue, micro_batching=settings.micro_batching,
                                      on_queue_depth=self.metrics.queue_depth.set, on_batch=self.metrics.record_batch)

    # --- runs on the model thread ---
    def load_and_warm_up(self) -> None:
        if self.predictor is None:
            from gpt2clf.infer.predictor import Predictor

            self.predictor = Predictor.from_folder(self.folder, **self.predictor_kwargs)
        self.predict_batch([WARMUP_TEXT])

    def predict_batch(self, texts: list[str]) -> list[Any]:
        """All labels ranked for each text (requests cut their own top_k from it)."""
        return list(self.predictor.predict(texts, top_k=len(self.predictor.label_names)))

    # --- runs on the event loop ---
    async def start(self) -> None:
        if self.batcher.closing:  # the app was started and stopped before (test clients do that)
            self.executor, self.batcher = self.new_worker()
        self.batcher.start()
        if self.predictor is not None:  # loaded already: warm up before taking requests (about a second)
            await self.warm_up()
        else:  # load in the background; /healthz answers meanwhile and /readyz says 503
            self.startup_task = asyncio.get_running_loop().create_task(self.warm_up(), name="gpt2clf-load")

    async def warm_up(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.load_and_warm_up)
        except Exception as err:  # shown on /readyz and in the log; the process stays up
            self.load_error = f"{type(err).__name__}: {err}".splitlines()[0]
            log.error("gpt2clf: model failed to load: %s", self.load_error)
            return
        self.ready = True
        log.info("gpt2clf: model %s loaded and warmed up; ready", self.model_name)

    async def stop(self) -> None:
        if self.startup_task is not None and not self.startup_task.done():
            self.startup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.startup_task
        await self.batcher.close()
        # wait=True: a batch still running finishes before the process goes.
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)

    def require_ready(self) -> None:
        """Raise the 503 ``not_ready`` answer while the model is loading (or failed to load)."""
        if not self.ready:
            message = (f"the model failed to load: {self.load_error}" if self.load_error
                       else "the model is still loading")
            raise ApiError(503, "not_ready", message, headers={"Retry-After": "5"})

    def token_costs(self, texts: list[str]) -> list[int]:
        """Tokens each text will occupy in a batch: its token count, capped at max_length."""
        tokenizer = self.predictor.tokenizer
        # Lone surrogates (valid in JSON, not in UTF-8) become "?" here, as the predictor does.
        clean = [t.encode("utf-8", "replace").decode("utf-8") for t in texts]
        ids = tokenizer(clean, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return [max(1, min(len(row), self.predictor.max_length)) for row in ids]

    async def classify(self, texts: list[str]) -> list[Any]:
        """Every label ranked for each text, through the batcher: 503 when its queue is full, 504 past the timeout."""
        if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
            costs = self.token_costs(texts)  # microseconds: a thread hop would cost more
        else:
            costs = await run_in_threadpool(self.token_costs, texts)
        try:
            job = self.batcher.submit(texts, costs)
        except QueueFull as err:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(503, "queue_full", f"server busy: {err}; retry later",
                           headers={"Retry-After": "1"}) from None
        timeout = self.settings.request_timeout_s
        try:
            return await asyncio.wait_for(job.future, max(0.0, timeout - (time.monotonic() - job.enqueued_at)))
        except asyncio.TimeoutError:
            self.metrics.rejected.labels("timeout").inc()
            raise ApiError(504, "timeout", f"not answered within {timeout:g} s; "
                           "send fewer or shorter texts, or retry later") from None
        finally:
            self.batcher.discard(job)  # a no-op once answered; frees the queue slot otherwise

    async def explain(self, text: str, label: str | None, steps: int) -> Any:
        """Integrated-gradients attributions for one text, on the model thread between batches."""
        from gpt2clf.report.explain import explain

        def run() -> Any:
            return explain(self.predictor, text, label=label, steps=steps)

        timeout = self.settings.request_timeout_s
        try:
            # On the model thread: the model is not re-entrant.
            return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self.executor, run), timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"not explained within {timeout:g} s; use fewer "
                           "steps or a shorter text") from None
        except UserError as err:  # e.g. Captum not installed, or an int8 model
            raise ApiError(422, "cannot_explain", str(err)) from None

    def model_info(self) -> dict[str, Any]:
        training = self.metadata.get("training", {})
        shown = {key: value for key, value in training.items()
                 if key in MODEL_INFO_KEYS or key.startswith(MODEL_INFO_PREFIXES)}
        return {
            "model": self.model_name,
            "labels": self.predictor.label_names,
            "backbone": self.metadata.get("backbone"),
            "max_length": int(self.predictor.max_length),
            "training": shown,
            "test_metrics": self.metadata.get("test_metrics"),
            "serving": {**{f.name: getattr(self.settings, f.name) for f in dataclasses.fields(self.settings)
                           if f.name != "model_name"},
                        "batch_size": getattr(self.predictor, "batch_size", None),
                        "device": str(getattr(self.predictor, "device", "")) or None},
        }

