"""An HTTP API and a web page for a trained model folder: ``gpt2clf serve``.

Data flow::

    HTTP request --> MetricsMiddleware (counts, latency) --> BodyLimitMiddleware (413 on
    Content-Length or on the bytes actually streamed, after draining the rest)
    --> ApiKeyMiddleware, with a key (401 without "Authorization: Bearer <key>" on every path
    but /healthz, /readyz, the page and the schema; gpt2clf.serve.auth)
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
* :func:`serve` never listens beyond loopback without an API key unless told to
  (``allow_unauthenticated``); the key appears in no log, message, metric or response.
* On SIGTERM or SIGINT, uvicorn stops accepting, in-flight requests finish, the batcher
  drains its queue and the process exits with code 0.

Example::

    >>> from gpt2clf.serve.app import ServeSettings, create_app  # doctest: +SKIP
    >>> app = create_app("runs/20ng/model", ServeSettings(max_wait_ms=5))  # doctest: +SKIP
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000), or from a shell:
    >>> # gpt2clf serve runs/20ng/model --port 8000
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

from gpt2clf.config import SERVE_HOST, SERVE_PORT, InferenceSettings, ServeAccess, ServeSettings
from gpt2clf.errors import ConfigError, UserError
from gpt2clf.serve.auth import (
    ApiKey,
    ApiKeyMiddleware,
    check_api_key,
    check_exposure,
    declare_bearer_auth,
    read_api_key,
)
from gpt2clf.serve.extra import MissingExtraError, missing_extra
from gpt2clf.serve.http_errors import EXCEPTION_HANDLERS, ApiError
from gpt2clf.serve.limits import BodyLimitMiddleware, check_text_limits
from gpt2clf.serve.metrics import MetricsMiddleware, ServiceMetrics
from gpt2clf.serve.schemas import (
    ERROR_RESPONSES,
    ClassifyRequest,
    ClassifyResponse,
    ExplainRequest,
    ExplainResponse,
    ModelInfo,
    Status,
)
from gpt2clf.serve.service import ModelService, check_model_folder

try:
    import uvicorn
    from fastapi import APIRouter, Body, Depends, FastAPI, Request
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
except ImportError as err:  # pragma: no cover - exercised by a test that hides fastapi
    raise missing_extra(err) from err

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
    "ServeAccess",
    "ServeSettings",
    "ServiceMetrics",
    "create_app",
    "router",
    "running_in_thread",
    "serve",
]

WEB_DIR = Path(__file__).parent / "web"


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


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The app's ModelService runs (batcher up, model loaded and warmed) while the app does."""
    await app.state.service.start()
    try:
        yield
    finally:
        await app.state.service.stop()


def openapi_with_limits(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI schema, with this server's limits (answered with 413), with a key its bearer scheme,
    and without a key, once known, its labels (with one they are only for those who hold it)."""
    if app.openapi_schema is None:
        settings, predictor = app.state.service.settings, app.state.service.predictor
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        texts = schema["components"]["schemas"]["ClassifyRequest"]["properties"]["texts"]
        texts["maxItems"] = settings.max_texts
        texts["items"]["maxLength"] = settings.max_text_chars
        explain_body = schema["components"]["schemas"]["ExplainRequest"]["properties"]
        explain_body["text"]["maxLength"] = settings.max_text_chars
        if predictor is not None and not app.state.api_key_required:  # labels are known, and public
            explain_body["label"] = {"anyOf": [{"enum": list(predictor.label_names), "type": "string"},
                                               {"type": "null"}],
                                     "description": explain_body["label"].get("description", "")}
        if app.state.api_key_required:
            declare_bearer_auth(schema)
        app.openapi_schema = schema
    return app.openapi_schema


# ---------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------
def create_app(predictor_or_folder: Any, settings: ServeSettings | None = None, *,
               model_dir: str | Path | None = None, predictor_kwargs: dict[str, Any] | None = None,
               api_key: str | None = None) -> FastAPI:
    """A FastAPI app serving a :class:`~gpt2clf.infer.predictor.Predictor` or a model folder.

    A folder is checked at once (a missing one raises :class:`ModelLoadError`) and loaded in
    the background when the app starts (its lifespan: inside ``with TestClient(app):`` or
    under uvicorn) with ``Predictor.from_folder(folder, **predictor_kwargs)``; ``/readyz``
    answers 503 until it is loaded and warmed up. A ``Predictor`` is warmed up during
    startup instead, so the app takes requests ready; ``model_dir`` then names its folder,
    whose ``config.json`` feeds ``/v1/model``.

    With ``api_key``, every path but those open by design (:mod:`gpt2clf.serve.auth`) answers 401
    without ``Authorization: Bearer <api_key>``. The app itself listens nowhere: whoever runs it
    under their own ASGI server decides who can reach it (:func:`serve` refuses non-loopback
    addresses without a key; so does :func:`running_in_thread`).

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
    app.state.api_key_required = api_key is not None  # the key itself stays in the middleware only
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.openapi = functools.partial(openapi_with_limits, app)  # type: ignore[method-assign]
    # FastAPI may keep an included router as one entry of app.routes: take the paths from both.
    routes = [*app.routes, *router.routes]
    known_routes = {route.path for route in routes if isinstance(getattr(route, "path", None), str)}
    if api_key is not None:  # inside the body limit: an oversized body is 413 with or without a key
        app.add_middleware(ApiKeyMiddleware, api_key=ApiKey(api_key, "api_key"))  # checked now
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
def running_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 120.0,
                      allow_unauthenticated: bool = False) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a background thread; yield its base URL; stop on exit.

    For tests, notebooks and scripts (signals stay with the main thread). ``port=0`` picks
    a free port. Like :func:`serve`, it refuses a host other than loopback for an app
    without an API key unless ``allow_unauthenticated``.

    Example::

        >>> with running_in_thread(create_app("runs/20ng/model")) as url:  # doctest: +SKIP
        ...     httpx.get(f"{url}/readyz").json()
        {'status': 'ready'}
    """
    check_exposure(host, app.state.api_key_required, allow_unauthenticated)
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
          port: int = SERVE_PORT, inference: InferenceSettings | None = None, access: ServeAccess | None = None,
          api_key: str | None = None, log_level: str = "info") -> None:
    """Serve ``model_dir`` over HTTP until SIGTERM or SIGINT, then shut down gracefully.

    The API key is ``api_key`` if given, else read as ``gpt2clf serve`` reads it
    (``access.api_key_file``, else ``GPT2CLF_API_KEY``; :func:`~gpt2clf.serve.auth.read_api_key`);
    none means no key. A ``host`` other than loopback without a key raises
    :class:`~gpt2clf.serve.auth.ExposedServerError` unless ``access.allow_unauthenticated``
    (then one :class:`~gpt2clf.errors.SecurityWarning`). These checks come first; then the
    model is loaded and warmed up before the port opens (a bad folder raises a
    :class:`~gpt2clf.errors.UserError`, and ``/readyz`` is 200 as soon as anything answers).

    Example::

        >>> serve("runs/20ng/model", ServeSettings(max_wait_ms=10), port=8080)  # doctest: +SKIP
        >>> serve("runs/20ng/model", host="0.0.0.0", access=ServeAccess(api_key_file="key.txt"))  # doctest: +SKIP
    """
    from gpt2clf.infer.predictor import Predictor

    settings, inference, access = settings or ServeSettings(), inference or InferenceSettings(), access or ServeAccess()
    if not (0 <= port <= 65535):
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    key = check_api_key(api_key, "api_key") if api_key is not None else read_api_key(access.api_key_file)
    check_exposure(host, key is not None, access.allow_unauthenticated)
    folder = check_model_folder(model_dir)
    predictor = Predictor.from_folder(folder, batch_size=inference.batch_size, device=inference.device,
                                      precision=inference.precision)
    app = create_app(predictor, settings, model_dir=folder, api_key=key)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            # in-flight requests get their full timeout to finish, and no more
                            timeout_graceful_shutdown=math.ceil(settings.request_timeout_s) + 5)
    server = uvicorn.Server(config)
    with quiet_signal_handlers():
        server.run()
    if not server.started:
        raise UserError(f"could not serve on {host}:{port} (is the port in use? see the log above)")
