"""One model endpoint over HTTP: auth, tracing ids, concurrency limit, retries and breaker.

Every call POSTs a JSON body to the scoring URI with ``Authorization: Bearer``, the optional
``azureml-model-deployment`` header and an ``x-ms-client-request-id`` (docs/models.md §0) that
is also bound into the call's log events. At most ``concurrency`` requests are in flight at once
(the semaphore is held only while a request is on the wire, not while backing off); transient
failures are retried by tenacity with :class:`~listener.infer.resilience.CallBackoff` timing; the
endpoint's :class:`~listener.infer.resilience.CircuitBreaker` fails calls fast while it is down.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from converters.model_outputs import ModelIdentity
from listener.errors import CircuitOpenError, PermanentModelError, TransientModelError
from listener.infer.auth import Authorizer, KeyAuth
from listener.infer.resilience import (
    CallBackoff,
    CircuitBreaker,
    Clock,
    is_endpoint_failure,
    status_error,
)
from listener.infer.wire import EMULATOR_HEADER
from listener.logging import get_logger
from listener.settings import ModelSettings

Sleep = Callable[[float], Awaitable[None]]
# Told of every finished call: (model, seconds, outcome, attempts); outcome is "ok",
# "transient", "permanent", "circuit_open" or "error". listener.store.records keeps them.
CallObserver = Callable[[str, float, str, int], None]
_CONNECT_TIMEOUT_S = 10.0
_INLINE_JSON_BYTES = 256 * 1024


def _gateway_version() -> str:
    try:
        return importlib.metadata.version("pacs-ai-listener")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def new_request_id() -> str:
    """A client request id: alphanumerics and ``-`` only, 39 characters (limit 40, §0)."""
    return f"pacsai-{uuid.uuid4().hex}"


class ModelTransport:
    """Calls one model endpoint with the gateway's resilience policy.

    ``http`` may be passed in (tests give one with ``httpx.MockTransport``); otherwise one is
    created and closed by :meth:`aclose`. ``clock`` (monotonic seconds) drives the breaker,
    ``wall_clock`` (epoch seconds) reads HTTP-date Retry-After values, ``sleep`` and ``rng`` drive
    the backoff, so tests control time. ``on_call``, when given, is told of every finished call
    (latency, outcome, attempts) for the metrics.
    """

    def __init__(
        self,
        model: str,
        settings: ModelSettings,
        *,
        endpoint: str | None = None,
        emulated: bool = False,
        authorizer: Authorizer | None = None,
        http: httpx.AsyncClient | None = None,
        backoff: CallBackoff | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        on_call: CallObserver | None = None,
    ) -> None:
        url = endpoint or settings.endpoint
        if url is None:
            raise ValueError(f"{model}: no endpoint given")
        self.model = model
        self.endpoint = url
        self._settings = settings
        self._emulated = emulated
        self._auth = authorizer if authorizer is not None else KeyAuth(settings.key)
        self._owns_http = http is None
        self._http = http if http is not None else _new_http_client(settings)
        self._backoff = backoff if backoff is not None else CallBackoff()
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._on_call = on_call
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        self._log = get_logger("infer", model=model, endpoint=url)
        self.breaker = CircuitBreaker(
            url,
            failures=settings.circuit_failures,
            reset_s=settings.circuit_reset_s,
            clock=clock,
            logger=self._log,
        )

    @property
    def identity(self) -> ModelIdentity:
        """Version from settings (model_version, else deployment, else "unknown"); when the
        answers come from the emulator it reads ``emulator-<version>``, the version being this
        gateway's own unless one is configured."""
        version = self._settings.model_version or self._settings.deployment
        if self._emulated:
            version = f"emulator-{version or _gateway_version()}"
        return ModelIdentity(name=self.model, version=version or "unknown", emulated=self._emulated)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def score(self, body: dict[str, Any]) -> Any:
        """POST ``body`` and return the decoded JSON answer, retrying transient failures.

        Raises PermanentModelError at once for answers a retry cannot fix, CircuitOpenError while
        the breaker is open, and the last TransientModelError when the retries are spent.
        """
        payload = await asyncio.to_thread(_encode, body)
        request_id = new_request_id()
        attempts = 0

        async def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            return await self._attempt(payload, request_id, attempts)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._settings.retries + 1),
            wait=self._wait,
            retry=retry_if_exception_type(TransientModelError),
            sleep=self._sleep,
            before_sleep=lambda state: self._log_retry(state, request_id),
            reraise=True,
        )
        started, outcome = self._clock(), "error"
        try:
            answer: Any = await retrying(attempt)
            outcome = "ok"
            return answer
        except (TransientModelError, PermanentModelError) as exc:
            outcome = "transient" if isinstance(exc, TransientModelError) else "permanent"
            self._log.warning(
                "model_call_failed", request_id=request_id, attempts=attempts, error=str(exc)
            )
            raise
        except CircuitOpenError:
            outcome = "circuit_open"
            raise
        finally:
            if self._on_call is not None:
                self._on_call(self.model, self._clock() - started, outcome, attempts)

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(error, "retry_after_s", None)
        return self._backoff.delay(state.attempt_number, retry_after, self._rng)

    def _log_retry(self, state: RetryCallState, request_id: str) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait_s = state.next_action.sleep if state.next_action is not None else None
        self._log.info(
            "model_call_retry",
            request_id=request_id,
            attempt=state.attempt_number,
            wait_s=round(wait_s, 3) if wait_s is not None else None,
            error=str(error),
        )

    async def _attempt(self, payload: bytes, request_id: str, attempt: int) -> Any:
        async with self._semaphore:
            probe = self.breaker.acquire()
            decided = False
            started = self._clock()
            try:
                response = await self._post(payload, request_id)
                if is_endpoint_failure(response.status_code):
                    self.breaker.record_failure()
                else:
                    self.breaker.record_success()
                decided = True
            except TransientModelError:
                self.breaker.record_failure()
                decided = True
                raise
            finally:
                if probe and not decided:
                    self.breaker.release_probe()
        if response.headers.get(EMULATOR_HEADER):
            self._emulated = True
        if not response.is_success:
            raise status_error(
                response.status_code,
                response.headers,
                response.text,
                model=self.model,
                auth=self._auth.kind,
                now_epoch_s=self._wall_clock(),
            )
        try:
            answer = await _decode(response.content)
        except ValueError as exc:
            raise PermanentModelError(
                f"malformed answer from {self.model} endpoint: {exc}"
            ) from exc
        self._log.debug(
            "model_call_done",
            request_id=request_id,
            attempt=attempt,
            elapsed_ms=round((self._clock() - started) * 1000, 1),
        )
        return answer

    async def _post(self, payload: bytes, request_id: str) -> httpx.Response:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "x-ms-client-request-id": request_id,
        }
        authorization = await self._auth.header()
        if authorization is not None:
            headers["Authorization"] = authorization
        if self._settings.deployment:
            headers["azureml-model-deployment"] = self._settings.deployment
        try:
            return await self._http.post(self.endpoint, content=payload, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientModelError(
                f"timeout calling {self.model} endpoint {self.endpoint} "
                f"after {self._settings.timeout_s} s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientModelError(
                f"cannot reach {self.model} endpoint {self.endpoint}: {type(exc).__name__} {exc}"
            ) from exc


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


async def _decode(content: bytes) -> Any:
    """Parse JSON; large answers (masks, volumes) are parsed off the event loop."""
    if len(content) > _INLINE_JSON_BYTES:
        return await asyncio.to_thread(json.loads, content)
    return json.loads(content)


def _new_http_client(settings: ModelSettings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            settings.timeout_s, connect=min(_CONNECT_TIMEOUT_S, settings.timeout_s)
        ),
        limits=httpx.Limits(
            max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
        ),
    )
