"""``pacs-ai drift``: each embedding drift group's latest reading (listener.store.drift)."""

from __future__ import annotations

import argparse

from listener.cli.common import (
    EXIT_OK,
    Subparsers,
    add_config_flag,
    add_data_dir_flag,
    existing_journal,
    settings_from_args,
)


def add_drift(sub: Subparsers) -> None:
    """Declare ``drift``."""
    parser = sub.add_parser("drift", help="embedding drift per group (MMD against the reference)")
    add_config_flag(parser)
    add_data_dir_flag(parser)
    parser.set_defaults(func=cmd_drift)


def cmd_drift(args: argparse.Namespace) -> int:
    """Print one line per group: studies, latest MMD², p-value, drifted or not."""
    from listener.store.drift import DriftStore
    from listener.timing import utc_text

    settings = settings_from_args(args)
    store = DriftStore(existing_journal(settings), settings.drift)
    try:
        latest, members = store.latest(), store.members()
    finally:
        store.close()
    print("GROUP\tSTUDIES\tMMD2\tP VALUE\tDRIFTED\tAT (UTC)")
    for group in sorted(members):
        r = latest.get(group)
        if r is None:
            print(f"{group}\t{members[group]}\t-\t-\t-\t-")
        else:
            drifted = "yes" if r.drifted else "no"
            print(
                f"{group}\t{members[group]}\t{r.statistic:.5f}\t{r.p_value:.4f}\t{drifted}"
                f"\t{utc_text(r.at)}"
            )
    return EXIT_OK
