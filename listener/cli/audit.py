"""``pacs-ai audit``: the audit trail from the journal (PS3.15 A.5 messages), newest first.

Reading it is itself audited (Query). ``--xml`` prints the full messages, which may carry patient
IDs (as ATNA requires); the default summary lines carry none.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def add_audit(sub: Any) -> None:
    """Declare ``audit`` on the ``pacs-ai`` subparsers."""
    parser = sub.add_parser("audit", help="show the audit trail (who sent, received, saw what)")
    parser.add_argument("--data-dir", type=Path, help="the gateway's data folder")
    parser.add_argument("--config", type=Path, help="settings file")
    parser.add_argument("--study", help="only this Study Instance UID")
    parser.add_argument(
        "--event", help="only this event, e.g. 'Begin Transferring DICOM Instances'"
    )
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--xml", action="store_true", help="print the audit messages themselves")
    parser.add_argument("--json", action="store_true", help="one JSON object per record")
    parser.set_defaults(func=_cmd_audit)


def _cmd_audit(args: argparse.Namespace) -> int:
    import getpass

    from listener.settings import load_settings
    from listener.store.audit import AuditTrail

    settings = load_settings(args.config, data_dir=args.data_dir)
    trail = AuditTrail.open(settings)
    try:
        records = trail.log.records(limit=args.limit, study_uid=args.study, event=args.event)
        trail.audit_read(f"cli:{getpass.getuser()}")
    finally:
        trail.close()
    for record in records:
        if args.json:
            print(json.dumps(record))
        elif args.xml:
            print(record["message"])
        else:
            when = datetime.fromtimestamp(record["at"], UTC).isoformat(timespec="seconds")
            outcome = "ok" if record["outcome"] == "0" else f"outcome {record['outcome']}"
            print(f"{when} {record['event']} ({outcome}): {record['summary']}", file=sys.stdout)
    return 0
