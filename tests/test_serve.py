"""The HTTP service (``gpt2clf serve``): endpoints, errors, micro-batching, overload, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from prometheus_client.parser import text_string_to_metric_families

from gpt2clf import cli
from gpt2clf.serve.app import BodyLimitMiddleware, ServeAccess, ServeSettings, create_app, running_in_thread

REPO_ROOT = Path(__file__).parents[1]
TEXTS = ["My X server crashes when I resize an xterm",
         "The shuttle launch was delayed by weather again.",
         "ok",
         "Which GPU drivers work with X11 on a laptop with two monitors attached to it, and why does the "
         "second one flicker whenever the window manager redraws?"]
TOLERANCE = 1e-5
WAIT_GUARD_S = 60  # only a guard against hanging forever; tests never assert on time


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path):
    from gpt2clf.infer.predictor import Predictor

    # float32: a text's probabilities are then independent of its batch neighbours to 1e-5
    # (under bf16 autocast, on CPUs that have it, other batch shapes round differently).
    return Predictor.from_folder(tiny_model_dir, device="cpu", precision="32-true")


@contextlib.contextmanager
def running_client(predictor: Any, model_dir: Path, api_key: str | None = None, **settings: Any
                   ) -> Iterator[TestClient]:
    """A TestClient over a started app (lifespan: batcher up, model warmed)."""
    app = create_app(predictor, ServeSettings(**settings), model_dir=model_dir, api_key=api_key)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.01)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "Traceback" not in body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body


class GatedPredictor:
    """The real predictor, except that predict waits at a gate the test opens (no sleeps)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict(self, texts, top_k=3):
        texts = list(texts)
        self.calls.append(texts)
        self.entered.set()
        if not self.gate.wait(WAIT_GUARD_S):
            raise RuntimeError("test gate never opened")
        return self.inner.predict(texts, top_k=top_k)

    def hold(self, client: Any, text: str, results: list) -> threading.Thread:
        """Close the gate and start one request for ``text``; return once it is inside the model."""
        self.gate.clear()
        self.calls.clear()
        self.entered.clear()
        running = threading.Thread(target=lambda: results.append(
            client.post("/v1/classify", json={"texts": [text]})))
        running.start()
        self.entered.wait(WAIT_GUARD_S)
        return running


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


# ---------------------------------------------------------------------------------------
# the happy path
# ---------------------------------------------------------------------------------------
def test_classify_equals_cli_predict_json(predictor, tiny_model_dir: Path, capsys) -> None:
    assert cli.main(["predict", str(tiny_model_dir), "--json", "--device", "cpu", "--precision", "32-true", "--top-k",
                     "2", *TEXTS]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with running_client(predictor, tiny_model_dir) as client:
        response = client.post("/v1/classify", json={"texts": TEXTS, "top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == tiny_model_dir.parent.name  # runs/NAME/model is called NAME
    assert len(body["predictions"]) == len(TEXTS)
    for got, want in zip(body["predictions"], expected, strict=True):
        assert got["label"] == want["label"]
        assert set(got["probabilities"]) == {"a", "b", "c"}
        for label, p in want["probabilities"].items():
            assert abs(got["probabilities"][label] - p) <= TOLERANCE
        assert [name for name, _ in got["top_k"]] == [t["label"] for t in want["top_k"]]
        for (_, p), t in zip(got["top_k"], want["top_k"], strict=True):
            assert abs(p - t["probability"]) <= TOLERANCE


def test_top_k_above_the_label_count_returns_every_label(predictor, tiny_model_dir: Path) -> None:
    with running_client(predictor, tiny_model_dir) as client:
        body = client.post("/v1/classify", json={"texts": ["hello"], "top_k": 50}).json()
    top = body["predictions"][0]["top_k"]
    assert sorted(name for name, _ in top) == ["a", "b", "c"]
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert abs(sum(body["predictions"][0]["probabilities"].values()) - 1) < 1e-5


def test_model_health_and_readiness(predictor, tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "reviews" / "model"
    shutil.copytree(tiny_model_dir, folder)
    meta = json.loads((folder / "config.json").read_text())
    meta["extra"] = {"config": {"max_length": 64, "long_documents": "chunk", "chunk_stride": 32,
                                "fusion": "tfidf", "data_dir": "/secret/path", "seed": 7},
                     "test_metrics": {"accuracy": 0.75, "macro_f1": 0.7, "loss": 0.9, "documents": 40}}
    (folder / "config.json").write_text(json.dumps(meta))
    with running_client(predictor, folder) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ready"}
        info = client.get("/v1/model").json()
    assert info["model"] == "reviews"
    assert info["labels"] == ["a", "b", "c"]
    assert info["backbone"] == meta["backbone_name"]
    assert info["max_length"] == 64
    assert info["training"] == {"max_length": 64, "long_documents": "chunk", "chunk_stride": 32, "fusion": "tfidf"}
    assert info["test_metrics"]["accuracy"] == 0.75
    assert info["serving"]["max_texts"] == 64 and info["serving"]["micro_batching"] is True


def test_route_handlers_are_plain_functions_over_a_model_service(predictor, tiny_model_dir: Path) -> None:
    from gpt2clf.serve.app import ApiError, ClassifyRequest, ModelService, classify, readyz

    service = ModelService(predictor, ServeSettings(max_texts=2), model_dir=tiny_model_dir, predictor_kwargs={})

    async def call_without_http() -> tuple[ApiError, dict, ApiError]:
        with pytest.raises(ApiError) as not_ready:
            await readyz(service)
        await service.start()
        try:
            answer = await classify(ClassifyRequest(texts=["hello", "world"], top_k=1), service)
            with pytest.raises(ApiError) as too_many:
                await classify(ClassifyRequest(texts=["a", "b", "c"]), service)
        finally:
            await service.stop()
        return not_ready.value, answer, too_many.value

    not_ready, answer, too_many = asyncio.run(call_without_http())
    assert not_ready.status_code == 503 and not_ready.code == "not_ready"
    assert answer["model"] == tiny_model_dir.parent.name
    assert [len(p["top_k"]) for p in answer["predictions"]] == [1, 1]
    assert too_many.status_code == 413 and too_many.code == "too_many_texts"


def test_readyz_is_503_until_the_model_is_loaded_and_warm(tiny_model_dir: Path, monkeypatch) -> None:
    from gpt2clf.infer.predictor import Predictor

    release = threading.Event()
    real_from_folder = Predictor.from_folder

    def slow_from_folder(folder, **kwargs):
        release.wait(WAIT_GUARD_S)
        return real_from_folder(folder, **kwargs)

    monkeypatch.setattr(Predictor, "from_folder", slow_from_folder)
    app = create_app(tiny_model_dir, predictor_kwargs={"device": "cpu"})
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        not_ready = client.get("/readyz")
        assert_error(not_ready, 503, "not_ready")
        assert not_ready.headers["retry-after"]
        assert_error(client.post("/v1/classify", json={"texts": ["x"]}), 503, "not_ready")
        release.set()
        wait_until(lambda: client.get("/readyz").status_code == 200, "readiness")
        assert client.post("/v1/classify", json={"texts": ["x"]}).status_code == 200


def test_page_and_static_files_are_served(predictor, tiny_model_dir: Path) -> None:
    with running_client(predictor, tiny_model_dir) as client:
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert '<label for="texts">' in page.text
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/static/style.css").status_code == 200
        assert "/v1/classify" in client.get("/openapi.json").json()["paths"]
        assert client.get("/docs").status_code == 200


# ---------------------------------------------------------------------------------------
# errors: always JSON, always the right 4xx
# ---------------------------------------------------------------------------------------
def test_client_errors_are_json_with_the_right_status(predictor, tiny_model_dir: Path) -> None:
    with running_client(predictor, tiny_model_dir, max_texts=3, max_text_chars=100, max_body_bytes=1000) as client:
        post = client.post
        assert_error(post("/v1/classify", content=b'{"texts": ["a"', headers={"content-type": "application/json"}),
                     400, "malformed_json")
        assert_error(post("/v1/classify", json={"texts": []}), 422, "invalid_request")
        assert_error(post("/v1/classify", json={}), 422, "invalid_request")
        assert_error(post("/v1/classify", json={"texts": "not a list"}), 422)
        assert_error(post("/v1/classify", json={"texts": [1, 2]}), 422)
        assert_error(post("/v1/classify", json={"texts": ["a"], "top_k": 0}), 422)
        assert_error(post("/v1/classify", json={"texts": ["a"], "top_k": "3"}), 422)
        assert_error(post("/v1/classify", json={"texts": ["a"], "top_k": 2.5}), 422)
        assert_error(post("/v1/classify", json={"texts": ["a"], "unknown": 1}), 422)
        assert_error(post("/v1/classify", json=["a"]), 422)
        assert_error(post("/v1/classify", json={"texts": ["a"] * 4}), 413, "too_many_texts")
        assert_error(post("/v1/classify", json={"texts": ["ok", "x" * 101]}), 413, "text_too_long")
        # over the body limit by Content-Length ...
        assert_error(post("/v1/classify", json={"texts": ["y" * 600, "z" * 600]}), 413, "body_too_large")
        # ... and by the bytes that actually arrive (chunked: no Content-Length at all)
        chunks = iter([b'{"texts": ["', b"w" * 700, b'", "', b"v" * 700, b'"]}'])
        assert_error(post("/v1/classify", content=chunks, headers={"content-type": "application/json"}),
                     413, "body_too_large")
        assert_error(client.get("/v1/classify"), 405, "method_not_allowed")
        assert_error(client.put("/healthz"), 405)
        assert_error(client.get("/no/such/path"), 404, "not_found")
        # the limits are exact: at the limit is fine
        assert post("/v1/classify", json={"texts": ["ok", "x" * 100, "b"]}).status_code == 200


# ---------------------------------------------------------------------------------------
# oversized bodies over a real socket: every client reads the 413
# ---------------------------------------------------------------------------------------
BODY_LIMIT = 10_000  # small, so that three times the limit is quick to send; BIG_BODY overflows socket buffers
BIG_BODY = 20_000_000


@pytest.fixture(scope="module")
def limited_server(predictor, tiny_model_dir: Path) -> Iterator[str]:
    """uvicorn on a real port (not the in-process TestClient): resets happen only on sockets."""
    app = create_app(predictor, ServeSettings(max_body_bytes=BODY_LIMIT), model_dir=tiny_model_dir)
    with running_in_thread(app) as url:
        yield url


def assert_body_too_large(status: int, content_type: str, body: bytes) -> None:
    assert status == 413, body[:300]
    assert content_type.startswith("application/json")
    assert json.loads(body) == {"error": {"code": "body_too_large",
                                          "message": f"request body is over the limit of {BODY_LIMIT} bytes"}}


def post_oversized(client: str, url: str, body: bytes) -> tuple[int, str, bytes]:
    """POST ``body`` to /v1/classify with one HTTP library; (status, content type, body) of the answer."""
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if client == "urllib":
        try:
            with urllib.request.urlopen(urllib.request.Request(url + "/v1/classify", data=body, headers=headers),
                                        timeout=WAIT_GUARD_S) as answer:
                return answer.status, answer.headers["content-type"], answer.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers["content-type"], err.read()
    if client == "requests":
        requests = pytest.importorskip("requests")
        answer = requests.post(url + "/v1/classify", data=body, headers=headers, timeout=WAIT_GUARD_S)
    elif client == "httpx":
        answer = httpx.post(url + "/v1/classify", content=body, headers=headers, timeout=WAIT_GUARD_S)
    else:  # httpx with a generator: chunked, no Content-Length, so the limit is found while reading
        parts = (body[i:i + 65536] for i in range(0, len(body), 65536))
        answer = httpx.post(url + "/v1/classify", content=parts, headers=headers, timeout=WAIT_GUARD_S)
    return answer.status_code, answer.headers["content-type"], answer.content


@pytest.mark.parametrize("size", [3 * BODY_LIMIT, BIG_BODY])
@pytest.mark.parametrize("client", ["urllib", "httpx", "httpx-chunked", "requests"])
def test_an_oversized_body_gets_the_413_whatever_the_client(limited_server: str, client: str, size: int) -> None:
    body = json.dumps({"texts": ["x" * size]}).encode()
    assert_body_too_large(*post_oversized(client, limited_server, body))
    # the server is unharmed and still answers on new connections
    assert httpx.post(f"{limited_server}/v1/classify", json={"texts": ["ok"]}, timeout=WAIT_GUARD_S).status_code == 200


def raw_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one response on ``sock``, read until the server closes it."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def request_head(url: str, length: int, extra: str = "") -> tuple[tuple[str, int], bytes]:
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n")
    return (host, int(port)), head.encode()


def test_other_clients_are_answered_while_an_oversized_body_drains(limited_server: str) -> None:
    address, head = request_head(limited_server, BIG_BODY)
    with socket.create_connection(address, timeout=WAIT_GUARD_S) as slow:
        slow.sendall(head + b"x" * 100_000)  # a first part; the rest is held back meanwhile
        answer = httpx.post(f"{limited_server}/v1/classify", json={"texts": ["hello"]}, timeout=WAIT_GUARD_S)
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in {"a", "b", "c"}
        assert httpx.get(f"{limited_server}/healthz", timeout=WAIT_GUARD_S).status_code == 200
        slow.sendall(b"x" * (BIG_BODY - 100_000))
        status, headers, body = raw_response(slow)
    assert_body_too_large(status, headers["content-type"], body)
    assert headers["connection"] == "close"


def test_expect_100_continue_gets_the_413_without_sending_the_body(limited_server: str) -> None:
    # curl asks first for bodies over 1 MB; the answer must be the 413, not "100 Continue"
    address, head = request_head(limited_server, 3 * BODY_LIMIT, "Expect: 100-continue\r\n")
    with socket.create_connection(address, timeout=WAIT_GUARD_S) as client:
        client.sendall(head)
        status, headers, body = raw_response(client)
    assert_body_too_large(status, headers["content-type"], body)


def test_draining_an_oversized_body_is_bounded_in_bytes_and_time() -> None:
    async def unreachable_app(scope, receive, send) -> None:
        raise AssertionError("an oversized body must not reach the app")

    def answer(receive, declared: int, **bounds: Any) -> dict:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/classify",
                 "headers": [(b"content-length", str(declared).encode())]}
        middleware = BodyLimitMiddleware(unreachable_app, 100, **bounds)
        asyncio.run(asyncio.wait_for(middleware(scope, receive, send), WAIT_GUARD_S))
        assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"]
        return json.loads(sent[1]["body"])["error"]

    reads = 0

    async def endless() -> dict:  # a client that keeps sending past what it declared
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 100, "more_body": True}

    assert answer(endless, 900, drain_max_bytes=1000)["code"] == "body_too_large"
    assert 10 <= reads <= 12  # about drain_max_bytes, then it stops reading

    async def silent() -> dict:  # a client that stops sending
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    assert answer(silent, 5000, drain_timeout_s=0.05)["code"] == "body_too_large"

    async def unread() -> dict:
        raise AssertionError("a body declared over the drain bound is not read at all")

    assert answer(unread, 10**12)["code"] == "body_too_large"


# ---------------------------------------------------------------------------------------
# micro-batching
# ---------------------------------------------------------------------------------------
def test_merged_batches_give_the_same_numbers_as_texts_alone(predictor, tiny_model_dir: Path) -> None:
    texts = [*TEXTS, "a b c d e f g", "Lorem ipsum " * 20, ""]

    async def concurrently(app) -> list[dict]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                responses = await asyncio.gather(*(client.post("/v1/classify", json={"texts": [t], "top_k": 3})
                                                   for t in texts))
                metrics = (await client.get("/metrics")).text
        assert all(r.status_code == 200 for r in responses)
        return [r.json()["predictions"][0] for r in responses], metrics

    # a long wait and a large budget: every request should join the first one's batch
    merged_app = create_app(predictor, ServeSettings(max_wait_ms=2000, max_batch_tokens=100_000),
                            model_dir=tiny_model_dir)
    merged, metrics = asyncio.run(concurrently(merged_app))
    samples = metric_samples(metrics)
    model_calls = samples[("gpt2clf_batch_requests_count", ())]  # the warm-up call is not a batch
    assert model_calls < len(texts), "no two requests shared a batch"
    assert samples[("gpt2clf_batch_texts_sum", ())] == len(texts)

    with running_client(predictor, tiny_model_dir, micro_batching=False) as client:
        alone = [client.post("/v1/classify", json={"texts": [t], "top_k": 3}).json()["predictions"][0]
                 for t in texts]
    for together, single in zip(merged, alone, strict=True):
        assert together["label"] == single["label"]
        for label, p in single["probabilities"].items():
            assert abs(together["probabilities"][label] - p) <= TOLERANCE


def test_batches_respect_the_token_budget(predictor, tiny_model_dir: Path) -> None:
    gated = GatedPredictor(predictor)
    with running_client(gated, tiny_model_dir, max_batch_tokens=64, max_wait_ms=0) as client:
        results: list[httpx.Response] = []
        first = gated.hold(client, "x", results)  # the first request runs; the next ones queue behind it
        service = client.app.state.service
        others = [threading.Thread(target=lambda t=t: results.append(
            client.post("/v1/classify", json={"texts": [t] * 2}))) for t in ("word " * 20, "short", "tiny")]
        for thread in others:
            thread.start()
        wait_until(lambda: len(service.batcher.queue) == 3, "three queued requests")
        gated.gate.set()
        for thread in [first, *others]:
            thread.join(WAIT_GUARD_S)
    assert [r.status_code for r in results] == [200] * 4
    for call in gated.calls[1:]:
        costs = service.token_costs(call)
        assert len(call) * max(costs) <= 64 or len(call) == 2  # a lone request may exceed the budget
        assert costs == sorted(costs)  # handed to the model length-sorted
    assert len(gated.calls) >= 3  # 1 + the queued ones in at least two batches (budget 64 tokens)


# ---------------------------------------------------------------------------------------
# overload: a bounded queue and timeouts
# ---------------------------------------------------------------------------------------
def test_a_full_queue_answers_503_with_retry_after(predictor, tiny_model_dir: Path) -> None:
    gated = GatedPredictor(predictor)
    with running_client(gated, tiny_model_dir, max_queue=1, max_wait_ms=0) as client:
        service = client.app.state.service
        results: list[httpx.Response] = []
        running = gated.hold(client, "hello", results)
        queued = threading.Thread(target=lambda: results.append(client.post("/v1/classify", json={"texts": ["hello"]})))
        queued.start()
        wait_until(lambda: len(service.batcher.queue) == 1, "one queued request")
        rejected = client.post("/v1/classify", json={"texts": ["hello"]})
        assert_error(rejected, 503, "queue_full")
        assert int(rejected.headers["retry-after"]) >= 1
        depth = metric_samples(client.get("/metrics").text)[("gpt2clf_queue_depth", ())]
        assert depth == 1
        gated.gate.set()
        running.join(WAIT_GUARD_S)
        queued.join(WAIT_GUARD_S)
        assert [r.status_code for r in results] == [200, 200]


def test_timed_out_requests_leave_nothing_behind(predictor, tiny_model_dir: Path) -> None:
    gated = GatedPredictor(predictor)
    with running_client(gated, tiny_model_dir, request_timeout_s=0.2, max_wait_ms=0) as client:
        service = client.app.state.service
        results: list[httpx.Response] = []
        running = gated.hold(client, "stuck in the model", results)
        # queued behind the stuck batch, it times out and must leave the queue
        assert_error(client.post("/v1/classify", json={"texts": ["stuck in the queue"]}), 504, "timeout")
        running.join(WAIT_GUARD_S)
        assert_error(results[0], 504, "timeout")
        assert len(service.batcher.queue) == 0
        gated.gate.set()
        ok = client.post("/v1/classify", json={"texts": ["after"]})
        assert ok.status_code == 200
        assert len(ok.json()["predictions"]) == 1
        samples = metric_samples(client.get("/metrics").text)
    assert samples[("gpt2clf_rejected_requests_total", (("reason", "timeout"),))] == 2
    assert samples[("gpt2clf_queue_depth", ())] == 0
    # the queued request's text never reached the model
    assert all("stuck in the queue" not in call for call in gated.calls)


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------
def test_metrics_are_prometheus_text_and_count_requests(predictor, tiny_model_dir: Path) -> None:
    with running_client(predictor, tiny_model_dir) as client:
        for _ in range(3):
            assert client.post("/v1/classify", json={"texts": ["a", "b"]}).status_code == 200
        client.post("/v1/classify", json={"texts": []})
        client.get("/random/scanner/path")
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = metric_samples(response.text)
    key = ("gpt2clf_http_requests_total", (("method", "POST"), ("route", "/v1/classify"), ("status", "200")))
    assert samples[key] == 3
    assert samples[("gpt2clf_http_requests_total",
                    (("method", "POST"), ("route", "/v1/classify"), ("status", "422")))] == 1
    assert samples[("gpt2clf_http_requests_total", (("method", "GET"), ("route", "other"), ("status", "404")))] == 1
    assert samples[("gpt2clf_http_request_duration_seconds_count", (("route", "/v1/classify"),))] == 4
    assert samples[("gpt2clf_batch_texts_sum", ())] == 3 * 2
    assert ("gpt2clf_queue_depth", ()) in samples


def test_two_apps_in_one_process_keep_separate_metrics(predictor, tiny_model_dir: Path) -> None:
    with running_client(predictor, tiny_model_dir) as first, running_client(predictor, tiny_model_dir) as second:
        first.get("/healthz")
        key = ("gpt2clf_http_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200")))
        assert metric_samples(first.get("/metrics").text)[key] == 1
        assert key not in metric_samples(second.get("/metrics").text)


# ---------------------------------------------------------------------------------------
# property-based fuzzing of the OpenAPI schema
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api_schema(predictor, tiny_model_dir: Path):
    app = create_app(predictor, ServeSettings(max_texts=8, max_text_chars=2000), model_dir=tiny_model_dir)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_fuzzed_requests_never_get_a_server_error(api_schema, mode) -> None:
    # Hypothesis over schemathesis' strategy for every operation: valid requests (positive)
    # and requests that break the schema (negative). (The @schema.parametrize() route needs a
    # schema at import time, or from_fixture, which pytest 9 breaks: it reads node._nodeid.)
    @given(case=api_schema.as_strategy(generation_mode=mode))
    @hypothesis_settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        response = case.call()
        assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
        if response.status_code == 413:
            # Our documented answer to texts over the limits; schemathesis expects a 4xx from its own list.
            assert response.json()["error"]["code"] in {"too_many_texts", "text_too_long", "body_too_large"}
        else:
            case.validate_response(response)  # status codes, content types and bodies as documented

    check()


# ---------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------
def test_serve_with_a_bad_model_folder_is_a_user_error(tmp_path: Path, capsys) -> None:
    assert cli.main(["serve", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt2clf: error: model folder not found") and err.count("\n") == 1
    assert cli.main(["serve", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("settings_class", [ServeSettings, ServeAccess])
def test_serve_help_lists_every_setting_with_its_docstring_and_default(capsys, monkeypatch, settings_class) -> None:
    from gpt2clf.config import field_help

    monkeypatch.setenv("COLUMNS", "1000")  # no line wrapping (which may split a word at a hyphen)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--help"])
    assert exit_.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    docs, defaults = field_help(settings_class), settings_class()
    fields = dataclasses.fields(settings_class)
    assert set(docs) == {f.name for f in fields} and all(docs.values()), "every field needs a docstring"
    for field in fields:
        name = "--" + field.name.replace("_", "-")
        usage = f"{name}, --no-{name[2:]}" if field.type == "bool" else f"{name} {field.name.upper()}"
        assert f"{usage} {docs[field.name]} (default: {getattr(defaults, field.name)})" in shown, field.name


def test_serve_flags_build_the_settings_back(tiny_model_dir: Path) -> None:
    args = cli.build_parser().parse_args(["serve", str(tiny_model_dir), "--max-queue", "7", "--max-wait-ms", "2.5",
                                          "--no-micro-batching", "--model-name", "demo"])
    assert cli.settings_from_args(ServeSettings, args) == ServeSettings(max_queue=7, max_wait_ms=2.5,
                                                                        micro_batching=False, model_name="demo")
    defaults = cli.build_parser().parse_args(["serve", str(tiny_model_dir)])
    assert cli.settings_from_args(ServeSettings, defaults) == ServeSettings()
    assert cli.settings_from_args(ServeAccess, defaults) == ServeAccess()
    access = cli.build_parser().parse_args(["serve", str(tiny_model_dir), "--api-key-file", "key.txt",
                                            "--allow-unauthenticated"])
    assert cli.settings_from_args(ServeAccess, access) == ServeAccess(api_key_file="key.txt",
                                                                      allow_unauthenticated=True)
    with pytest.raises(SystemExit):  # the key itself is never a flag (it would show in the process list)
        cli.build_parser().parse_args(["serve", str(tiny_model_dir), "--api-key", "x"])


def test_serve_with_bad_limits_is_a_user_error(tiny_model_dir: Path, capsys) -> None:
    assert cli.main(["serve", str(tiny_model_dir), "--max-queue", "0"]) == 2
    assert "--max-queue must be a whole number of at least 1" in capsys.readouterr().err


def test_serve_without_the_extra_says_how_to_install_it(tiny_model_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # makes `import fastapi` fail
    monkeypatch.delitem(sys.modules, "gpt2clf.serve.app")
    assert cli.main(["serve", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpt2clf: error: ") and 'pip install "gpt2clf[serve]"' in err and "\n" not in err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a ``gpt2clf serve`` subprocess: this checkout's source, no inherited API key."""
    env = {name: value for name, value in os.environ.items() if name != "GPT2CLF_API_KEY"}
    return {**env, "PYTHONPATH": str(REPO_ROOT / "src"), **extra}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_in_flight_requests_then_exits_0(tiny_model_dir: Path, signum: int) -> None:
    port = free_port()
    env = server_env()
    # A long batching wait keeps the request in flight (queued) when the signal arrives.
    server = subprocess.Popen([sys.executable, "-m", "gpt2clf.cli", "serve", str(tiny_model_dir), "--port",
                               str(port), "--device", "cpu", "--max-wait-ms", "3000"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_readyz(server, base)
        results: list[httpx.Response] = []
        request = threading.Thread(target=lambda: results.append(
            httpx.post(f"{base}/v1/classify", json={"texts": ["in flight"]}, timeout=WAIT_GUARD_S)))
        request.start()
        wait_until(lambda: "gpt2clf_queue_depth 1.0" in httpx.get(f"{base}/metrics", timeout=5).text,
                   "the request to be queued")
        server.send_signal(signum)
        request.join(WAIT_GUARD_S)
        assert server.wait(WAIT_GUARD_S) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert results and results[0].status_code == 200, results
    assert results[0].json()["predictions"][0]["label"] in {"a", "b", "c"}
    log = server.stdout.read()
    assert "Traceback" not in log


def test_explain_endpoint_gives_one_attribution_per_token(predictor: Any, tiny_model_dir: Path) -> None:
    with running_client(predictor, tiny_model_dir) as client:
        answer = client.post("/v1/explain", json={"text": "hockey playoffs tonight", "steps": 8})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert "".join(body["tokens"]) == "hockey playoffs tonight"
        assert len(body["attributions"]) == len(body["tokens"]) and body["target"] == body["label"]
        assert client.post("/v1/explain", json={"text": "x", "label": "nope"}).status_code == 422
        assert client.post("/v1/explain", json={"text": ""}).status_code == 422
        assert client.post("/v1/explain", json={"text": "x", "steps": 0}).status_code == 422
        assert client.post("/v1/explain", json={"text": "x" * 200_000}).status_code == 413


# ---------------------------------------------------------------------------------------
# the API key
# ---------------------------------------------------------------------------------------
API_KEY = "k3y-9f2c41d7e8b05a63c1f4d2e7a9b8c0d1"  # distinctive, so that a grep for it finds only leaks
WRONG_KEYS = {
    "no key": {},
    "a wrong key of the same length": {"Authorization": "Bearer " + "x" * len(API_KEY)},
    "a shorter key": {"Authorization": "Bearer " + API_KEY[:-1]},
    "a longer key": {"Authorization": "Bearer " + API_KEY + "0"},
    "the key under another scheme": {"Authorization": "Basic " + API_KEY},
    "bytes that are not ASCII": {"Authorization": b"Bearer \xff\xfe-not-ascii"},
}
RIGHT_KEY = {"Authorization": f"Bearer {API_KEY}"}


def assert_unauthorized(response: httpx.Response) -> None:
    body = assert_error(response, 401)
    assert body["error"]["code"] in {"missing_api_key", "invalid_api_key"}
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert API_KEY not in response.text


@pytest.mark.parametrize("wrong", list(WRONG_KEYS))
def test_with_a_key_every_guarded_path_answers_401_without_it(predictor, tiny_model_dir: Path, wrong: str) -> None:
    headers = WRONG_KEYS[wrong]
    code = "missing_api_key" if wrong == "no key" else "invalid_api_key"
    with running_client(predictor, tiny_model_dir, api_key=API_KEY) as client:
        classify = client.post("/v1/classify", json={"texts": ["hello"]}, headers=headers)
        assert_unauthorized(classify)
        assert classify.json()["error"]["code"] == code
        assert_unauthorized(client.post("/v1/explain", json={"text": "hello"}, headers=headers))
        for path in ("/v1/model", "/metrics", "/v1", "/no/such/path"):
            assert_unauthorized(client.get(path, headers=headers))
        for path in ("/healthz", "/readyz", "/", "/static/app.js", "/openapi.json", "/docs"):
            assert client.get(path, headers=headers).status_code == 200, path


def test_the_right_key_gets_the_same_answers_as_a_server_without_one(predictor, tiny_model_dir: Path) -> None:
    request = {"texts": TEXTS, "top_k": 2}
    with running_client(predictor, tiny_model_dir) as open_client:
        expected = open_client.post("/v1/classify", json=request).json()
        expected_info = open_client.get("/v1/model").json()
    with running_client(predictor, tiny_model_dir, api_key=API_KEY) as client:
        missing = client.post("/v1/classify", json=request)
        assert_unauthorized(missing)
        assert missing.json()["error"]["code"] == "missing_api_key"
        wrong = client.post("/v1/classify", json=request, headers={"Authorization": "Bearer nope"})
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        answer = client.post("/v1/classify", json=request, headers=RIGHT_KEY)
        assert answer.status_code == 200 and answer.json() == expected
        lower = client.post("/v1/classify", json=request, headers={"authorization": f"bearer {API_KEY}"})
        assert lower.json() == expected  # header name and scheme are case-insensitive
        info = client.get("/v1/model", headers=RIGHT_KEY)
        assert info.json() == expected_info and API_KEY not in info.text
        # the request-level errors are unchanged behind the key
        assert_error(client.post("/v1/classify", json={"texts": []}, headers=RIGHT_KEY), 422)
        assert_error(client.get("/no/such/path", headers=RIGHT_KEY), 404, "not_found")
        metrics = client.get("/metrics", headers=RIGHT_KEY)
        # nothing in the app shows the key when printed (its middleware list, its state)
        assert API_KEY not in repr(client.app.user_middleware) + repr(vars(client.app.state))
    assert metrics.status_code == 200 and API_KEY not in metrics.text
    samples = metric_samples(metrics.text)
    assert samples[("gpt2clf_http_requests_total",
                    (("method", "POST"), ("route", "/v1/classify"), ("status", "401")))] == 2


def test_the_openapi_schema_declares_the_bearer_scheme(predictor, tiny_model_dir: Path) -> None:
    with running_client(predictor, tiny_model_dir, api_key=API_KEY) as client:
        schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"] == {"bearerAuth": {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["bearerAuth"][
            "description"]}}
    for path, method in [("/v1/classify", "post"), ("/v1/explain", "post"), ("/v1/model", "get"), ("/metrics", "get")]:
        operation = schema["paths"][path][method]
        assert operation["security"] == [{"bearerAuth": []}], path
        assert "401" in operation["responses"], path
    for path in ("/healthz", "/readyz"):
        assert "security" not in schema["paths"][path]["get"]
    # the labels are for key holders (GET /v1/model); without a key the schema lists them
    assert "enum" not in json.dumps(schema["components"]["schemas"]["ExplainRequest"])
    assert API_KEY not in json.dumps(schema)
    with running_client(predictor, tiny_model_dir) as client:
        open_schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in open_schema["components"]
    assert "security" not in open_schema["paths"]["/v1/classify"]["post"]
    assert '"enum": ["a", "b", "c"]' in json.dumps(open_schema["components"]["schemas"]["ExplainRequest"])


def test_the_key_comes_from_the_file_or_the_environment(tmp_path: Path) -> None:
    from gpt2clf.errors import ConfigError
    from gpt2clf.serve.auth import read_api_key

    key_file = tmp_path / "key.txt"
    key_file.write_text(API_KEY + "\n", encoding="utf-8")
    assert read_api_key(key_file, environ={}) == API_KEY  # the final newline is not part of the key
    assert read_api_key(None, environ={"GPT2CLF_API_KEY": API_KEY}) == API_KEY
    assert read_api_key(key_file, environ={"GPT2CLF_API_KEY": "other"}) == API_KEY  # the flag wins
    assert read_api_key(None, environ={}) is None
    bad_keys = {"empty": "", "spaces": f"{API_KEY} more", "two lines": f"{API_KEY}\nsecond", "non-ASCII": API_KEY + "é"}
    for what, content in bad_keys.items():
        key_file.write_text(content, encoding="utf-8")
        with pytest.raises(ConfigError) as from_file:
            read_api_key(key_file, environ={})
        with pytest.raises(ConfigError) as from_env:
            read_api_key(None, environ={"GPT2CLF_API_KEY": content})
        for err in (from_file.value, from_env.value):
            assert API_KEY not in str(err) and "\n" not in str(err), what
        assert "GPT2CLF_API_KEY" in str(from_env.value) and str(key_file) in str(from_file.value)
    with pytest.raises(ConfigError, match="no such file"):
        read_api_key(tmp_path / "missing.txt", environ={})
    with pytest.raises(ConfigError):
        create_app(object(), api_key="")


def test_loopback_is_told_apart_from_every_other_address() -> None:
    from gpt2clf.serve.auth import is_loopback

    assert all(is_loopback(host) for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "", "192.168.1.5", "10.0.0.1", "example.com",
                                                  "localhost.example.com"))


def test_a_public_address_without_a_key_is_refused_before_anything_listens(
        tiny_model_dir: Path, monkeypatch, capsys) -> None:
    import gpt2clf.serve.app as serve_app
    from gpt2clf.serve.auth import ExposedServerError

    started: list[Any] = []
    monkeypatch.setattr(serve_app.uvicorn, "Server", lambda *args, **kwargs: started.append(args))
    monkeypatch.delenv("GPT2CLF_API_KEY", raising=False)
    assert cli.main(["serve", str(tiny_model_dir), "--host", "0.0.0.0", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpt2clf: error: refusing to serve on 0.0.0.0")
    assert all(name in err for name in ("GPT2CLF_API_KEY", "--api-key-file", "--allow-unauthenticated"))
    # the rule lives in the library: Python callers get it too
    with pytest.raises(ExposedServerError):
        serve_app.serve(tiny_model_dir, host="0.0.0.0")
    with pytest.raises(ExposedServerError), running_in_thread(create_app(tiny_model_dir), host="::"):
        pass
    assert started == []


def wait_for_readyz(server: subprocess.Popen, base: str) -> None:
    """Wait until ``server`` answers 200 on /readyz (failing at once, with its output, if it exits)."""
    def ready() -> bool:
        assert server.poll() is None, server.stdout.read()
        try:
            return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, "the server to be ready")


def stop(server: subprocess.Popen) -> str:
    """SIGTERM, wait, and everything the server wrote (stdout and stderr together)."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        server.wait(WAIT_GUARD_S)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return server.stdout.read()


def test_allow_unauthenticated_serves_a_public_address_and_warns_once(tiny_model_dir: Path) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "gpt2clf.cli", "serve", str(tiny_model_dir), "--host", "0.0.0.0",
                               "--port", str(port), "--device", "cpu", "--allow-unauthenticated"],
                              env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_readyz(server, f"http://127.0.0.1:{port}")
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"texts": ["open"]}, timeout=WAIT_GUARD_S)
        assert answer.status_code == 200
    finally:
        output = stop(server)
    assert server.returncode == 0, output
    warnings = [line for line in output.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, output
    assert warnings[0].startswith("gpt2clf: warning: serving on 0.0.0.0 without an API key")


def urllib_status(url: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, dict, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_GUARD_S) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_the_key_never_appears_in_the_servers_output(tiny_model_dir: Path, tmp_path: Path) -> None:
    requests = pytest.importorskip("requests")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "gpt2clf.cli", "serve", str(tiny_model_dir), "--port", str(port),
                               "--device", "cpu"], env=server_env(GPT2CLF_API_KEY=API_KEY),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    body = json.dumps({"texts": ["My X server crashes"]}).encode()
    try:
        wait_for_readyz(server, base)
        for wrong, headers in WRONG_KEYS.items():
            if isinstance(headers.get("Authorization"), bytes):
                continue  # urllib and requests send str headers; the bytes case is covered in-process
            status, answer_headers, answer = urllib_status(f"{base}/v1/classify", headers, body)
            assert status == 401 and json.loads(answer)["error"]["code"].endswith("api_key"), wrong
            assert answer_headers["www-authenticate"].startswith("Bearer")
            answer = requests.post(f"{base}/v1/classify", json={"texts": ["hi"]}, headers=headers,
                                   timeout=WAIT_GUARD_S)
            assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer"), wrong
            assert httpx.get(f"{base}/metrics", headers=headers, timeout=WAIT_GUARD_S).status_code == 401
        status, _, answer = urllib_status(f"{base}/v1/classify", RIGHT_KEY, body)
        assert status == 200 and json.loads(answer)["predictions"][0]["label"] in {"a", "b", "c"}
        assert requests.post(f"{base}/v1/classify", json={"texts": ["hi"]}, headers=RIGHT_KEY,
                             timeout=WAIT_GUARD_S).ok
        assert requests.post(f"{base}/v1/classify", json={"texts": []}, headers=RIGHT_KEY,
                             timeout=WAIT_GUARD_S).status_code == 422
        for path in ("/v1/model", "/metrics", "/openapi.json", "/healthz"):
            assert API_KEY not in httpx.get(base + path, headers=RIGHT_KEY, timeout=WAIT_GUARD_S).text, path
    finally:
        output = stop(server)
    assert server.returncode == 0
    assert '"POST /v1/classify HTTP/1.1" 401' in output and '"POST /v1/classify HTTP/1.1" 200' in output, output
    leaked = [text for text in (API_KEY, API_KEY[:-1], "x" * len(API_KEY)) if text in output]
    assert leaked == [], "the server wrote a key to its output"
    assert "Traceback" not in output
