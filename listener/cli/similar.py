"""``pacs-ai similar SOP_INSTANCE_UID``: the instances most like one, by their MedImageInsight
embeddings (cosine similarity, same model version), through the similarity index
(:mod:`listener.store.vector_index`), optionally only of one modality or received in a date
range; ``--exact`` compares with every stored vector instead."""

from __future__ import annotations

import argparse
import sys
from datetime import date

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


def iso_date(text: str) -> date:
    """A date as YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def add_similar(sub: Subparsers) -> None:
    """Declare ``similar``."""
    parser = sub.add_parser(
        "similar", help="instances most similar to one (MedImageInsight embeddings)"
    )
    parser.add_argument("sop_instance_uid", help="the instance to compare the others with")
    parser.add_argument("--top", type=positive_int, default=5, help="how many to list")
    parser.add_argument("--modality", help="only instances of this modality (e.g. CT)")
    parser.add_argument("--since", type=iso_date, help="only instances received on or after")
    parser.add_argument("--until", type=iso_date, help="only instances received on or before")
    parser.add_argument("--exact", action="store_true", help="exact search, not the index")
    add_config_flag(parser)
    add_data_dir_flag(parser)
    parser.set_defaults(func=cmd_similar)


def cmd_similar(args: argparse.Namespace) -> int:
    """Print the neighbours, most similar first; exit 1 when the instance has no embedding."""
    from listener.store.embeddings import EmbeddingStore
    from listener.store.vector_index import SimilarFilter, similar

    settings = settings_from_args(args)
    store = EmbeddingStore(existing_journal(settings))
    where = SimilarFilter(args.modality, args.since, args.until)
    try:
        if args.exact and not where.active:
            neighbours = store.similar(args.sop_instance_uid, args.top)
        else:
            folder = settings.data_dir / "index"
            neighbours = similar(store, folder, args.sop_instance_uid, args.top, where)
    except KeyError:
        print(f"pacs-ai: no embedding for {args.sop_instance_uid}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    print("SIMILARITY\tSOP INSTANCE\tSTUDY")
    for neighbour in neighbours:
        print(f"{neighbour.similarity:.4f}\t{neighbour.sop_instance_uid}\t{neighbour.study_uid}")
    return EXIT_OK
