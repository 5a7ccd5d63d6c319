"""The request and response bodies of the HTTP API (pydantic models; they make the OpenAPI schema).

Requests are strict (unknown keys, strings for numbers and non-string texts are 422); responses
are what the route handlers of :mod:`gpt2clf.serve.app` return. ``ERROR_RESPONSES`` documents
every error status with the one JSON error body, ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

from typing import Any

from gpt2clf.serve.extra import missing_extra

try:
    from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator
except ImportError as err:  # pragma: no cover - exercised by a test that hides the extra
    raise missing_extra(err) from err

__all__ = ["ERROR_RESPONSES", "ClassifyRequest", "ClassifyResponse", "ErrorDetail", "ErrorResponse",
           "ExplainRequest", "ExplainResponse", "ModelInfo", "Status", "TextPrediction"]


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

