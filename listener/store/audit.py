"""The audit trail: who sent what, who received what, which model saw what (IHE ATNA).

Every record is a DICOM audit message (PS3.15 A.5, built by :mod:`listener.store.atna`) written
durably to the journal's ``audit_events`` table before the event's own log line, so the trail is
complete whatever happens to the logs; the admin API (``/api/audit``) and ``pacs-ai audit`` read
it, and the syslog shipper (:mod:`listener.serve.syslog`) sends what it has not sent yet. Audit
records may carry the patient ID, as ATNA requires; they stay in this table and on the
collector, never in log lines.

:class:`AuditTrail` is what the stages call, one method per recorded event:

==========================  ==============================================================
association accepted/refused  Security Alert (110113), Node Authentication (110126)
study received                DICOM Instances Transferred (110104), action C
model call                    Begin Transferring DICOM Instances (110102), action E
result sent                   DICOM Instances Transferred (110104), action R
admin action                  Security Alert, Use of Restricted Function / Software Config.
gateway start/stop            Application Activity (110100), Application Start/Stop
audit log read                Query (110112)
==========================  ==============================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from listener.settings import Settings
from listener.store.associations import AssociationRecord
from listener.store.atna import (
    APPLICATION,
    APPLICATION_ACTIVITY,
    APPLICATION_LAUNCHER,
    APPLICATION_START,
    APPLICATION_STOP,
    BEGIN_TRANSFERRING,
    DESTINATION,
    INSTANCES_TRANSFERRED,
    NODE_AUTHENTICATION,
    QUERY,
    RESTRICTED_FUNCTION,
    SECURITY_ALERT,
    SOFTWARE_CONFIGURATION,
    SOURCE,
    AuditEvent,
    Code,
    Outcome,
    Participant,
    StudyObject,
    to_xml,
)
from listener.store.db import JournalTables, Row

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    outcome TEXT NOT NULL,
    study_uid TEXT,
    summary TEXT NOT NULL,
    message TEXT NOT NULL,
    shipped_at REAL
);
CREATE INDEX IF NOT EXISTS audit_events_unshipped ON audit_events (id) WHERE shipped_at IS NULL;
CREATE INDEX IF NOT EXISTS audit_events_study ON audit_events (study_uid);
"""


class AuditLog(JournalTables):
    """The ``audit_events`` table of the journal."""

    schema = SCHEMA

    def add(self, event: AuditEvent, summary: str) -> int:
        """Write one audit message durably; its row id."""
        with self.db.transaction() as db:
            cursor = db.execute(
                "INSERT INTO audit_events (at, event, outcome, study_uid, summary, message)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    event.when.timestamp(),
                    event.event.meaning,
                    event.outcome.value,
                    event.study_uid,
                    summary,
                    to_xml(event),
                ),
            )
            return int(cursor.fetchone()[0])

    def records(
        self, *, limit: int = 100, study_uid: str | None = None, event: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest records first (optionally of one study or one event), as dictionaries."""
        query = "SELECT * FROM audit_events WHERE 1 = 1"
        args: list[Any] = []
        if study_uid is not None:
            query += " AND study_uid = ?"
            args.append(study_uid)
        if event is not None:
            query += " AND event = ?"
            args.append(event)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self.db.read() as db:
            return [dict(row) for row in db.execute(query, args).fetchall()]

    def unshipped(self, limit: int = 200) -> list[Row]:
        """Records not yet sent to the syslog collector, oldest first."""
        with self.db.read() as db:
            return db.execute(
                "SELECT id, at, outcome, message FROM audit_events WHERE shipped_at IS NULL"
                " ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()

    def mark_shipped(self, ids: list[int], now: float) -> None:
        with self.db.transaction() as db:
            db.executemany(
                "UPDATE audit_events SET shipped_at = ? WHERE id = ?", [(now, i) for i in ids]
            )


def _when(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


class AuditTrail:
    """Writes one audit message per recorded event (see the module docstring)."""

    def __init__(
        self,
        log: AuditLog,
        *,
        source_id: str,
        our_ae: str,
        site_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self.source_id = source_id
        self.our_ae = our_ae
        self.site_id = site_id
        self.clock = clock

    @classmethod
    def open(cls, settings: Settings, clock: Callable[[], float] = time.time) -> AuditTrail:
        return cls(
            AuditLog(settings.journal_database),
            source_id=settings.audit.source_id,
            our_ae=settings.ae_titles[0],
            site_id=settings.audit.enterprise_site_id,
            clock=clock,
        )

    def close(self) -> None:
        self.log.close()

    def _add(self, summary: str, **fields: Any) -> int:
        event = AuditEvent(
            when=_when(self.clock()), source_id=self.source_id, site_id=self.site_id, **fields
        )
        return self.log.add(event, summary)

    def _us(self, *, requestor: bool, role: Code) -> Participant:
        return Participant(self.our_ae, requestor, role, alternative_user_id=self.source_id)

    def association(self, record: AssociationRecord, tls_subject: str | None, ok: bool) -> int:
        """An association accepted, or refused (admission or TLS handshake), with the peer's
        AE titles, address and verified certificate subject."""
        peer = Participant(
            record.calling_ae or "(unknown)",
            True,
            SOURCE,
            alternative_user_id=f"CN={tls_subject}" if tls_subject else None,
            network_access_point=record.peer_host,
        )
        return self._add(
            f"association {'accepted' if ok else 'refused'} from {record.peer_host}"
            f" calling {record.calling_ae or '-'} called {record.called_ae or '-'}"
            + (f" TLS CN={tls_subject}" if tls_subject else ""),
            event=SECURITY_ALERT,
            event_type=NODE_AUTHENTICATION,
            action="E",
            outcome=Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE,
            outcome_description=None if ok else record.error,
            participants=[peer, self._us(requestor=False, role=DESTINATION)],
            node=f"{record.peer_host}:{record.peer_port}",
        )

    def study_received(
        self,
        record: AssociationRecord,
        tls_subject: str | None,
        study_uid: str,
        patient_id: str | None,
        sop_classes: Mapping[str, int],
    ) -> int:
        """Instances of one study stored from one association."""
        sender = Participant(
            record.calling_ae,
            True,
            SOURCE,
            alternative_user_id=f"CN={tls_subject}" if tls_subject else None,
            network_access_point=record.peer_host,
        )
        count = sum(sop_classes.values())
        return self._add(
            f"received {count} instances of study {study_uid} from {record.calling_ae}",
            event=INSTANCES_TRANSFERRED,
            action="C",
            outcome=Outcome.SUCCESS,
            participants=[sender, self._us(requestor=False, role=DESTINATION)],
            study=StudyObject(study_uid, patient_id, dict(sop_classes)),
        )

    def model_call(
        self,
        *,
        model: str,
        endpoint: str,
        study_uid: str,
        patient_id: str | None,
        sent: Mapping[str, str],
        ok: bool,
        reason: str | None = None,
    ) -> int:
        """What one model call sent (or was refused by the egress policy): ``sent`` holds the
        image counts and the text fields as they left (or were withheld)."""
        return self._add(
            f"model {model}: {sent.get('ImagesSent', '0')} images sent for study {study_uid}"
            + ("" if ok else f" (refused: {reason})"),
            event=BEGIN_TRANSFERRING,
            action="E",
            outcome=Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE,
            outcome_description=reason,
            participants=[
                self._us(requestor=True, role=SOURCE),
                Participant(endpoint, False, DESTINATION, alternative_user_id=model),
            ],
            study=StudyObject(study_uid, patient_id, details=dict(sent)),
        )

    def result_sent(
        self,
        *,
        destination: str,
        address: str,
        study_uid: str,
        patient_id: str | None,
        sop_classes: Mapping[str, int],
        failure: str | None = None,
    ) -> int:
        """Result objects (or forwarded originals) of one study sent to a destination, or
        dead-lettered with the reason."""
        count = sum(sop_classes.values())
        return self._add(
            f"sent {count} instances of study {study_uid} to {destination}"
            + (f" (failed: {failure})" if failure else ""),
            event=INSTANCES_TRANSFERRED,
            action="R",
            outcome=Outcome.SUCCESS if failure is None else Outcome.SERIOUS_FAILURE,
            outcome_description=failure,
            participants=[
                self._us(requestor=True, role=SOURCE),
                Participant(destination, False, DESTINATION, network_access_point=address),
            ],
            study=StudyObject(study_uid, patient_id, dict(sop_classes)),
        )

    def admin_action(
        self, *, action: str, caller: str, target: str, ok: bool, detail: str | None = None
    ) -> int:
        """An operator action through the admin API (retry, cancel, rules reload)."""
        kind = SOFTWARE_CONFIGURATION if action == "reload" else RESTRICTED_FUNCTION
        return self._add(
            f"admin {action} {target} by {caller}" + ("" if ok else " (refused)"),
            event=SECURITY_ALERT,
            event_type=kind,
            action="E",
            outcome=Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE,
            outcome_description=detail,
            participants=[
                Participant(caller, True, APPLICATION_LAUNCHER, network_access_point=caller),
                self._us(requestor=False, role=APPLICATION),
            ],
            node=target,
        )

    def application(self, *, started: bool) -> int:
        """The gateway started or stopped."""
        return self._add(
            f"gateway {'started' if started else 'stopped'}",
            event=APPLICATION_ACTIVITY,
            event_type=APPLICATION_START if started else APPLICATION_STOP,
            action="E",
            outcome=Outcome.SUCCESS,
            participants=[self._us(requestor=False, role=APPLICATION)],
        )

    def drift_detected(self, group: str, statistic: float, p_value: float) -> int:
        """A group's embedding distribution drifted from its reference (listener.store.drift):
        an Application Activity with outcome Minor Failure (the gateway runs on, but its model
        input has changed). PS3.15 A.5.3.1 defines event types only for start and stop, and no
        DICOM audit event for model-input drift, so the event type is left out."""
        return self._add(
            f"embedding drift in group {group}: MMD2 {statistic:.5f}, p {p_value:.4f}",
            event=APPLICATION_ACTIVITY,
            action="E",
            outcome=Outcome.MINOR_FAILURE,
            outcome_description=f"embedding drift in group {group} (p {p_value:.4f})",
            participants=[self._us(requestor=False, role=APPLICATION)],
            node=group,
        )

    def audit_read(self, caller: str) -> int:
        """Someone read the audit trail (Query, PS3.15 A.5.3.10)."""
        return self._add(
            f"audit trail read by {caller}",
            event=QUERY,
            action="E",
            outcome=Outcome.SUCCESS,
            participants=[
                Participant(caller, True, SOURCE, network_access_point=caller),
                self._us(requestor=False, role=DESTINATION),
            ],
        )
