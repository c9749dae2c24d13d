"""Retry timing, status classification, the circuit breaker and auth, with injected time."""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.testing import capture_logs

from listener.errors import CircuitOpenError, PermanentModelError, TransientModelError
from listener.infer import MedImageInsightClient, ModelTransport
from listener.infer.auth import ENTRA_SCOPE, EntraAuth, KeyAuth
from listener.infer.resilience import (
    CallBackoff,
    CircuitBreaker,
    CircuitState,
    is_endpoint_failure,
    parse_retry_after,
    status_error,
)
from listener.infer.transport import new_request_id
from listener.infer.wire import decode_b64, encode_b64, join_prompts
from listener.settings import ModelSettings


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class NullLogger:
    """A logger that drops everything."""

    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


@pytest.mark.parametrize(
    ("status", "headers", "body", "message"),
    [
        (400, {}, '{"error": "missing field x"}', 'request rejected: {"error": "missing field x"}'),
        (401, {}, "", "key rejected"),
        (403, {}, "", "access denied"),
        (404, {}, "", "no deployment with traffic"),
        (
            424,
            {"ms-azureml-model-error-statuscode": "400", "ms-azureml-model-error-reason": "bad"},
            "",
            "model container answered 400: bad",
        ),
        (405, {}, "Method Not Allowed", "unexpected answer: Method Not Allowed"),
    ],
)
def test_permanent_statuses(status: int, headers: dict[str, str], body: str, message: str) -> None:
    """4xx answers other than 408/429 are permanent, with a message naming model and cause."""
    error = status_error(status, headers, body, model="cxrreportgen", auth="key", now_epoch_s=0)
    assert isinstance(error, PermanentModelError)
    assert str(error).startswith(f"{status} from cxrreportgen endpoint: {message}")


def test_entra_401_says_token() -> None:
    """A 401 under Entra auth blames the token, not a key."""
    error = status_error(401, {}, "", model="medimageparse", auth="entra", now_epoch_s=0)
    assert str(error) == "401 from medimageparse endpoint: token rejected"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_carry_retry_after(status: int) -> None:
    """408, 429 and 5xx are transient and carry the server's Retry-After."""
    error = status_error(status, {"retry-after": "3"}, "", model="m", auth="key", now_epoch_s=0)
    assert isinstance(error, TransientModelError) and error.retryable
    assert error.retry_after_s == 3.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        ("0.25", 0.25),
        ("-4", 0.0),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 40.0),
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    """Retry-After is read as seconds or as an HTTP-date relative to the given now (epoch 60)."""
    assert parse_retry_after(value, now_epoch_s=60.0) == seconds


def test_backoff_grows_exponentially_with_jitter_and_caps() -> None:
    """Attempt n waits within [c/2, c], c = initial·2^(n-1) capped at max; Retry-After wins up
    to its own cap."""
    backoff = CallBackoff(initial_s=0.5, max_s=4.0, max_retry_after_s=10.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        waits = [backoff.delay(attempt, None, rng) for _ in range(50)]
        assert all(ceiling / 2 <= wait <= ceiling for wait in waits)
        assert len(set(waits)) > 1
    assert backoff.delay(1, 7.0, rng) == 7.0
    assert backoff.delay(1, 3600.0, rng) == 10.0


@pytest.mark.parametrize(
    "headers",
    [
        {"ms-azureml-model-error-statuscode": "500", "ms-azureml-model-error-reason": "OOM"},
        {},  # the endpoint's own 424 while its liveness/readiness probes fail
    ],
)
def test_424_is_transient_unless_the_container_status_is_4xx(headers: dict[str, str]) -> None:
    """A 424 with a 5xx container status, or none, is transient and counts against the
    endpoint; only a 4xx container status makes it permanent (and the endpoint healthy)."""
    error = status_error(424, headers, "", model="m", auth="key", now_epoch_s=0)
    assert isinstance(error, TransientModelError)
    assert str(error).startswith("424 from m endpoint: model container not ready or failing")
    assert is_endpoint_failure(424, headers)
    assert not is_endpoint_failure(424, {"ms-azureml-model-error-statuscode": "422"})


def test_endpoint_health_outcomes() -> None:
    """No answer, 408 and 5xx count against the endpoint; 429 and other answers do not."""
    assert [is_endpoint_failure(s) for s in (None, 408, 500, 503)] == [True] * 4
    assert [is_endpoint_failure(s) for s in (200, 400, 401, 429)] == [False] * 4


def test_breaker_opens_fails_fast_and_probes_once() -> None:
    """N consecutive failures open the breaker; it fails fast until reset_s, then lets exactly
    one probe through; a successful probe closes it, a failed one reopens it."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        "https://e/score", failures=2, reset_s=10, clock=clock, logger=NullLogger()
    )
    breaker.record_failure()
    breaker.record_success()  # a success resets the count: failures must be consecutive
    breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    clock.now += 9.9
    with pytest.raises(CircuitOpenError, match="circuit open for https://e/score"):
        breaker.acquire()
    clock.now += 0.1
    assert breaker.acquire() is True  # the probe
    with pytest.raises(CircuitOpenError):
        breaker.acquire()  # only one probe at a time
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    clock.now += 10
    assert breaker.acquire() is True
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED and breaker.acquire() is False


def test_an_abandoned_probe_lets_the_next_call_probe() -> None:
    """A probe that ends without a verdict (cancelled) frees the half-open slot."""
    clock = FakeClock()
    breaker = CircuitBreaker("e", failures=1, reset_s=1, clock=clock, logger=NullLogger())
    breaker.record_failure()
    clock.now += 1
    assert breaker.acquire() is True
    breaker.release_probe()
    assert breaker.acquire() is True


def test_request_ids_fit_the_tracing_header() -> None:
    """Client request ids use alphanumerics and '-' only, at most 40 characters, and differ."""
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,40}", value) for value in ids)


def test_prompts_must_be_separable() -> None:
    """Prompts are stripped and joined with ' & '; an empty prompt or one holding '&' is refused."""
    assert join_prompts([" liver", "spleen "]) == "liver & spleen"
    for bad in ([], [""], ["liver & spleen"]):
        with pytest.raises(ValueError, match="prompt"):
            join_prompts(bad)


def test_retries_honour_retry_after_without_sleeping_and_never_log_the_key() -> None:
    """The injected sleep sees the server's Retry-After; retry events carry the request id, and
    neither logs nor errors contain the key."""
    answers = [
        httpx.Response(503, headers={"Retry-After": "7"}),
        httpx.Response(429),
        httpx.Response(200, json=[{"text_features": [0.0] * 1024}]),
    ]
    seen: list[httpx.Request] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[len(seen) - 1]

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    settings = ModelSettings(endpoint="https://e.x/score", key=SecretStr("top-secret"), retries=3)
    transport = ModelTransport(
        "medimageinsight",
        settings,
        http=httpx.AsyncClient(transport=httpx.MockTransport(endpoint)),
        backoff=CallBackoff(initial_s=1.0, max_s=1.0),
        sleep=sleep,
        rng=random.Random(0),
    )
    with capture_logs() as logs:
        asyncio.run(MedImageInsightClient(transport, batch_size=1).embed_texts(["t"]))
    assert slept[0] == 7.0 and 0.5 <= slept[1] <= 1.0
    ids = {request.headers["x-ms-client-request-id"] for request in seen}
    assert len(ids) == 1  # one id per call, kept across its attempts
    retries = [event for event in logs if event["event"] == "model_call_retry"]
    assert len(retries) == 2 and retries[0]["request_id"] in ids
    assert "top-secret" not in repr(logs)


@dataclass
class Token:
    """An access token as azure-identity returns it."""

    token: str
    expires_on: int


class FakeCredential:
    """Stands in for DefaultAzureCredential, which needs a real Entra tenant."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str) -> Token:
        self.calls.append(scopes)
        return Token(token=f"tok{len(self.calls)}", expires_on=1000 + 3600 * len(self.calls))


def test_entra_tokens_are_cached_until_near_expiry() -> None:
    """The token for https://ml.azure.com/.default is reused until five minutes before it
    expires, then fetched again."""
    credential = FakeCredential()
    clock = FakeClock(1000.0)
    auth = EntraAuth(credential, clock=clock)

    async def headers() -> list[str | None]:
        first = await auth.header()
        clock.now = 1000 + 3600 - 301
        second = await auth.header()
        clock.now = 1000 + 3600 - 299
        third = await auth.header()
        return [first, second, third]

    assert asyncio.run(headers()) == ["Bearer tok1", "Bearer tok1", "Bearer tok2"]
    assert credential.calls == [(ENTRA_SCOPE,), (ENTRA_SCOPE,)]
    assert "tok2" not in repr(auth)


def test_key_auth_header() -> None:
    """Key auth sends the key as bearer, or nothing when there is no key, and hides it in repr."""
    assert asyncio.run(KeyAuth(SecretStr("k")).header()) == "Bearer k"
    assert asyncio.run(KeyAuth(None).header()) is None
    assert "k)" not in repr(KeyAuth(SecretStr("k")))


@given(data=st.binary(max_size=600), cut=st.integers(min_value=1, max_value=90))
def test_base64_decodes_leniently(data: bytes, cut: int) -> None:
    """MIME base64 (76-character lines) and any other line wrapping or missing padding decode
    to the same bytes."""
    plain = base64.b64encode(data).decode()
    wrapped = "\n".join(plain[i : i + cut] for i in range(0, len(plain), cut))
    assert decode_b64(encode_b64(data)) == data
    assert decode_b64(wrapped) == data
    assert decode_b64(plain.rstrip("=")) == data


def _stdlib_decode(text: str) -> bytes:
    """The lenient decoding of :func:`decode_b64`, written with the standard library only."""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        compact = "".join(text.split())
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)


@given(data=st.binary(max_size=2000))
def test_base64_writes_what_the_standard_library_writes(data: bytes) -> None:
    """The SIMD encoder sends the MIME lines of ``base64.encodebytes``, byte for byte."""
    assert encode_b64(data) == base64.encodebytes(data).decode("ascii")


@settings(max_examples=500)
@given(text=st.text(alphabet="ABCDabcd0189+/=\n\r -_*", max_size=40))
def test_base64_accepts_and_refuses_what_the_standard_library_does(text: str) -> None:
    """Any text: the SIMD decoder gives the standard library's bytes, or refuses it as it does
    (malformed padding such as ``0000=`` included, which pybase64 alone would refuse)."""
    try:
        expected: bytes | None = _stdlib_decode(text)
    except binascii.Error:
        expected = None
    try:
        got: bytes | None = decode_b64(text)
    except binascii.Error:
        got = None
    assert got == expected
