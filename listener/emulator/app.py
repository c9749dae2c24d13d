"""The model emulator: one Starlette app serving all four models at ``/<model>/score`` with the
hosted models' request/response contract (docs/models.md), deterministic answers derived from
the image, and fault injection for tests. It is not a clinical model, and says so on every
response (``x-pacs-ai-emulator``) and in its start-up log line.

Per request, in the order the real service would meet them: key check (401: the bearer value
must be ``key`` or one of ``accepted_keys`` when any is set), requests in flight over
``max_in_flight`` (429 "Too many pending requests", §6), injected faults (408/429/503, with
Retry-After when configured, for ``fault_for_s`` after start when set: an outage that ends; or,
with ``trickle_interval_s``, a 200 whose body comes one byte per interval and never completes),
envelope validation (400 naming the field), then the model's own validation (424 with
``ms-azureml-model-error-*`` headers) and answer. The added latency is a floor on the service
time, the answer being computed while it runs.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from listener.emulator import answers
from listener.infer.resilience import (
    HTTP_BAD_REQUEST,
    HTTP_NOT_FOUND,
    HTTP_TOO_MANY_REQUESTS,
    HTTP_UNAUTHORIZED,
    MODEL_ERROR_REASON_HEADER,
    MODEL_ERROR_STATUS_HEADER,
)
from listener.infer.wire import (
    CXR_MAX_ROWS,
    EMULATOR_HEADER,
    EMULATOR_NOTICE,
    MI_MAX_ROWS,
    PARSE_MAX_ROWS,
)
from listener.settings import EmulatorSettings

_RETRY_AFTER_STATUSES = frozenset({429, 503})
CXR_COLUMNS = frozenset(
    {
        "frontal_image",
        "lateral_image",
        "prior_image",
        "indication",
        "technique",
        "comparison",
        "prior_report",
    }
)

RowAnswer = Callable[[dict[str, Any], dict[str, Any], int], dict[str, Any]]


@dataclass(frozen=True)
class _ModelSpec:
    columns: frozenset[str]
    required: frozenset[str]
    max_rows: int
    answer: RowAnswer


_MODELS: dict[str, _ModelSpec] = {
    "medimageinsight": _ModelSpec(
        frozenset({"image", "text"}), frozenset(), MI_MAX_ROWS, answers.embed_row
    ),
    "cxrreportgen": _ModelSpec(
        CXR_COLUMNS,
        frozenset({"frontal_image"}),
        CXR_MAX_ROWS,
        lambda row, _params, index: answers.cxr_row(row, index),
    ),
    "medimageparse": _ModelSpec(
        frozenset({"image", "text"}),
        frozenset({"image", "text"}),
        PARSE_MAX_ROWS,
        lambda row, _params, index: answers.parse_row(row, index),
    ),
    "medimageparse3d": _ModelSpec(
        frozenset({"image", "text"}),
        frozenset({"image", "text"}),
        PARSE_MAX_ROWS,
        lambda row, _params, index: answers.parse3d_row(row, index),
    ),
}


@dataclass
class EmulatorStats:
    """What the emulator saw, for tests and benchmarks (``GET /_emulator/stats``)."""

    requests: int = 0
    answered: int = 0
    faults: int = 0
    rejected_busy: int = 0
    in_flight: int = 0
    max_in_flight_seen: int = 0
    per_model: dict[str, int] = field(default_factory=dict)
    in_flight_per_model: dict[str, int] = field(default_factory=dict)
    max_in_flight_per_model: dict[str, int] = field(default_factory=dict)
    trickled: int = 0
    trickles_abandoned: int = 0  # the client hung up before the trickle ended


def _field_error(message: str) -> answers.EmulatorInputError:
    return answers.EmulatorInputError(HTTP_BAD_REQUEST, message)


def _require(container: dict[str, Any], name: str, where: str) -> Any:
    if name not in container or container[name] is None:
        raise _field_error(f"missing field {where}{name}")
    return container[name]


def read_envelope(raw: bytes, spec: _ModelSpec) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Validate the split envelope (§0) and return the rows as column→value dicts, and params."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _field_error("request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise _field_error("request body must be a JSON object")
    data_block = _require(body, "input_data", "")
    if not isinstance(data_block, dict):
        raise _field_error("input_data must be an object")
    columns = _require(data_block, "columns", "input_data.")
    index = _require(data_block, "index", "input_data.")
    data = _require(data_block, "data", "input_data.")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise _field_error("input_data.columns must be a list of strings")
    unknown = sorted(set(columns) - spec.columns)
    if unknown or len(set(columns)) != len(columns):
        raise _field_error(f"input_data.columns: unknown or repeated column {unknown or columns}")
    missing = sorted(spec.required - set(columns))
    if missing:
        raise _field_error(f"input_data.columns: missing column {missing[0]}")
    if not isinstance(data, list) or not data:
        raise _field_error("input_data.data must be a non-empty list of rows")
    if len(data) > spec.max_rows:
        raise _field_error(
            f"input_data.data: {len(data)} rows, at most {spec.max_rows} per request"
        )
    if not isinstance(index, list) or len(index) != len(data):
        raise _field_error("input_data.index must hold one entry per row of input_data.data")
    rows = []
    for number, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise _field_error(f"input_data.data[{number}] must hold {len(columns)} values")
        rows.append(dict(zip(columns, row, strict=True)))
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise _field_error("params must be an object")
    return rows, params


def answer_request(model: str, raw: bytes) -> list[dict[str, Any]]:
    """The whole answer for one request body: one object per row (§8.1)."""
    spec = _MODELS[model]
    rows, params = read_envelope(raw, spec)
    return [spec.answer(row, params, number) for number, row in enumerate(rows)]


class _NoticeMiddleware:
    """Adds the emulator notice header to every response, including 404s and errors."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_notice(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((EMULATOR_HEADER.encode(), EMULATOR_NOTICE.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_notice)


class _Emulator:
    """Request handling with its settings, random source (seeded) and counters."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.stats = EmulatorStats()
        self._rng = random.Random(settings.seed)
        keys = [settings.key] if settings.key is not None else []
        self._accepted_auth = {
            f"Bearer {key.get_secret_value()}" for key in [*keys, *settings.accepted_keys]
        }
        self._started = time.monotonic()

    async def score(self, request: Request) -> Response:
        model = request.path_params["model"]
        if model not in _MODELS:
            return _error(HTTP_NOT_FOUND, f"no model named {model!r} at this emulator")
        self.stats.requests += 1
        self.stats.per_model[model] = self.stats.per_model.get(model, 0) + 1
        if self._accepted_auth and request.headers.get("authorization") not in self._accepted_auth:
            return _error(HTTP_UNAUTHORIZED, "missing or wrong endpoint key")
        deployment = request.headers.get("azureml-model-deployment")
        if deployment and self.settings.deployments and deployment not in self.settings.deployments:
            # As an online endpoint answers a deployment it does not have (docs/models.md §6).
            return _error(HTTP_NOT_FOUND, f"no deployment named {deployment!r} at this endpoint")
        if self.stats.in_flight >= self.settings.max_in_flight:
            self.stats.rejected_busy += 1
            return _error(HTTP_TOO_MANY_REQUESTS, "Too many pending requests", self._retry_after())
        stats = self.stats
        stats.in_flight += 1
        stats.max_in_flight_seen = max(stats.max_in_flight_seen, stats.in_flight)
        now = stats.in_flight_per_model[model] = stats.in_flight_per_model.get(model, 0) + 1
        stats.max_in_flight_per_model[model] = max(stats.max_in_flight_per_model.get(model, 0), now)
        try:
            return await self._answer(model, request)
        finally:
            stats.in_flight -= 1
            stats.in_flight_per_model[model] -= 1

    async def _answer(self, model: str, request: Request) -> Response:
        """Answer after at least ``latency_ms``: the answer is computed while that time runs, as
        a real model's inference time would, so the latency is the service time floor."""
        started = anyio.current_time()
        raw = await request.body()
        if self._faulting():
            if self.settings.trickle_interval_s is not None:
                return self._trickle(self.settings.trickle_interval_s)
            status = self._rng.choice(self.settings.fault_statuses)
            self.stats.faults += 1
            headers = self._retry_after() if status in _RETRY_AFTER_STATUSES else {}
            response = _error(status, "injected fault", headers)
        else:
            response = await self._compute(model, raw)
        remaining = self.settings.latency_ms / 1000 - (anyio.current_time() - started)
        if remaining > 0:
            await anyio.sleep(remaining)
        return response

    def _faulting(self) -> bool:
        """Whether this request gets an injected fault."""
        window = self.settings.fault_for_s
        if window is not None and time.monotonic() - self._started >= window:
            return False
        faults = self.settings.fault_statuses or self.settings.trickle_interval_s
        return bool(faults) and self._rng.random() < self.settings.fault_rate

    def _trickle(self, interval_s: float, length: int = 64) -> Response:
        """A 200 whose JSON body arrives one byte per ``interval_s`` (``length`` bytes)."""
        self.stats.faults += 1
        self.stats.trickled += 1
        stats = self.stats

        async def body() -> AsyncIterator[bytes]:
            finished = False
            try:
                for _ in range(length):
                    yield b" "
                    await anyio.sleep(interval_s)
                finished = True
                yield b"[]"
            finally:
                if not finished:
                    stats.trickles_abandoned += 1

        return StreamingResponse(body(), media_type="application/json")

    async def _compute(self, model: str, raw: bytes) -> Response:
        try:
            content = await run_in_threadpool(_encoded_answer, model, raw)
        except answers.EmulatorInputError as exc:
            headers = {}
            if exc.status != HTTP_BAD_REQUEST:
                headers = {
                    MODEL_ERROR_STATUS_HEADER: str(exc.container_status),
                    MODEL_ERROR_REASON_HEADER: str(exc),
                }
            return _error(exc.status, str(exc), headers)
        self.stats.answered += 1
        return Response(content, media_type="application/json")

    def _retry_after(self) -> dict[str, str]:
        seconds = self.settings.retry_after_s
        if seconds is None:
            return {}
        return {"Retry-After": f"{seconds:g}"}

    async def stats_view(self, _request: Request) -> Response:
        return JSONResponse(asdict(self.stats))

    async def home(self, _request: Request) -> Response:
        models = ", ".join(f"/{name}/score" for name in _MODELS)
        return PlainTextResponse(f"pacs-ai model emulator, {EMULATOR_NOTICE}. Models: {models}\n")


def _encoded_answer(model: str, raw: bytes) -> bytes:
    return answers.encoded_answer(answer_request(model, raw))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(settings: EmulatorSettings) -> Starlette:
    """The emulator as an ASGI app; ``app.state.stats`` holds its :class:`EmulatorStats`."""
    emulator = _Emulator(settings)
    app = Starlette(
        routes=[
            Route("/", emulator.home, methods=["GET"]),
            Route("/_emulator/stats", emulator.stats_view, methods=["GET"]),
            Route("/{model}/score", emulator.score, methods=["POST"]),
        ]
    )
    app.add_middleware(_NoticeMiddleware)
    app.state.stats = emulator.stats
    return app
