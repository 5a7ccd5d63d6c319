"""An HTTP API and a web page for a trained model folder: ``gpt2clf serve``.

Data flow::

    HTTP request --> MetricsMiddleware (counts, latency) --> BodyLimitMiddleware (413 on
    Content-Length or on the bytes actually streamed, after draining the rest)
    --> FastAPI validation (pydantic; 400 malformed JSON, 422 wrong shape)
    --> a route handler (module-level, over the app's ModelService): limits (413 too many
    / too long texts) --> token counts (a worker of the thread pool) --> MicroBatcher
    queue (gpt2clf.serve.microbatch; bounded: 503 + Retry-After when full) --> one model thread:
    Predictor.predict on a merged, length-sorted batch --> each request's future gets its
    own rows --> JSON response.

Guarantees:

* A text's result does not depend on what it was batched with: batches only add padding,
  which the model masks, so probabilities equal ``gpt2clf predict --json`` (within float
  rounding, 1e-5) whatever the load.
* Inference runs on one dedicated thread, never on the event loop; the loop keeps
  answering ``/healthz``, ``/metrics`` and rejections while a batch runs.
* The queue is bounded (``max_queue`` requests); a full queue answers 503 with
  ``Retry-After`` at once instead of letting latency grow without limit.
* A request that passes ``request_timeout_s`` gets a 504; its texts leave the queue, or,
  if already running, their results are dropped. Nothing is left behind.
* An oversized body is read and discarded (at most ``DRAIN_MAX_BYTES`` within
  ``DRAIN_TIMEOUT_S``, on the event loop) before its 413, so that clients which send a whole
  body before reading see the 413 rather than a reset; the connection is then closed.
* Every error is JSON ``{"error": {"code": ..., "message": ...}}`` with a 4xx status
  (5xx only for 503/504 overload answers, and a bare 500 for a bug, never a traceback).
* ``/readyz`` answers 503 until the model is loaded and one warm-up prediction ran.
* On SIGTERM or SIGINT, uvicorn stops accepting, in-flight requests finish, the batcher
  drains its queue and the process exits with code 0.

Example::

    >>> from gpt2clf.serve.app import ServeSettings, create_app  # doctest: +SKIP
    >>> app = create_app("runs/20ng/model", ServeSettings(max_wait_ms=5))  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000), or from a shell:
    >>> # gpt2clf serve runs/20ng/model --port 8000
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

from gpt2clf.config import SERVE_HOST, SERVE_PORT, InferenceSettings, ServeSettings, check_batch_size
from gpt2clf.errors import ConfigError, ModelLoadError, UserError
from gpt2clf.model.folder import read_model_config, read_model_extra, read_training_config
from gpt2clf.serve.microbatch import MicroBatcher, QueueFull


class MissingExtraError(UserError, ImportError):
    """An optional dependency group (an 'extra') is not installed."""


try:
    import uvicorn
    from fastapi import APIRouter, Body, Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
except ImportError as err:  # pragma: no cover - exercised by a test that hides fastapi
    raise MissingExtraError(f"serving needs FastAPI, uvicorn and prometheus-client ({err.name} is missing): "
                            'pip install "gpt2clf[serve]"') from err

__all__ = [
    "ApiError",
    "BodyLimitMiddleware",
    "ClassifyRequest",
    "ClassifyResponse",
    "ExplainRequest",
    "ExplainResponse",
    "MetricsMiddleware",
    "MissingExtraError",
    "ModelInfo",
    "ModelService",
    "ServeSettings",
    "ServiceMetrics",
    "create_app",
    "router",
    "running_in_thread",
    "serve",
]

log = logging.getLogger("gpt2clf.serve.app")

WEB_DIR = Path(__file__).parent / "web"
# Training-config keys worth showing on /v1/model: how text is cut and combined. Others
# (paths, seeds, optimiser settings) say nothing about serving and may leak local paths.
MODEL_INFO_KEYS = ("max_length", "padding_side", "pooling", "long_documents", "fusion")
MODEL_INFO_PREFIXES = ("chunk", "fusion", "tfidf", "long_")
# Requests with fewer characters are tokenized on the event loop (well under a millisecond);
# longer ones on a worker thread, so a big request never stalls the loop.
INLINE_TOKENIZE_CHARS = 20_000
WARMUP_TEXT = "Warm-up: the first prediction allocates buffers and picks kernels."
# The most of an oversized body that is read (and thrown away) before the 413, and for how
# long: enough for clients that send a whole body before reading the answer to see the 413,
# little enough that slow or endless bodies cannot hold a connection (BodyLimitMiddleware).
DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------------------------
# request and response bodies (these make the OpenAPI schema)
# ---------------------------------------------------------------------------------------
class ClassifyRequest(BaseModel):
    """Texts to classify and how many ranked labels to return per text."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"texts": ["My X server crashes when I resize an xterm"], "top_k": 3}]})

    texts: list[StrictStr] = Field(min_length=1, description="Documents to classify, one result each in order. "
                                   "At most the server's max_texts, each at most max_text_chars characters (413).")
    top_k: int = Field(3, ge=1, description="Ranked labels per text; more than the number of labels "
                       "returns all of them.")

    @field_validator("top_k", mode="before")
    @classmethod
    def whole_number(cls, value: Any) -> Any:
        # JSON Schema's "integer" includes 3.0, so it is accepted; "3" and true are not numbers.
        if isinstance(value, (str, bool)):
            raise ValueError("top_k must be a whole number, not a string or a boolean")
        return value


class ExplainRequest(BaseModel):
    """One text to explain: which tokens moved the model toward ``label`` (default: its prediction)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"text": "My X server crashes when I resize an xterm", "steps": 16}]})

    text: StrictStr = Field(min_length=1, description="The document; at most max_text_chars characters (413).")
    label: StrictStr | None = Field(None, description="The label to explain; default: the predicted one.")
    steps: int = Field(16, ge=1, le=256, description="Integration steps of integrated gradients.")


class ExplainResponse(BaseModel):
    label: str = Field(description="The predicted label (of the whole document).")
    target: str = Field(description="The label the attributions explain.")
    tokens: list[str] = Field(description="The tokens read, as text pieces.")
    attributions: list[float] = Field(description="One integrated-gradients attribution per token.")
    delta: float | None = Field(description="Captum's convergence delta (small next to the logit difference).")
    chunk: dict[str, int] | None = Field(None, description="For long documents read in windows: the window "
                                         "explained, {index, count}.")


class TextPrediction(BaseModel):
    label: str = Field(description="The most probable label.")
    probabilities: dict[str, float] = Field(description="Every label's probability; they sum to 1.")
    top_k: list[tuple[str, float]] = Field(description="[label, probability] pairs, most probable first.")


class ClassifyResponse(BaseModel):
    predictions: list[TextPrediction]
    model: str


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable machine-readable code, e.g. too_many_texts.")
    message: str = Field(description="One line for people.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelInfo(BaseModel):
    model: str
    labels: list[str]
    backbone: str | None
    max_length: int
    training: dict[str, Any] = Field(description="How text is cut and combined, as recorded at training "
                                     "(max_length, pooling, chunking and fusion keys where present).")
    test_metrics: dict[str, Any] | None = Field(description="Metrics on the test split recorded at training.")
    serving: dict[str, Any] = Field(description="This server's limits and batching settings.")


class Status(BaseModel):
    status: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in {
        400: "Malformed JSON.",
        413: "Body, number of texts or a text over the server's limits.",
        422: "Valid JSON of the wrong shape: no texts, wrong types, top_k below 1.",
        503: "Queue full or model not ready; see Retry-After.",
        504: "Not answered within the request timeout.",
    }.items()
}


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
class ApiError(HTTPException):
    """An HTTP error with a machine-readable ``code``; rendered as the JSON error body."""

    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code


STATUS_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
                415: "unsupported_media_type", 422: "invalid_request", 500: "internal_error",
                503: "unavailable", 504: "timeout"}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def validation_message(errors: Sequence[dict[str, Any]]) -> str:
    """The first pydantic error as one line: ``body.top_k: Input should be greater than or equal to 1``."""
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid request')}{more}"


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------
class ServiceMetrics:
    """Prometheus metrics in a registry of their own, so several apps can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("gpt2clf_http_requests", "HTTP requests answered, by route and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("gpt2clf_http_request_duration_seconds", "Time from request to response.",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch_texts = Histogram("gpt2clf_batch_texts", "Texts per model call.", registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.batch_requests = Histogram("gpt2clf_batch_requests", "Requests merged into one model call.",
                                        registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.queue_depth = Gauge("gpt2clf_queue_depth", "Requests waiting for the model.", registry=self.registry)
        self.rejected = Counter("gpt2clf_rejected_requests", "Requests refused or dropped by the batcher.",
                                ["reason"], registry=self.registry)

    def record_batch(self, texts: int, requests: int) -> None:
        """One model call of the batcher: how many texts, merged from how many requests."""
        self.batch_texts.observe(texts)
        self.batch_requests.observe(requests)


class MetricsMiddleware:
    """Counts every response by route template and status, and times it (pure ASGI)."""

    def __init__(self, app: Any, metrics: ServiceMetrics, routes: set[str]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        # Known paths by name, everything else as one label: fuzzers and scanners must not
        # create a time series per random URL.
        route = path if path in self.routes else ("/static" if path.startswith("/static/") else "other")
        status = 500
        started = time.perf_counter()

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(scope.get("method", ""), route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "body_too_large", f"request body is over the limit of {limit} bytes")


class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes: by Content-Length up front, and by counting what
    actually arrives (a client may lie about, or leave out, Content-Length).

    Before it answers, it reads and throws away the rest of an oversized body, as a lingering
    close does: many clients (Python's urllib and http.client among them) send the whole body
    before they read any answer, and a socket closed under them while they send is a
    connection reset, not a 413. The drain is bounded, so that it cannot hold the server: at
    most ``drain_max_bytes`` within ``drain_timeout_s`` (a body declared larger than that is
    not read at all), and it waits on the event loop like any other read, so every other
    request keeps being answered meanwhile. The 413 then closes the connection
    (``Connection: close``). A client that asked ``Expect: 100-continue`` (curl does for large
    bodies) has sent nothing yet and gets the 413 at once.
    """

    def __init__(self, app: Any, limit: int, *, drain_max_bytes: int = DRAIN_MAX_BYTES,
                 drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        self.app, self.limit = app, limit
        self.drain_max_bytes, self.drain_timeout_s = drain_max_bytes, drain_timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        try:
            declared = int(headers[b"content-length"]) if b"content-length" in headers else None
        except ValueError:
            declared = None  # uvicorn rejects a malformed Content-Length before we see it
        if declared is not None and declared > self.limit:
            if declared <= self.drain_max_bytes and headers.get(b"expect", b"").lower() != b"100-continue":
                await self.drain(receive)
            await error_response(413, "body_too_large", f"request body is over the limit of {self.limit} bytes",
                                 headers={"Connection": "close"})(scope, receive, send)
            return
        received = 0
        over = False

        async def counting_receive() -> dict:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    over = True
                    if message.get("more_body", False):
                        await self.drain(receive)
                    # An HTTPException passes FastAPI's body parsing unchanged and reaches our handler.
                    raise BodyTooLarge(self.limit)
            return message

        async def send_closing(message: dict) -> None:
            if over and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, counting_receive, send_closing)

    async def drain(self, receive: Callable) -> None:
        """Read and discard the rest of the body: at most ``drain_max_bytes``, within ``drain_timeout_s``."""
        drained = 0

        async def discard() -> None:
            nonlocal drained
            while drained <= self.drain_max_bytes:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return  # all of it arrived, or the client went away
                drained += len(message.get("body", b""))
            log.info("gpt2clf: stopped reading an oversized request body after %d bytes", drained)

        try:
            await asyncio.wait_for(discard(), self.drain_timeout_s)
        except asyncio.TimeoutError:
            log.info("gpt2clf: stopped reading an oversized request body after %g s (%d bytes)",
                     self.drain_timeout_s, drained)


# ---------------------------------------------------------------------------------------
# the model side
# ---------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------
# the routes: module-level handlers over the app's ModelService
# ---------------------------------------------------------------------------------------
async def service_of(request: Request) -> ModelService:
    """The :class:`ModelService` of the app that got ``request`` (a FastAPI dependency)."""
    # async on purpose: FastAPI runs a plain def dependency on its thread pool, a thread hop
    # per request that adds latency and lets concurrent requests overtake each other.
    return request.app.state.service


Service = Annotated[ModelService, Depends(service_of)]
router = APIRouter()


def check_text_limits(texts: Sequence[str], settings: ServeSettings) -> None:
    """413 for more than ``max_texts`` texts or a text over ``max_text_chars`` characters."""
    if len(texts) > settings.max_texts:
        raise ApiError(413, "too_many_texts",
                       f"{len(texts)} texts is over the limit of {settings.max_texts} per request")
    for i, text in enumerate(texts):
        if len(text) > settings.max_text_chars:
            raise ApiError(413, "text_too_long", f"texts[{i}] has {len(text)} characters, over the limit "
                           f"of {settings.max_text_chars}")


@router.post("/v1/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES,
             summary="Classify texts", tags=["classify"])
async def classify(body: Annotated[ClassifyRequest, Body()], service: Service) -> dict[str, Any]:
    """Label, every label's probability and the top-k labels for each text, in order."""
    service.require_ready()
    check_text_limits(body.texts, service.settings)
    predictions = await service.classify(body.texts)
    k = body.top_k
    return {"predictions": [{"label": p.label, "probabilities": p.probabilities,
                             "top_k": [[name, prob] for name, prob in p.top_k[:k]]} for p in predictions],
            "model": service.model_name}


@router.post("/v1/explain", response_model=ExplainResponse, responses=ERROR_RESPONSES,
             summary="Which tokens decided the label (integrated gradients)", tags=["classify"])
async def explain_text(body: Annotated[ExplainRequest, Body()], service: Service) -> dict[str, Any]:
    """Per-token integrated-gradients attributions for one text (needs the ``explain`` extra, Captum)."""
    service.require_ready()
    limit = service.settings.max_text_chars
    if len(body.text) > limit:
        raise ApiError(413, "text_too_long", f"text has {len(body.text)} characters, over the limit of {limit}")
    if body.label is not None and body.label not in service.predictor.label_names:
        raise ApiError(422, "unknown_label", f"unknown label {body.label!r}; GET /v1/model lists the labels")
    result = await service.explain(body.text, body.label, body.steps)
    return {"label": result.label, "target": result.target, "tokens": result.tokens,
            "attributions": result.attributions, "delta": result.delta, "chunk": result.chunk}


@router.get("/v1/model", response_model=ModelInfo, responses={503: ERROR_RESPONSES[503]}, tags=["model"],
            summary="The model: labels, backbone, limits and recorded metrics")
async def model_info(service: Service) -> dict[str, Any]:
    service.require_ready()
    return service.model_info()


@router.get("/healthz", response_model=Status, tags=["operations"], summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Status, responses={503: ERROR_RESPONSES[503]}, tags=["operations"],
            summary="The model is loaded and warmed up")
async def readyz(service: Service) -> dict[str, str]:
    service.require_ready()
    return {"status": "ready"}


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics (text format)",
            response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}})
async def metrics(service: Service) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    # The page loads nothing from elsewhere; the policy makes sure it stays that way.
    return FileResponse(WEB_DIR / "index.html", headers={
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:"})


async def http_error(request: Request, err: HTTPException) -> JSONResponse:
    """Any HTTP error (ours, FastAPI's or Starlette's 404/405) as the JSON error body."""
    code = getattr(err, "code", None) or STATUS_CODES.get(err.status_code, "error")
    return error_response(err.status_code, code, str(err.detail), getattr(err, "headers", None))


async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """400 for malformed JSON, 422 for valid JSON of the wrong shape."""
    errors = err.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (detail.get("ctx") or {}).get("error", "JSON decode error")
        return error_response(400, "malformed_json", f"request body is not valid JSON: {reason}")
    return error_response(422, "invalid_request", validation_message(errors))


async def internal_error(request: Request, err: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered with a bare 500 (never the traceback)."""
    log.exception("gpt2clf: internal error on %s", request.url.path)
    return error_response(500, "internal_error", "internal error; see the server log")


EXCEPTION_HANDLERS: dict[Any, Callable[..., Any]] = {
    HTTPException: http_error, RequestValidationError: invalid_request, Exception: internal_error}


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's ModelService runs (batcher up, model loaded and warmed) while the app does."""
    await app.state.service.start()
    try:
        yield
    finally:
        await app.state.service.stop()


def openapi_with_limits(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI schema, with this server's limits (answered with 413) and, once known, its labels."""
    if app.openapi_schema is None:
        settings, predictor = app.state.service.settings, app.state.service.predictor
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        texts = schema["components"]["schemas"]["ClassifyRequest"]["properties"]["texts"]
        texts["maxItems"] = settings.max_texts
        texts["items"]["maxLength"] = settings.max_text_chars
        explain_body = schema["components"]["schemas"]["ExplainRequest"]["properties"]
        explain_body["text"]["maxLength"] = settings.max_text_chars
        if predictor is not None:  # the labels are known: the schema lists them
            explain_body["label"] = {"anyOf": [{"enum": list(predictor.label_names), "type": "string"},
                                               {"type": "null"}],
                                     "description": explain_body["label"].get("description", "")}
        app.openapi_schema = schema
    return app.openapi_schema


# ---------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------
def create_app(predictor_or_folder: Any, settings: ServeSettings | None = None, *,
               model_dir: str | Path | None = None, predictor_kwargs: dict[str, Any] | None = None) -> FastAPI:
    """A FastAPI app serving a :class:`~gpt2clf.infer.predictor.Predictor` or a model folder.

    A folder is checked at once (a missing one raises :class:`ModelLoadError`) and loaded in
    the background when the app starts (its lifespan: inside ``with TestClient(app):`` or
    under uvicorn) with ``Predictor.from_folder(folder, **predictor_kwargs)``; ``/readyz``
    answers 503 until it is loaded and warmed up. A ``Predictor`` is warmed up during
    startup instead, so the app takes requests ready; ``model_dir`` then names its folder,
    whose ``config.json`` feeds ``/v1/model``.

    Example::

        >>> from fastapi.testclient import TestClient  # doctest: +SKIP
        >>> with TestClient(create_app("runs/20ng/model")) as client:  # doctest: +SKIP
        ...     client.post("/v1/classify", json={"texts": ["GPU drivers for X11?"]}).json()
    """
    settings = settings or ServeSettings()
    service = ModelService(predictor_or_folder, settings, model_dir=model_dir,
                           predictor_kwargs=predictor_kwargs or {})
    app = FastAPI(title="gpt2clf", version="1", lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS,
                  description="Text classification with a fine-tuned gpt2clf model. The web page is at /.")
    app.state.service = service
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.openapi = functools.partial(openapi_with_limits, app)  # type: ignore[method-assign]
    # FastAPI may keep an included router as one entry of app.routes: take the paths from both.
    routes = [*app.routes, *router.routes]
    known_routes = {route.path for route in routes if isinstance(getattr(route, "path", None), str)}
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics, routes=known_routes)  # outermost: sees all
    return app


# ---------------------------------------------------------------------------------------
# running it
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_signal_handlers() -> Iterator[None]:
    """Make SIGTERM and SIGINT harmless after uvicorn's graceful shutdown.

    uvicorn handles both signals while it runs, and afterwards raises the caught signal
    again against the handlers it found; with Python's defaults that kills the process
    (SIGTERM) or raises KeyboardInterrupt (SIGINT) after a clean shutdown. With these
    no-op handlers underneath, a signalled server returns normally and exits 0.
    """
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def running_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                      startup_timeout_s: float = 120.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a background thread; yield its base URL; stop on exit.

    For tests, notebooks and scripts (signals stay with the main thread). ``port=0`` picks
    a free port.

    Example::

        >>> with running_in_thread(create_app("runs/20ng/model")) as url:  # doctest: +SKIP
        ...     httpx.get(f"{url}/readyz").json()
        {'status': 'ready'}
    """
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="gpt2clf-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.02)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(startup_timeout_s)


def serve(model_dir: str | Path, settings: ServeSettings | None = None, *, host: str = SERVE_HOST,
          port: int = SERVE_PORT, batch_size: int = InferenceSettings.batch_size,
          device: str | None = InferenceSettings.device, precision: str = InferenceSettings.precision,
          log_level: str = "info") -> None:
    """Serve ``model_dir`` over HTTP until SIGTERM or SIGINT, then shut down gracefully.

    The model is loaded and warmed up before the port opens (a bad folder raises a
    :class:`~gpt2clf.errors.UserError`, and ``/readyz`` is 200 as soon as anything answers).

    Example::

        >>> serve("runs/20ng/model", ServeSettings(max_wait_ms=10), port=8080)  # doctest: +SKIP
    """
    from gpt2clf.infer.predictor import Predictor

    settings = settings or ServeSettings()
    if not (0 <= port <= 65535):
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    check_batch_size(batch_size, "--batch-size")
    folder = check_model_folder(model_dir)
    predictor = Predictor.from_folder(folder, batch_size=batch_size, device=device, precision=precision)
    app = create_app(predictor, settings, model_dir=folder)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            # in-flight requests get their full timeout to finish, and no more
                            timeout_graceful_shutdown=math.ceil(settings.request_timeout_s) + 5)
    server = uvicorn.Server(config)
    with quiet_signal_handlers():
        server.run()
    if not server.started:
        raise UserError(f"could not serve on {host}:{port} (is the port in use? see the log above)")
