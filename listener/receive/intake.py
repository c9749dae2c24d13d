"""One C-STORE from its first byte to its status: stream to the spool, check, claim, journal.

The data set is written to a temporary spool file as its fragments arrive (never held whole in
memory), with a cap on the instance's size; once it is complete its identifying UIDs are read
from the file (PS3.5 §9.1 checked before a UID names anything) and the SOP Instance UID is
*claimed* by linking the file to its final name (:meth:`listener.store.spool.Spool.claim`):
of two associations sending one SOP Instance UID at once exactly one stores it, and a file that
was acknowledged is never replaced. The other gets the duplicate answer (PS3.4 B.2.3 leaves it
to the SCP): Success without storing when the content is the same; when it differs, the content
is journaled as a conflict and kept in the quarantine for an operator, and the answer is the
``duplicate_conflict`` setting's (Success, or the warning Elements Discarded).

Every refused instance gets a named failure status and a quarantine entry with its reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from listener.errors import InstanceTooLargeError, InvalidDatasetError, MissingIdentifierError
from listener.logging import get_logger
from listener.receive.status import HANDLER_FAILURE, StoreStatus
from listener.settings import Settings
from listener.store.header import meta_end
from listener.store.journal import AssociationRecord, InstanceConflict, Journal
from listener.store.spool import (
    Incoming,
    InstanceHeader,
    Spool,
    encode_file_meta,
    file_digest,
    uid_problem,
)

MIB = 1024 * 1024


@dataclass(frozen=True)
class StoreRequest:
    """What a C-STORE-RQ and its presentation context say (PS3.7 Table 9.3-1)."""

    sop_class_uid: str
    sop_instance_uid: str
    context_class: str  # the abstract syntax the context was negotiated for
    transfer_syntax: str
    # STOW-RS to /studies/{study} (PS3.18 §10.5.1): an instance of another study is refused.
    expected_study: str | None = None


class StoreFailedError(Exception):
    """A C-STORE that fails with ``status``; the bytes are quarantined with ``reason``."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def utc_text(now: float) -> str:
    """ISO 8601 UTC text of an epoch time (for reason files)."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PendingStore:
    """One C-STORE being received: :meth:`write` each data fragment, then :meth:`finish`."""

    def __init__(
        self,
        intake: Intake,
        request: StoreRequest,
        record: AssociationRecord | None,
        incoming: Incoming | None,
        refusal: StoreStatus | None = None,
    ) -> None:
        self._intake = intake
        self.request = request
        self.record = record
        self.incoming = incoming
        self._refusal = refusal

    def write(self, chunk: bytes | memoryview) -> None:
        """Append a data set fragment; a write that fails (the spool's disk) drops the file and
        makes the store fail with :data:`HANDLER_FAILURE`, while the rest of the message is
        still read so that the association can carry on."""
        if self.incoming is None:
            return
        try:
            self.incoming.write(chunk)
        except Exception:
            self._intake.log.exception("store_write_failed")
            self.fail()

    def fail(self) -> None:
        """Give up on this instance: nothing is kept, and :meth:`finish` answers
        :data:`HANDLER_FAILURE` (PS3.7 Annex C, Processing Failure)."""
        self.abandon()
        self.incoming = None
        self._refusal = HANDLER_FAILURE

    def finish(self) -> StoreStatus:
        """Check, claim and journal the instance; its status. The temporary file is gone after."""
        try:
            if self.incoming is None:
                return self._refusal or StoreStatus.OUT_OF_RESOURCES
            return self._intake.complete(self)
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Drop whatever was written (a cut-short association); safe to call twice."""
        if self.incoming is not None:
            self.incoming.discard()


class Intake:
    """The C-STORE logic of the receiver, with its dependencies passed in."""

    def __init__(
        self,
        settings: Settings,
        spool: Spool,
        journal: Journal,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.journal = journal
        self.clock = clock
        self.log = get_logger("receive")
        # Told of every instance stored (not of duplicates): the receiver's audit tally.
        self.on_stored: Callable[[AssociationRecord | None, InstanceHeader], None] | None = None

    def begin(self, request: StoreRequest, record: AssociationRecord | None) -> PendingStore:
        """Start receiving one instance; refused at once (nothing written) when the disk is full.

        The file meta (PS3.10 §7.1) is built from the command; the Source Application Entity
        Title records the calling AE.
        """
        free = self.spool.free_mb()
        if free < self.spool.min_free_mb:
            self.log.error(
                "instance_refused",
                association=record.id if record else None,
                reason=f"free space {free:.0f} MiB is under disk_min_free_mb",
                status=StoreStatus.OUT_OF_RESOURCES.name,
            )
            return PendingStore(self, request, record, None, StoreStatus.OUT_OF_RESOURCES)
        meta = encode_file_meta(
            sop_class_uid=request.sop_class_uid,
            sop_instance_uid=request.sop_instance_uid,
            transfer_syntax=request.transfer_syntax,
            source_ae=record.calling_ae if record else "",
            called_ae=record.called_ae if record else "",
            peer=(record.peer_host, record.peer_port) if record else None,
        )
        limit = self.settings.max_instance_mb * MIB + len(meta)
        return PendingStore(self, request, record, self.spool.open_incoming(meta, limit))

    def complete(self, pending: PendingStore) -> StoreStatus:
        """The status of a fully received instance (see the module docstring)."""
        assert pending.incoming is not None
        try:
            header = self._checked_header(pending)
            return self._claim(pending, header)
        except StoreFailedError as failure:
            self._quarantine(pending, failure)
            return failure.status

    def _checked_header(self, pending: PendingStore) -> InstanceHeader:
        request, incoming = pending.request, pending.incoming
        assert incoming is not None
        if incoming.over_limit:
            raise StoreFailedError(
                StoreStatus.OUT_OF_RESOURCES,
                f"instance of {incoming.size} bytes is over max_instance_mb"
                f" ({self.settings.max_instance_mb} MiB)",
            )
        if request.sop_class_uid != request.context_class:
            raise StoreFailedError(
                StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                f"command SOP class {request.sop_class_uid} differs from the negotiated"
                f" {request.context_class}",
            )
        problem = uid_problem(request.sop_instance_uid)
        if problem is not None:
            raise StoreFailedError(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"Affected SOP Instance UID is not a valid UID (PS3.5 §9.1): it {problem}",
            )
        try:
            header = incoming.header(
                request.transfer_syntax, max_inflated=self.settings.max_inflated_mb * MIB
            )
        except InstanceTooLargeError as exc:
            raise StoreFailedError(StoreStatus.OUT_OF_RESOURCES, str(exc)) from exc
        except InvalidDatasetError as exc:
            status = (
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
                if isinstance(exc, MissingIdentifierError)
                else StoreStatus.CANNOT_UNDERSTAND
            )
            raise StoreFailedError(status, str(exc)) from exc
        if header.sop_class_uid != request.context_class:
            raise StoreFailedError(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"dataset SOP class {header.sop_class_uid} differs from the negotiated one",
            )
        if header.sop_instance_uid != request.sop_instance_uid:
            raise StoreFailedError(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "dataset SOP Instance UID differs from the command's Affected SOP Instance UID",
            )
        if request.expected_study is not None and header.study_uid != request.expected_study:
            raise StoreFailedError(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "dataset Study Instance UID differs from the study of the request",
            )
        return header

    def _claim(self, pending: PendingStore, header: InstanceHeader) -> StoreStatus:
        incoming, record = pending.incoming, pending.record
        assert incoming is not None
        relative = self.spool.claim(incoming, header)
        if relative is None:  # the final name exists: another sender's file, never replaced
            return self._duplicate(
                pending, header, self.spool.root / self.spool.relative_path(header)
            )
        if self.spool.shared is not None:  # spool_url: s3://... (listener.store.uploads)
            problem = self.spool.shared.publish(relative, self.spool.root / relative, self.clock())
            if problem is not None:
                self.spool.unclaim(relative)
                self.log.error(
                    "instance_refused",
                    association=record.id if record else None,
                    reason=problem,
                    status=StoreStatus.OUT_OF_RESOURCES.name,
                )
                return StoreStatus.OUT_OF_RESOURCES
        stored = self.journal.record_instance(
            header.record(
                relative,
                incoming.size,
                self.clock(),
                record.id if record else None,
                digest=incoming.digest,
            ),
            quiet_period_s=self.settings.quiet_period_s,
            calling_ae=record.calling_ae if record else None,
            called_ae=record.called_ae if record else None,
            patient_id=header.patient_id,
            patient_name=header.patient_name,
        )
        if not stored:  # journaled under another study or series: ours is not acknowledged
            self.spool.unclaim(relative)
            known = self.journal.instance(header.sop_instance_uid)
            existing = self.spool.root / known.path if known is not None else None
            return self._duplicate(pending, header, existing)
        if record is not None:
            record.stored += 1
        if self.on_stored is not None:
            self.on_stored(record, header)
        self.log.debug(
            "instance_stored",
            association=record.id if record else None,
            study_uid=header.study_uid,
            sop_instance_uid=header.sop_instance_uid,
            size=incoming.size,
        )
        return StoreStatus.SUCCESS

    def _duplicate(
        self, pending: PendingStore, header: InstanceHeader, existing: Path | None
    ) -> StoreStatus:
        """A SOP Instance UID already stored: Success if the data set is the same, else a
        conflict kept in the quarantine and answered as ``duplicate_conflict`` says."""
        incoming, record = pending.incoming, pending.record
        assert incoming is not None
        if record is not None:
            record.duplicates += 1
        ours = file_digest(incoming.path, start=incoming.meta_length)
        theirs = _dataset_digest(existing)
        if ours == theirs:
            self.log.info(
                "instance_duplicate",
                association=record.id if record else None,
                study_uid=header.study_uid,
                sop_instance_uid=header.sop_instance_uid,
            )
            return StoreStatus.SUCCESS
        now = self.clock()
        warn = self.settings.duplicate_conflict == "warning"
        status = StoreStatus.WARNING_ELEMENTS_DISCARDED if warn else StoreStatus.SUCCESS
        reason = "conflict: a stored instance has this SOP Instance UID and other content"
        path = self.spool.quarantine_incoming(
            incoming, self._reason(pending, reason, status, now) | {"kind": "conflict"}
        )
        self.journal.record_conflict(
            InstanceConflict(
                sop_instance_uid=header.sop_instance_uid,
                received_at=now,
                association_id=record.id if record else None,
                size=incoming.size,
                digest=incoming.digest,
                # The stored file itself: its claimant may not have journaled it yet.
                stored_digest=_file_digest(existing),
                quarantine_file=path.name,
            )
        )
        self.log.warning(
            "instance_conflict",
            association=record.id if record else None,
            study_uid=header.study_uid,
            sop_instance_uid=header.sop_instance_uid,
            status=status.name,
            file=path.name,
        )
        return status

    def _reason(
        self, pending: PendingStore, reason: str, status: StoreStatus, now: float
    ) -> dict[str, object]:
        request, record = pending.request, pending.record
        return {
            "reason": reason,
            "status": status.name,
            "status_code": int(status),
            "association": record.id if record else None,
            "peer": f"{record.peer_host}:{record.peer_port}" if record else None,
            "calling_ae": record.calling_ae if record else None,
            "called_ae": record.called_ae if record else None,
            "negotiated_sop_class": request.context_class,
            "transfer_syntax": request.transfer_syntax,
            "command_sop_class": request.sop_class_uid,
            "command_sop_instance": request.sop_instance_uid[:80],
            "size": pending.incoming.size if pending.incoming else 0,
            "time_utc": utc_text(now),
        }

    def _quarantine(self, pending: PendingStore, failure: StoreFailedError) -> None:
        assert pending.incoming is not None
        record = pending.record
        reason = self._reason(pending, failure.reason, failure.status, self.clock())
        path = self.spool.quarantine_incoming(pending.incoming, reason)
        self.log.warning(
            "instance_quarantined",
            association=record.id if record else None,
            calling_ae=record.calling_ae if record else None,
            reason=failure.reason,
            status=failure.status.name,
            file=path.name,
        )


def _file_digest(path: Path | None) -> str | None:
    """SHA-256 of a whole spool file, or None if it is gone."""
    if path is None:
        return None
    try:
        return file_digest(path)
    except OSError:
        return None


def _dataset_digest(path: Path | None) -> str | None:
    """SHA-256 of a spool file's data set (after its file meta), or None if it is gone."""
    if path is None:
        return None
    try:
        return file_digest(path, start=meta_end(path))
    except (OSError, InvalidDatasetError):
        return None
