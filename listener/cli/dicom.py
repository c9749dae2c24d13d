"""Tools for users testing their set-up: ``echo`` (C-ECHO), ``send`` (C-STORE of files) and
``studies`` (the studies the journal holds, at the stage the dashboard shows)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom.association import Association
from pynetdicom.events import Event

from listener.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Subparsers,
    add_config_flag,
    add_data_dir_flag,
    dicom_files,
    existing_journal,
    port_number,
    settings_from_args,
)
from listener.timing import utc_text

MAX_CONTEXTS = 128  # PS3.8 §9.3.2.2: presentation context IDs are odd numbers 1-255

# PS3.8 §9.3.4 (Table 9-21): A-ASSOCIATE-RJ reasons by source, in DCMTK's wording so that the
# messages read the same as storescu's and echoscu's.
_REJECT_REASONS: dict[int, dict[int, str]] = {
    1: {  # DICOM UL service-user
        1: "No Reason Given",
        2: "Application Context Name Not Supported",
        3: "Calling AE Title Not Recognized",
        7: "Called AE Title Not Recognized",
    },
    2: {1: "No Reason Given", 2: "Protocol Version Not Supported"},  # service-provider (ACSE)
    3: {1: "Temporary Congestion", 2: "Local Limit Exceeded"},  # service-provider (Presentation)
}
_REJECT_RESULTS = {1: "permanent", 2: "transient"}


def association_failure(assoc: Association, target: str) -> str:
    """Why an association with ``target`` was not established, as precisely as the peer said:
    the A-ASSOCIATE-RJ result and reason, no accepted presentation context, an abort, or no
    answer at all (nothing listens, a firewall, a timeout)."""
    answer = assoc.acceptor.primitive
    if assoc.is_rejected and answer is not None:
        source, reason = int(answer.result_source or 0), int(answer.diagnostic or 0)
        text = _REJECT_REASONS.get(source, {}).get(reason, f"reason {reason}, source {source}")
        kind = _REJECT_RESULTS.get(int(answer.result or 0), "")
        return f"association rejected by {target} ({kind}): {text}"
    if answer is not None and answer.result == 0 and not assoc.accepted_contexts:
        return f"{target} accepted none of the proposed presentation contexts"
    if assoc.is_aborted and answer is not None:
        return f"association with {target} was aborted"
    return f"no association with {target}: nothing answered (port closed, unreachable or timed out)"


def _requestor(aet: str, timeout: float) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def _associate(ae: Any, host: str, port: int, aec: str) -> Any:
    from pynetdicom import evt

    from listener.send.scu import prepare_requestor

    def on_open(event: Event) -> None:
        prepare_requestor(event.assoc)

    return ae.associate(host, port, ae_title=aec, evt_handlers=[(evt.EVT_CONN_OPEN, on_open)])


def echo(host: str, port: int, *, aet: str, aec: str, timeout: float) -> tuple[bool, str]:
    """C-ECHO (PS3.7 §9.1.5) the peer; return whether it answered Success and a message."""
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from listener.receive.status import EchoStatus

    target = f"{aec}@{host}:{port}"
    ae = _requestor(aet, timeout)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, host, port, aec)
    if not assoc.is_established:
        return False, association_failure(assoc, target)
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status and status.Status == EchoStatus.SUCCESS:
        return True, f"C-ECHO to {target}: success"
    return False, f"C-ECHO to {target} failed: {status!r}"


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


def _contexts(files: list[Path], report: SendReport) -> tuple[list[Path], list[tuple[str, str]]]:
    """The sendable files and one (SOP class, transfer syntax) per pair they need, from each
    file's meta information (PS3.10 §7.1) alone: nothing but the meta header is read here."""
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_file_meta_info

    sendable: list[Path] = []
    wanted: dict[tuple[str, str], None] = {}
    for path in files:
        try:
            meta = read_file_meta_info(path)
            pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        except (InvalidDicomError, OSError, ValueError, AttributeError) as exc:
            report.failed.append((path, f"not readable as DICOM: {exc}"))
            continue
        sendable.append(path)
        wanted[pair] = None
    return sendable, list(wanted)


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

    Only the files' meta headers are read before the association opens (to propose one
    presentation context per SOP class and transfer syntax, at most 128: PS3.8 §9.3.2.2); each
    data set is read when it is sent, so a large folder never sits in memory. Files that are not
    DICOM are reported as failed.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError
    from tqdm import tqdm

    from listener.receive.status import STORED_STATUSES

    report = SendReport()
    files, contexts = _contexts(dicom_files(paths), report)
    if not files:
        return report
    ae = _requestor(aet, timeout)
    for sop, syntax in contexts[:MAX_CONTEXTS]:
        ae.add_requested_context(sop, [syntax])
    assoc = _associate(ae, host, port, aec)
    if not assoc.is_established:
        why = association_failure(assoc, f"{aec}@{host}:{port}")
        report.failed += [(path, why) for path in files]
        return report
    try:
        for path in tqdm(files, unit="file", disable=not progress):
            try:
                ds = dcmread(path)
            except (InvalidDicomError, OSError, ValueError) as exc:
                report.failed.append((path, f"not readable as DICOM: {exc}"))
                continue
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                report.failed.append((path, "no response (association lost or timed out)"))
            elif code in STORED_STATUSES:
                report.sent += 1
            else:
                report.failed.append((path, f"status 0x{code:04X}"))
            del ds
    finally:
        if assoc.is_established:
            assoc.release()
    return report


def send_dicomweb(url: str, paths: list[Path], *, user: str | None, timeout: float) -> SendReport:
    """STOW-RS every DICOM file under ``paths`` to ``url`` as stored, with the gateway's own
    sender (:class:`~listener.send.stow.StowSender`); ``user`` is ``USER:PASSWORD``."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

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


def study_rows(settings: Any, *, show_patient: bool) -> list[dict[str, object]]:
    """One row per study the journal holds, oldest first, with the stage the admin API and the
    dashboard show (:func:`listener.admin.views.study_summary`, the one place that derives it).

    Patient ID and name only with ``show_patient``.
    """
    from listener.admin.state import open_state
    from listener.admin.views import study_summary

    existing_journal(settings)
    state = open_state(settings)
    try:
        summaries = [
            study_summary(state, info, show_patient=show_patient)
            for info in state.journal.studies()
        ]
    finally:
        state.close()
    rows = []
    for study in summaries:
        row: dict[str, object] = {
            "study_uid": study["study_uid"],
            "stage": study["stage"],
            "state": study["state"],
            "generation": study["generation"],
            "instances": study["instances"],
            "series": study["series"],
            "jobs": study["jobs"],
            "results": study["results"],
            "calling_ae": study["calling_ae"],
            "last_received": utc_text(study["last_received_at"]),
            "due": utc_text(study["due_at"]),
            "released": utc_text(study["released_at"]) if study["released_at"] else None,
        }
        if show_patient:
            row["patient_id"] = study["patient_id"]
            row["patient_name"] = study["patient_name"]
        rows.append(row)
    return rows


# --- the commands --------------------------------------------------------------------------


def _add_scu_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host", help="the peer's address")
    parser.add_argument("port", type=port_number, help="the peer's DICOM port")
    parser.add_argument("--aet", default="PACSAI-SCU", help="our (calling) AE title")
    parser.add_argument("--aec", default="PACSAI", help="the peer's (called) AE title")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per network step")


def add_echo(sub: Subparsers) -> None:
    """Declare ``echo``."""
    parser = sub.add_parser("echo", help="C-ECHO a DICOM peer")
    _add_scu_flags(parser)
    parser.set_defaults(func=cmd_echo)


def cmd_echo(args: argparse.Namespace) -> int:
    """Run ``pacs-ai echo``; the exit status."""
    ok, message = echo(args.host, args.port, aet=args.aet, aec=args.aec, timeout=args.timeout)
    print(message, file=sys.stdout if ok else sys.stderr)
    return EXIT_OK if ok else EXIT_FAILED


def add_send(sub: Subparsers) -> None:
    """Declare ``send``: C-STORE (``HOST PORT PATH...``) or STOW-RS (``--dicomweb URL PATH...``)."""
    parser = sub.add_parser(
        "send",
        help="C-STORE DICOM files or folders to a peer (HOST PORT PATH...), or STOW-RS them"
        " (--dicomweb URL PATH...)",
    )
    parser.add_argument(
        "target", nargs="+", metavar="HOST PORT PATH", help="the peer and the files or folders"
    )
    parser.add_argument("--aet", default="PACSAI-SCU", help="our (calling) AE title")
    parser.add_argument("--aec", default="PACSAI", help="the peer's (called) AE title")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per network step")
    parser.add_argument("--dicomweb", metavar="URL", help="STOW-RS to this DICOMweb service root")
    parser.add_argument(
        "--user", metavar="USER:PASSWORD", help="basic auth for --dicomweb (as curl's -u)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_send)


def cmd_send(args: argparse.Namespace) -> int:
    """Run ``pacs-ai send``; the exit status."""
    if args.dicomweb:
        report = send_dicomweb(
            args.dicomweb, [Path(p) for p in args.target], user=args.user, timeout=args.timeout
        )
    else:
        if len(args.target) < 3:
            print("pacs-ai send: HOST PORT PATH... (or --dicomweb URL PATH...)", file=sys.stderr)
            return EXIT_USAGE
        try:
            port = port_number(args.target[1])
        except argparse.ArgumentTypeError as exc:
            print(f"pacs-ai send: argument port: {exc}", file=sys.stderr)
            return EXIT_USAGE
        report = send_files(
            args.target[0],
            port,
            [Path(p) for p in args.target[2:]],
            aet=args.aet,
            aec=args.aec,
            timeout=args.timeout,
            progress=not args.no_progress,
        )
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED


def add_studies(sub: Subparsers) -> None:
    """Declare ``studies``."""
    parser = sub.add_parser("studies", help="list the studies the journal holds")
    add_config_flag(parser)
    add_data_dir_flag(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per study")
    parser.add_argument(
        "--show-patient", action="store_true", help="also show patient ID and name (PHI)"
    )
    parser.set_defaults(func=cmd_studies)


def cmd_studies(args: argparse.Namespace) -> int:
    """Run ``pacs-ai studies``; the exit status."""
    rows = study_rows(settings_from_args(args), show_patient=args.show_patient)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print("  ".join(f"{key}={value}" for key, value in row.items() if key != "state"))
    if not args.json:
        print(f"{len(rows)} studies")
    return EXIT_OK
