"""The outbox deliverer: sends what the outbox queue holds due, and records each outcome.

Destinations are served in parallel, each with its own C-STORE association(s)
(:class:`~listener.send.scu.StoreSender`), or STOW-RS requests for a ``kind: dicomweb`` one
(:class:`~listener.send.stow.StowSender`). A confirmed instance is ``sent``; a transient failure
is retried after an exponential backoff (:class:`SendBackoff`) until it has failed for
``max_age_s`` (a day by default) or ``max_attempts`` times in a row, and then becomes a dead
letter with its reason; a permanent failure is a dead letter at once. A destination that stays
unreachable therefore never keeps its entries forever: the dead letters show in the dashboard,
the metrics and ``pacs-ai jobs``, and an operator resubmits them once it is back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from listener.errors import (
    ObjectMissingError,
    ObjectStoreError,
    PermanentSendError,
    SendError,
    TransientSendError,
)
from listener.logging import get_logger
from listener.send.scu import InstanceOutcome, StoreItem, StoreSender
from listener.send.stow import StowSender
from listener.settings import Destination
from listener.store.audit import AuditTrail
from listener.store.outbox import Outbox, OutboxEntry, Outcome
from listener.timing import backoff_delay

_log = get_logger("outbox")

# Called with the destination's name, its settings and the outcome of every instance sent to it
# in one delivery: where an audit trail of what left the gateway is written.
SendObserver = Callable[[str, Destination | None, list[InstanceOutcome]], None]

DEFAULT_SEND_MAX_AGE_S = 86400.0


@dataclass(frozen=True)
class SendBackoff:
    """When a transient send failure is tried again: ``base_s * factor**(attempts-1)``, capped.

    An entry becomes a dead letter after ``max_attempts`` transient failures in a row, or at its
    first failure ``max_age_s`` or more after it was queued (or resubmitted); None switches a
    limit off.
    """

    base_s: float = 5.0
    factor: float = 2.0
    max_s: float = 900.0
    max_attempts: int | None = None
    max_age_s: float | None = DEFAULT_SEND_MAX_AGE_S

    def delay(self, attempts: int) -> float:
        return backoff_delay(attempts, self.base_s, self.max_s, self.factor)

    def gives_up(self, attempts: int, queued_at: float, now: float) -> bool:
        """Whether the ``attempts``-th transient failure, at ``now``, is the last one."""
        if self.max_attempts is not None and attempts >= self.max_attempts:
            return True
        return self.max_age_s is not None and now - queued_at >= self.max_age_s


@dataclass
class DeliveryReport:
    """Counts of one :meth:`Deliverer.deliver_due` call, per destination."""

    sent: dict[str, int] = field(default_factory=dict)
    retrying: dict[str, int] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)

    def add(self, destination: str, state: str) -> None:
        counter = {"sent": self.sent, "retry": self.retrying, "dead": self.dead}[state]
        counter[destination] = counter.get(destination, 0) + 1

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())


class Deliverer:
    """Sends the due entries of ``queue`` to ``destinations`` with ``sender``."""

    def __init__(
        self,
        queue: Outbox,
        destinations: Mapping[str, Destination],
        sender: StoreSender,
        backoff: SendBackoff | None = None,
        *,
        batch_size: int = 500,
        lease_s: float = 600.0,
        web_sender: StowSender | None = None,
        observer: SendObserver | None = None,
        audit: AuditTrail | None = None,
        fetch: Callable[[Path], Path] | None = None,
        owner: str | None = None,
    ) -> None:
        self.queue = queue
        # The claims carry it, so the sweeper can release them if this process goes silent.
        self.owner = owner
        # Spool files not on this host come from the bucket (listener.store.objects).
        self.fetch = fetch
        self.destinations = dict(destinations)
        self.sender = sender
        self.web_sender = web_sender or StowSender()
        self.observer = observer
        self.backoff = backoff or SendBackoff()
        self.batch_size = batch_size
        self.lease_s = lease_s
        self.audit = audit

    def deliver_due(self, now: float, destination: str | None = None) -> DeliveryReport:
        """Send every due entry (of ``destination`` only, when given), all destinations in
        parallel, and record each outcome."""
        report = DeliveryReport()
        due = self.queue.claim(
            now,
            batch_size=self.batch_size,
            lease_s=self.lease_s,
            owner=self.owner,
            destination=destination,
        )
        if not due:
            return report
        with ThreadPoolExecutor(max_workers=len(due)) as pool:
            futures = {
                name: pool.submit(self._send, name, entries) for name, entries in due.items()
            }
            for name, future in futures.items():
                self._record(name, due[name], future.result(), now, report)
        return report

    def _send(self, name: str, entries: list[OutboxEntry]) -> list[InstanceOutcome]:
        dest = self.destinations.get(name)
        items = [StoreItem(e.path, e.sop_instance_uid) for e in entries]
        unfetched = self._fetch(items)
        items = [item for item in items if item.path not in unfetched]
        if dest is None:
            error = PermanentSendError(f"destination {name!r} is not configured any more")
            outcomes = [InstanceOutcome(item, error) for item in items]
        elif dest.kind == "dicomweb":
            outcomes = self.web_sender.send(dest, items)
        else:
            outcomes = self.sender.send(dest, items)
        outcomes += [
            InstanceOutcome(StoreItem(e.path, e.sop_instance_uid), unfetched[e.path])
            for e in entries
            if e.path in unfetched
        ]
        if self.observer is not None:
            self.observer(name, dest, outcomes)
        return outcomes

    def _fetch(self, items: list[StoreItem]) -> dict[Path, SendError]:
        """Bring the items' files to this host; the failures (tried again later) by path."""
        failed: dict[Path, SendError] = {}
        if self.fetch is None:
            return failed
        for item in items:
            try:
                self.fetch(item.path)
            except ObjectMissingError:
                continue  # purged: the sender fails it as it does any missing file
            except ObjectStoreError as exc:
                failed[item.path] = TransientSendError(str(exc))
        return failed

    def _record(
        self,
        name: str,
        entries: list[OutboxEntry],
        outcomes: list[InstanceOutcome],
        now: float,
        report: DeliveryReport,
    ) -> None:
        by_item = {(o.item.path, o.item.sop_instance_uid): o for o in outcomes}
        decided = []
        for entry in entries:
            outcome = by_item.get((entry.path, entry.sop_instance_uid))
            if outcome is None:
                outcome = InstanceOutcome(
                    StoreItem(entry.path, entry.sop_instance_uid),
                    TransientSendError("no outcome reported"),
                )
            decision = self._decide(entry, outcome, now)
            decided.append(decision)
            report.add(name, decision.state)
        self.queue.record(decided, now)
        if self.audit is not None:
            self._audit(name, decided)
        _log.info(
            "outbox_delivered",
            destination=name,
            sent=report.sent.get(name, 0),
            retrying=report.retrying.get(name, 0),
            dead=report.dead.get(name, 0),
        )

    def _audit(self, name: str, decided: list[Outcome]) -> None:
        """One audit record per study and outcome: sent, or dead-lettered with its reason."""
        dest = self.destinations.get(name)
        address = f"{dest.host}:{dest.port}" if dest is not None else ""
        groups: dict[tuple[str, str | None, str | None], Counter[str]] = {}
        for outcome in decided:
            if outcome.state == "retry":
                continue
            try:
                ds = dcmread(
                    outcome.entry.path,
                    stop_before_pixels=True,
                    specific_tags=["StudyInstanceUID", "PatientID", "SOPClassUID"],
                )
            except (OSError, ValueError):
                continue
            failure = outcome.error if outcome.state == "dead" else None
            key = (str(ds.get("StudyInstanceUID", "")), ds.get("PatientID"), failure)
            groups.setdefault(key, Counter())[str(ds.get("SOPClassUID", ""))] += 1
        for (study_uid, patient_id, failure), classes in groups.items():
            self.audit.result_sent(  # type: ignore[union-attr]
                destination=name,
                address=address,
                study_uid=study_uid,
                patient_id=str(patient_id) if patient_id else None,
                sop_classes=dict(classes),
                failure=failure,
            )

    def _decide(self, entry: OutboxEntry, outcome: InstanceOutcome, now: float) -> Outcome:
        attempts = entry.attempts + 1
        if outcome.confirmed:
            return Outcome(entry, "sent", attempts)
        give_up = self.backoff.gives_up(attempts, entry.enqueued_at, now)
        if outcome.transient and not give_up:
            return Outcome(
                entry, "retry", attempts, now + self.backoff.delay(attempts), str(outcome.error)
            )
        reason = str(outcome.error)
        if outcome.transient:
            hours = (now - entry.enqueued_at) / 3600
            reason = f"gave up after {attempts} attempts in {hours:.1f} h: {reason}"
        _log.warning(
            "outbox_dead_letter",
            destination=entry.destination,
            job_id=entry.job_id,
            sop_instance_uid=entry.sop_instance_uid,
            reason=reason,
        )
        return Outcome(entry, "dead", attempts, error=reason)
