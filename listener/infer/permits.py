"""A process's side of the gateway-wide request permits (:mod:`listener.store.permits`).

:meth:`RequestPermits.hold` is held by a :class:`~listener.infer.transport.ModelTransport`
around each request it puts on the wire: it takes one of the model's ``concurrency`` permits,
waiting while all are held elsewhere, and gives it back when the answer is in. A permit freed in
this process wakes this process's waiters at once; one freed by another process is seen at the
next look, every few milliseconds at first and at most every :data:`MAX_WAIT_S`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from listener.errors import TransientModelError
from listener.logging import get_logger
from listener.store.db import DatabaseError
from listener.store.permits import ModelPermits, Permit

FIRST_WAIT_S = 0.005
MAX_WAIT_S = 0.1
# A permit outlives its request's deadline by this much before it lapses (a holder killed
# with a request in flight).
LEASE_MARGIN_S = 30.0

_log = get_logger("infer")
T = TypeVar("T")


class RequestPermits:
    """The permits of one process, named ``holder`` (its lease owner name)."""

    def __init__(
        self, store: ModelPermits, holder: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._holder = holder
        self._clock = clock
        self._freed: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()  # takes and releases, until they end

    @asynccontextmanager
    async def hold(self, model: str, limit: int, deadline_s: float) -> AsyncIterator[None]:
        """One of ``model``'s ``limit`` permits for the body, a request of at most
        ``deadline_s``; :class:`TransientModelError` when the journal cannot be asked.

        Cancellation-safe: a request cancelled while its permit is being taken or given back
        (a sibling request of its job failed) still gives it back, in the background."""
        permit = await self._acquire(model, limit, deadline_s + LEASE_MARGIN_S)
        try:
            yield
        finally:
            await asyncio.shield(self._keep(self._release(permit)))

    async def _release(self, permit: Permit) -> None:
        try:
            await asyncio.to_thread(self._store.release, permit)
        except DatabaseError as exc:  # it lapses on its own
            _log.warning("permit_release_failed", model=permit.model, error=str(exc))
        freed = self._freed.pop(permit.model, None)
        if freed is not None:
            freed.set()

    async def _try(self, model: str, limit: int, lease_s: float) -> Permit | None:
        """One look for a free permit, in a worker thread; when the caller is cancelled while
        the thread may be taking one, the permit it took is given back."""
        taking = self._keep(
            asyncio.to_thread(
                self._store.try_acquire, model, limit, self._holder, self._clock(), lease_s
            )
        )
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:
            taking.add_done_callback(self._give_back_if_taken)
            raise

    def _give_back_if_taken(self, taking: asyncio.Future[Permit | None]) -> None:
        if taking.cancelled() or taking.exception() is not None:
            return
        permit = taking.result()
        if permit is not None:
            self._keep(self._release(permit))

    def _keep(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """``work`` as a task referenced until it ends (one nobody may await to the end)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _acquire(self, model: str, limit: int, lease_s: float) -> Permit:
        wait_s = FIRST_WAIT_S
        while True:
            try:
                permit = await self._try(model, limit, lease_s)
            except DatabaseError as exc:
                raise TransientModelError(f"{model}: request permits unavailable: {exc}") from exc
            if permit is not None:
                return permit
            freed = self._freed.setdefault(model, asyncio.Event())
            try:
                await asyncio.wait_for(freed.wait(), wait_s)
            except TimeoutError:
                wait_s = min(wait_s * 2, MAX_WAIT_S)
