"""One model endpoint over HTTP: auth, tracing ids, concurrency limit, deadline, retries, breaker.

Every call POSTs a JSON body to the scoring URI with ``Authorization: Bearer``, the optional
``azureml-model-deployment`` header and an ``x-ms-client-request-id`` (docs/models.md §0) that
is also bound into the call's log events. At most ``concurrency`` requests are in flight at once
from this process, and, with ``permits`` (:mod:`listener.infer.permits`), from the whole gateway
(the semaphore and the permit are held only while a request is on the wire, not while backing
off). Each request
has a total deadline of ``timeout_s`` (httpx's per-phase timeouts bound each connect, write and
read; the deadline bounds the whole exchange, so an endpoint trickling a byte at a time cannot
hold a call open), and running out of it is a transient failure. Transient failures are retried
by tenacity with :class:`~listener.infer.resilience.CallBackoff` timing; the endpoint's
:class:`~listener.infer.resilience.CircuitBreaker` fails calls fast while it is down. With Entra
auth, a 401 or 403 drops the cached token and the request is sent once more with a fresh one;
only a second rejection is permanent.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from converters.model_outputs import ModelIdentity
from listener.errors import CircuitOpenError, PermanentModelError, TransientModelError
from listener.infer.auth import Authorizer, KeyAuth
from listener.infer.permits import RequestPermits
from listener.infer.resilience import (
    HTTP_FORBIDDEN,
    HTTP_UNAUTHORIZED,
    CallBackoff,
    CircuitBreaker,
    CircuitState,
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
# Told of every change of the endpoint's breaker: (model, state, last failure, seconds to the
# next probe); listener.store.records keeps it where the admin API's readiness reads it.
HealthObserver = Callable[[str, str, str | None, float | None], None]
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
        on_health: HealthObserver | None = None,
        permits: RequestPermits | None = None,
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
        self._permits = permits
        self._probe_over = asyncio.Event()  # set when a half-open probe ends
        self._log = get_logger("infer", model=model, endpoint=url)
        self.breaker = CircuitBreaker(
            url,
            failures=settings.circuit_failures,
            reset_s=settings.circuit_reset_s,
            clock=clock,
            logger=self._log,
            on_change=None if on_health is None else self._health_observer(on_health),
        )

    def _health_observer(
        self, on_health: HealthObserver
    ) -> Callable[[CircuitState, str | None, float | None], None]:
        def changed(state: CircuitState, error: str | None, retry_in_s: float | None) -> None:
            on_health(self.model, state.value, error, retry_in_s)

        return changed

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

        Raises PermanentModelError at once for answers a retry cannot fix, the last
        TransientModelError when the retries are spent (also when the breaker opened during
        this call: requests were sent), and CircuitOpenError when the breaker failed the call
        before any request was sent.
        """
        payload = await asyncio.to_thread(_encode, body)
        request_id = new_request_id()
        attempts = 0
        sent = [0]  # requests that went on the wire (not failed fast by the breaker)

        async def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            return await self._attempt(payload, request_id, attempts, sent)

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
        except CircuitOpenError as exc:
            if not sent[0]:
                outcome = "circuit_open"
                raise
            outcome = "transient"
            self._log.warning(
                "model_call_failed", request_id=request_id, attempts=attempts, error=str(exc)
            )
            raise TransientModelError(str(exc), retry_after_s=exc.retry_after_s) from exc
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

    async def _attempt(self, payload: bytes, request_id: str, attempt: int, sent: list[int]) -> Any:
        started = self._clock()
        response = await self._exchange(payload, request_id, sent)
        if response.status_code in (HTTP_UNAUTHORIZED, HTTP_FORBIDDEN) and self._auth.invalidate():
            self._log.info(
                "model_auth_refreshed", request_id=request_id, status=response.status_code
            )
            response = await self._exchange(payload, request_id, sent)
        if response.headers.get(EMULATOR_HEADER):
            self._emulated = True
        if not response.is_success:
            raise self._status_error(response)
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

    def _status_error(self, response: httpx.Response) -> TransientModelError | PermanentModelError:
        return status_error(
            response.status_code,
            response.headers,
            response.text,
            model=self.model,
            auth=self._auth.kind,
            now_epoch_s=self._wall_clock(),
        )

    async def _exchange(self, payload: bytes, request_id: str, sent: list[int]) -> httpx.Response:
        """One request through the semaphore, a gateway-wide permit (when this process shares
        the model's limit with others) and the breaker, which learns its outcome."""
        authorization = await self._auth.header()
        async with self._semaphore, self._permit():
            probe = await self._admit()
            sent[0] += 1
            decided = False
            try:
                response = await self._post(payload, request_id, authorization)
                if is_endpoint_failure(response.status_code, response.headers):
                    self.breaker.record_failure(str(self._status_error(response)))
                else:
                    self.breaker.record_success()
                decided = True
            except TransientModelError as exc:
                self.breaker.record_failure(str(exc))
                decided = True
                raise
            finally:
                if probe and not decided:
                    self.breaker.release_probe()
                if probe:
                    self._probe_over.set()  # the calls that waited for it look again
                    self._probe_over = asyncio.Event()
        return response

    async def _admit(self) -> bool:
        """The breaker's leave for one call (True: it is the half-open probe). A call that
        finds another one probing waits for that probe's outcome, up to the request deadline,
        instead of failing at once: a job's parallel requests would otherwise fail with the
        circuit open, cancel their own probe and never see the endpoint back."""
        while True:
            try:
                return self.breaker.acquire()
            except CircuitOpenError as exc:
                if not self.breaker.probing:
                    raise
                error = exc
            try:
                await asyncio.wait_for(self._probe_over.wait(), self._settings.timeout_s)
            except TimeoutError:
                raise error from None

    def _permit(self) -> AbstractAsyncContextManager[None]:
        if self._permits is None:
            return nullcontext()
        settings = self._settings
        return self._permits.hold(self.model, settings.concurrency, settings.timeout_s)

    async def _post(
        self, payload: bytes, request_id: str, authorization: str | None
    ) -> httpx.Response:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "x-ms-client-request-id": request_id,
        }
        if authorization is not None:
            headers["Authorization"] = authorization
        if self._settings.deployment:
            headers["azureml-model-deployment"] = self._settings.deployment
        deadline_s = self._settings.timeout_s
        try:
            async with asyncio.timeout(deadline_s):
                return await self._http.post(self.endpoint, content=payload, headers=headers)
        except TimeoutError as exc:
            raise TransientModelError(
                f"timeout calling {self.model} endpoint {self.endpoint}: no complete answer "
                f"within the {deadline_s:g} s deadline"
            ) from exc
        except httpx.TimeoutException as exc:
            raise TransientModelError(
                f"timeout calling {self.model} endpoint {self.endpoint} "
                f"after {deadline_s:g} s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientModelError(
                f"cannot reach {self.model} endpoint {self.endpoint}: {type(exc).__name__}: {exc}"
            ) from exc


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


async def _decode(content: bytes) -> Any:
    """Parse JSON; large answers (masks, volumes) are parsed off the event loop."""
    if len(content) > _INLINE_JSON_BYTES:
        return await asyncio.to_thread(json.loads, content)
    return json.loads(content)


def _new_http_client(settings: ModelSettings) -> httpx.AsyncClient:
    """Per-phase timeouts: connect within 10 s (or the deadline), each write and read within the
    deadline; the deadline itself is enforced around the whole exchange by :meth:`_post`."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            settings.timeout_s, connect=min(_CONNECT_TIMEOUT_S, settings.timeout_s)
        ),
        limits=httpx.Limits(
            max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
        ),
    )
