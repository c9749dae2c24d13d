"""``pacs-ai similar SOP_INSTANCE_UID``: the instances most like one, by their MedImageInsight
embeddings (cosine similarity, same model version)."""

from __future__ import annotations

import argparse
import sys

from listener.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subparsers,
    add_config_flag,
    add_data_dir_flag,
    existing_journal,
    positive_int,
    settings_from_args,
)


def add_similar(sub: Subparsers) -> None:
    """Declare ``similar``."""
    parser = sub.add_parser(
        "similar", help="instances most similar to one (MedImageInsight embeddings)"
    )
    parser.add_argument("sop_instance_uid", help="the instance to compare the others with")
    parser.add_argument("--top", type=positive_int, default=5, help="how many to list")
    add_config_flag(parser)
    add_data_dir_flag(parser)
    parser.set_defaults(func=cmd_similar)


def cmd_similar(args: argparse.Namespace) -> int:
    """Print the neighbours, most similar first; exit 1 when the instance has no embedding."""
    from listener.store.embeddings import EmbeddingStore

    store = EmbeddingStore(existing_journal(settings_from_args(args)))
    try:
        neighbours = store.similar(args.sop_instance_uid, args.top)
    except KeyError:
        print(f"pacs-ai: no embedding for {args.sop_instance_uid}", file=sys.stderr)
        return EXIT_FAILED
    print("SIMILARITY\tSOP INSTANCE\tSTUDY")
    for neighbour in neighbours:
        print(f"{neighbour.similarity:.4f}\t{neighbour.sop_instance_uid}\t{neighbour.study_uid}")
    return EXIT_OK
