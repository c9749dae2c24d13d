"""Retry timing, HTTP status classification and a per-endpoint circuit breaker.

Policy (docs/models.md §6): connection errors, timeouts (a call's total deadline included), 408,
429 and 5xx are transient and retried with exponential backoff and jitter, honouring
``Retry-After``; so is a 424 unless the model container's own status
(``ms-azureml-model-error-statuscode``) is 4xx: the endpoint also answers 424 while its probes
fail, or with a 5xx container status. 400, 401, 403, 404, a 424 with a 4xx container status (and
any other 4xx) are permanent and fail at once with a message naming the cause (401 and 403 after
one token refresh with Entra auth, :mod:`listener.infer.transport`). Time is injected (a
clock and a random source), so the logic is tested without sleeping.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from listener.errors import CircuitOpenError, PermanentModelError, TransientModelError
from listener.timing import backoff_delay

Clock = Callable[[], float]

# HTTP status codes named by the managed online endpoint troubleshooting guide (§6).
HTTP_BAD_REQUEST = 400
HTTP_UNAUTHORIZED = 401
HTTP_FORBIDDEN = 403
HTTP_NOT_FOUND = 404
HTTP_REQUEST_TIMEOUT = 408
HTTP_FAILED_DEPENDENCY = 424
HTTP_TOO_MANY_REQUESTS = 429
HTTP_SERVICE_UNAVAILABLE = 503
MODEL_ERROR_STATUS_HEADER = "ms-azureml-model-error-statuscode"
MODEL_ERROR_REASON_HEADER = "ms-azureml-model-error-reason"
_BODY_EXCERPT = 200


@dataclass(frozen=True)
class CallBackoff:
    """Exponential backoff with "equal jitter": attempt n waits a random time in
    [c/2, c] with c = min(max_s, initial_s * 2**(n-1)); a server's Retry-After wins, up to
    ``max_retry_after_s``. Defaults follow the official toolkit (0.5 s up to 60 s)."""

    initial_s: float = 0.5
    max_s: float = 60.0
    max_retry_after_s: float = 120.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_retry_after_s)
        ceiling = backoff_delay(attempt, self.initial_s, self.max_s)
        return rng.uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None, now_epoch_s: float) -> float | None:
    """Seconds from a ``Retry-After`` header: delay-seconds (RFC 9110 §10.2.3; a fraction is
    accepted) or an HTTP-date, measured against ``now_epoch_s``. None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value.strip()), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - now_epoch_s, 0.0)
    except (TypeError, ValueError):
        return None


def _excerpt(body: str) -> str:
    text = " ".join(body.split())
    return text[:_BODY_EXCERPT] + ("..." if len(text) > _BODY_EXCERPT else "")


def status_error(
    status: int,
    headers: Mapping[str, str],
    body: str,
    *,
    model: str,
    auth: str,
    now_epoch_s: float,
) -> TransientModelError | PermanentModelError:
    """The error for a non-2xx answer, with a message that names the cause (§6)."""
    where = f"{status} from {model} endpoint"
    if status == HTTP_FAILED_DEPENDENCY and not _container_client_error(headers):
        code = headers.get(MODEL_ERROR_STATUS_HEADER, "none")
        reason = headers.get(MODEL_ERROR_REASON_HEADER) or _excerpt(body) or "no reason given"
        return TransientModelError(
            f"{where}: model container not ready or failing (status {code}): {reason}",
            retry_after_s=parse_retry_after(headers.get("retry-after"), now_epoch_s),
        )
    if status in (HTTP_REQUEST_TIMEOUT, HTTP_TOO_MANY_REQUESTS) or status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after"), now_epoch_s)
        cause = {
            HTTP_REQUEST_TIMEOUT: "model execution timed out",
            HTTP_TOO_MANY_REQUESTS: "too many requests",
            HTTP_SERVICE_UNAVAILABLE: "service unavailable (starting or scaling)",
        }.get(status, "server error")
        return TransientModelError(f"{where}: {cause}", retry_after_s=retry_after)
    if status == HTTP_UNAUTHORIZED:
        cause = "token rejected" if auth == "entra" else "key rejected"
    elif status == HTTP_FORBIDDEN:
        cause = "access denied (the identity lacks a role that grants the score action)"
    elif status == HTTP_NOT_FOUND:
        cause = "no deployment with traffic at this URL (check the endpoint and deployment)"
    elif status == HTTP_FAILED_DEPENDENCY:
        code = headers.get(MODEL_ERROR_STATUS_HEADER, "unknown")
        reason = headers.get(MODEL_ERROR_REASON_HEADER) or _excerpt(body) or "no reason given"
        cause = f"model container answered {code}: {reason}"
    elif status == HTTP_BAD_REQUEST:
        cause = f"request rejected: {_excerpt(body) or 'no reason given'}"
    else:
        cause = f"unexpected answer: {_excerpt(body) or 'no body'}"
    return PermanentModelError(f"{where}: {cause}")


def _container_client_error(headers: Mapping[str, str]) -> bool:
    """Whether a 424's model container status is 4xx (the request was at fault)."""
    code = headers.get(MODEL_ERROR_STATUS_HEADER, "").strip()
    return code.isdigit() and 400 <= int(code) < 500


def is_endpoint_failure(status: int | None, headers: Mapping[str, str] | None = None) -> bool:
    """Whether an outcome says the endpoint is unhealthy (a breaker failure): no answer at all
    (``None``: connection error or timeout), 408, 5xx, or a 424 whose container status is not
    4xx. A 429 is not (throttling proves the endpoint is up), nor is any other answer (the
    endpoint answered; the request was at fault)."""
    if status == HTTP_FAILED_DEPENDENCY:
        return not _container_client_error(headers or {})
    return status is None or status == HTTP_REQUEST_TIMEOUT or status >= 500


class CircuitState(enum.Enum):
    """The circuit breaker's states: closed (calls pass), open (calls fail fast), half-open."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Told of every change of a breaker's state: (state, last failure, seconds to the next probe).
BreakerObserver = Callable[[CircuitState, str | None, float | None], None]
# How long a call waits, at least, while another call is the half-open probe.
PROBE_WAIT_S = 1.0


class CircuitBreaker:
    """Per-endpoint breaker: opens after ``failures`` consecutive failures, then fails calls
    fast with :class:`CircuitOpenError` until ``reset_s`` has passed, then lets one probe call
    through (half-open): success closes it, failure opens it again.

    It keeps the last failure's cause, so a call failed fast says why the endpoint is down,
    and tells ``on_change`` (when given) of every change, so that other processes (the admin
    API's readiness) can see the state of this one's breaker.

    Not thread-safe by design: one breaker lives in one event loop, where its methods run
    without interleaving.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        failures: int,
        reset_s: float,
        clock: Clock,
        logger: Any,
        on_change: BreakerObserver | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._threshold = failures
        self._reset_s = reset_s
        self._clock = clock
        self._log = logger
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self._told_closed = False
        self.last_error: str | None = None

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def probing(self) -> bool:
        """A half-open probe call is in flight."""
        return self._probing

    def _changed(self, retry_in_s: float | None) -> None:
        if self._on_change is not None:
            self._on_change(self._state, self.last_error, retry_in_s)

    def acquire(self) -> bool:
        """Allow a call or raise CircuitOpenError; True when the call is the half-open probe."""
        if self._state is CircuitState.OPEN:
            waited = self._clock() - self._opened_at
            if waited < self._reset_s:
                raise self._open_error(self._reset_s - waited)
            self._state = CircuitState.HALF_OPEN
            self._log.info("circuit_half_open", endpoint=self.endpoint)
        if self._state is CircuitState.HALF_OPEN:
            if self._probing:
                raise self._open_error(PROBE_WAIT_S)
            self._probing = True
            return True
        return False

    def _open_error(self, remaining_s: float) -> CircuitOpenError:
        return CircuitOpenError(
            f"{self.last_error or 'endpoint failing'} (circuit open for {self.endpoint} after "
            f"{self._consecutive} consecutive failures; next probe in {remaining_s:.1f} s)",
            retry_after_s=remaining_s,
        )

    def next_probe_in(self) -> float:
        """Seconds until the open breaker lets a probe through (0 when it is not open)."""
        if self._state is not CircuitState.OPEN:
            return 0.0
        return max(self._reset_s - (self._clock() - self._opened_at), 0.0)

    def record_success(self) -> None:
        """The endpoint answered: close the breaker and forget past failures."""
        was = self._state
        self._state = CircuitState.CLOSED
        self._consecutive = 0
        self._probing = False
        if was is not CircuitState.CLOSED:
            self._log.info("circuit_closed", endpoint=self.endpoint)
        if was is not CircuitState.CLOSED or not self._told_closed:
            # also the first success of a new breaker: another process's, or this one's
            # before a restart, may have been recorded open
            self._told_closed = True
            self._changed(None)

    def record_failure(self, cause: str | None = None) -> None:
        """The endpoint failed (``cause`` says how): open after the threshold, or at once when
        the probe failed."""
        self._consecutive += 1
        if cause is not None:
            self.last_error = cause
        probe_failed = self._state is CircuitState.HALF_OPEN
        self._probing = False
        if probe_failed or (
            self._state is CircuitState.CLOSED and self._consecutive >= self._threshold
        ):
            self._state = CircuitState.OPEN
            self._opened_at = self._clock()
            self._told_closed = False
            self._log.warning(
                "circuit_opened",
                endpoint=self.endpoint,
                consecutive_failures=self._consecutive,
                reset_s=self._reset_s,
                error=self.last_error,
            )
            self._changed(self._reset_s)

    def release_probe(self) -> None:
        """A probe ended without a verdict (cancelled): let the next call probe instead."""
        self._probing = False
