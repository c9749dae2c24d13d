"""``pacs-ai adapter train|list|show``: adapters on the stored MedImageInsight embeddings.

``train NAME --labels FILE.csv`` reads ``study_instance_uid`` (or ``sop_instance_uid``) and
``label`` columns, pairs each row with its stored embedding, prints the stratified
cross-validation report (:mod:`listener.infer.adapter_training`) and saves the adapter as the
next version of NAME under ``<data_dir>/adapters/`` (:mod:`listener.infer.adapters`).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from listener.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subparsers,
    add_config_flag,
    add_data_dir_flag,
    existing_journal,
    settings_from_args,
)

if TYPE_CHECKING:
    from listener.infer.adapters import AdapterRegistry
    from listener.settings.database import DatabaseUrl


def add_adapter(sub: Subparsers) -> None:
    """Declare ``adapter`` and its actions."""
    parser = sub.add_parser("adapter", help="train, list or show MedImageInsight adapters")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train (and save) an adapter from a labels CSV")
    train.add_argument("name", help="adapter name (letters, digits, _ . -)")
    train.add_argument("--labels", type=Path, required=True, help="CSV: UID column and label")
    train.add_argument(
        "--model-version", help="MedImageInsight version of the embeddings (default: the most)"
    )
    listing = actions.add_parser("list", help="saved adapters, newest version of each")
    show = actions.add_parser("show", help="one adapter version with its metrics")
    show.add_argument("name")
    show.add_argument("--version", type=int, help="default: the newest")
    for action in (train, listing, show):
        add_config_flag(action)
        add_data_dir_flag(action)
    parser.set_defaults(func=cmd_adapter)


def cmd_adapter(args: argparse.Namespace) -> int:
    """Run one adapter action; exit 1 with the reason when it cannot."""
    from listener.infer.adapters import AdapterRegistry

    settings = settings_from_args(args)
    registry = AdapterRegistry(settings.data_dir / "adapters")
    if args.action == "train":
        return _train(args, registry, existing_journal(settings))
    if args.action == "list":
        print("NAME\tVERSION\tSAMPLES\tCV ACCURACY\tMODEL VERSION\tTRAINED")
        for name in registry.names():
            a = registry.load(name)
            accuracy = a.metrics.get("accuracy")
            shown = f"{accuracy:.3f}" if isinstance(accuracy, float) else "-"
            print(
                f"{a.name}\tv{a.version}\t{a.samples}\t{shown}\t{a.model_version}\t{a.trained_at}"
            )
        return EXIT_OK
    try:
        adapter = registry.load(args.name, args.version)
    except KeyError as exc:
        print(f"pacs-ai: no adapter {exc.args[0]}", file=sys.stderr)
        return EXIT_FAILED
    summary = {k: v for k, v in json.loads(adapter.to_json()).items() if k not in ("coef",)}
    print(json.dumps(summary, indent=1))
    return EXIT_OK


def _train(args: argparse.Namespace, registry: AdapterRegistry, journal: DatabaseUrl) -> int:
    from listener.infer.adapter_training import (
        TrainingError,
        labelled_set,
        metrics_report,
        read_labels,
        train,
    )
    from listener.route.model import check_name
    from listener.store.embeddings import EmbeddingStore

    try:
        name = check_name(args.name)
        column, rows = read_labels(args.labels)
        store = EmbeddingStore(journal)
        try:
            vectors = store.by_version(
                [uid for uid, _ in rows], study=column == "study_instance_uid"
            )
        finally:
            store.close()
        data = labelled_set(rows, vectors, args.model_version)
        adapter = train(data, name, registry.next_version(name), datetime.now().astimezone())
    except (TrainingError, ValueError, OSError) as exc:
        print(f"pacs-ai: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for line in metrics_report(adapter.metrics):
        print(line)
    path = registry.save(adapter)
    print(
        f"saved adapter {adapter.name} v{adapter.version} ({adapter.samples} samples,"
        f" MedImageInsight {adapter.model_version}, training set {adapter.training_digest[:12]})"
        f" to {path}"
    )
    return EXIT_OK
