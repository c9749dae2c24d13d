"""Tools for users testing their set-up: C-ECHO, C-STORE of files, and the journal's studies."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from tqdm import tqdm

from listener.receive.status import STORED_STATUSES, EchoStatus
from listener.send.scu import prepare_requestor
from listener.settings import Settings
from listener.store.journal import Journal
from listener.timing import utc_text


def echo(host: str, port: int, *, aet: str, aec: str, timeout: float) -> tuple[bool, str]:
    """C-ECHO (PS3.7 §9.1.5) the peer; return whether it answered Success and a message."""
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=aec, evt_handlers=[(evt.EVT_CONN_OPEN, _on_open)])
    if not assoc.is_established:
        return False, f"association with {aec}@{host}:{port} was rejected or failed"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status and status.Status == EchoStatus.SUCCESS:
        return True, f"C-ECHO to {aec}@{host}:{port}: success"
    return False, f"C-ECHO to {aec}@{host}:{port} failed: {status!r}"


@dataclass
class SendReport:
    """What a send did: counts and the files that failed with why."""

    sent: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [f"sent {self.sent}, failed {len(self.failed)}"]
        lines += [f"  {path}: {why}" for path, why in self.failed]
        return "\n".join(lines)


def dicom_files(paths: list[Path]) -> list[Path]:
    """The files named, and every file under the folders named, in a stable order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file())
        else:
            out.append(path)
    return out


def _contexts_for(datasets: list[tuple[Path, Dataset]]) -> list[tuple[str, list[str]]]:
    """One presentation context per SOP class and transfer syntax the files need."""
    wanted: dict[tuple[str, str], None] = {}
    for _, ds in datasets:
        wanted[(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))] = None
    return [(sop, [syntax]) for sop, syntax in wanted]


def send_files(
    host: str,
    port: int,
    paths: list[Path],
    *,
    aet: str,
    aec: str,
    timeout: float,
    progress: bool,
) -> SendReport:
    """C-STORE every DICOM file under ``paths`` over one association, as stored (no transcoding).

    Files that are not DICOM are reported as failed. pynetdicom proposes at most 128 presentation
    contexts (PS3.8 §9.3.2.2), which covers far more SOP class/transfer syntax pairs than a test
    set needs.
    """
    report = SendReport()
    datasets: list[tuple[Path, Dataset]] = []
    for path in dicom_files(paths):
        try:
            datasets.append((path, dcmread(path)))
        except (InvalidDicomError, OSError, ValueError) as exc:
            report.failed.append((path, f"not readable as DICOM: {exc}"))
    if not datasets:
        return report
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop, syntaxes in _contexts_for(datasets)[:128]:
        ae.add_requested_context(sop, syntaxes)
    assoc = ae.associate(host, port, ae_title=aec, evt_handlers=[(evt.EVT_CONN_OPEN, _on_open)])
    if not assoc.is_established:
        report.failed += [(path, "association rejected or failed") for path, _ in datasets]
        return report
    try:
        for path, ds in tqdm(datasets, unit="file", disable=not progress):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                report.failed.append((path, "no response (association lost or timed out)"))
            elif code in STORED_STATUSES:
                report.sent += 1
            else:
                report.failed.append((path, f"status 0x{code:04X}"))
    finally:
        if assoc.is_established:
            assoc.release()
    return report


def send_dicomweb(url: str, paths: list[Path], *, user: str | None, timeout: float) -> SendReport:
    """STOW-RS every DICOM file under ``paths`` to ``url`` as stored, with the gateway's own
    sender (:class:`~listener.send.stow.StowSender`); ``user`` is ``USER:PASSWORD``."""
    from listener.send.scu import StoreItem
    from listener.send.stow import StowSender
    from listener.settings import Destination, WebAuth

    report = SendReport()
    items = []
    for path in dicom_files(paths):
        try:
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        except (InvalidDicomError, OSError, ValueError, AttributeError) as exc:
            report.failed.append((path, f"not readable as DICOM: {exc}"))
            continue
        items.append(StoreItem(path, uid))
    auth = WebAuth()
    if user:
        name, _, password = user.partition(":")
        auth = WebAuth(type="basic", username=name, password=password)  # type: ignore[arg-type]
    dest = Destination(kind="dicomweb", url=url, auth=auth, timeout_s=timeout)
    for outcome in StowSender().send(dest, items):
        if outcome.confirmed:
            report.sent += 1
        else:
            report.failed.append((Path(outcome.item.path), str(outcome.error)))
    return report


def _on_open(event: Any) -> None:
    prepare_requestor(event.assoc)


def print_studies(settings: Settings, *, as_json: bool, show_patient: bool) -> int:
    """Print the studies the journal holds: state, generation, counts, times (UTC).

    Patient ID and name are shown only with ``show_patient``.
    """
    if not settings.journal_path.exists():
        print(f"no journal at {settings.journal_path}")
        return 0
    journal = Journal(settings.journal_path)
    try:
        studies = journal.studies()
    finally:
        journal.close()
    for study in studies:
        row: dict[str, object] = {
            "study_uid": study.study_uid,
            "state": str(study.state),
            "generation": study.generation,
            "instances": study.instance_count,
            "series": study.series_count,
            "calling_ae": study.calling_ae,
            "last_received": utc_text(study.last_received_at),
            "due": utc_text(study.due_at),
            "released": utc_text(study.released_at) if study.released_at else None,
        }
        if show_patient:
            row["patient_id"] = study.patient_id
            row["patient_name"] = study.patient_name
        if as_json:
            print(json.dumps(row))
        else:
            print("  ".join(f"{key}={value}" for key, value in row.items()))
    if not as_json:
        print(f"{len(studies)} studies")
    return 0
