"""The study page at ``/studies/<uid>``: one study's stage and counts, and the other studies most
like it by their MedImageInsight embeddings (similarity, modality, received date, a link to each
one's page), from the same index and filters as ``pacs-ai similar`` and ``/api/similar/<uid>``
(:mod:`listener.store.vector_index`). Server-rendered like the dashboard, with its style sheet;
the filter form is a plain GET form, so the page needs no script.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from listener.admin import views
from listener.admin.state import AdminState
from listener.store.vector_index import SimilarFilter

SIMILAR_ROWS = 10


def _day(at: Any) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(float(at), UTC).strftime("%Y-%m-%d")


def _similar(rows: list[dict[str, Any]]) -> str:
    body = "".join(
        f'<tr data-similar-study="{escape(r["study_uid"])}"><td>{r["similarity"]:.4f}</td>'
        f'<td class=uid><a href="/studies/{quote(r["study_uid"])}">'
        f"{escape(r['study_uid'])}</a></td><td>{escape(str(r['modality'] or ''))}</td>"
        f"<td>{_day(r['received_at'])}</td></tr>"
        for r in rows
    )
    if not body:
        body = '<tr><td colspan="4">No similar study (no embedding, or none passes).</td></tr>'
    return (
        "<table><tr><th>Similarity</th><th>Study</th><th>Modality</th><th>Received (UTC)</th>"
        f"</tr>{body}</table>"
    )


def _form(where: SimilarFilter) -> str:
    def field(name: str, kind: str, value: object) -> str:
        shown = "" if value is None else escape(str(value))
        return f'<label>{name} <input name="{name}" type="{kind}" value="{shown}"></label> '

    return (
        '<form method="get">'
        f"{field('modality', 'text', where.modality)}{field('since', 'date', where.since)}"
        f'{field("until", "date", where.until)}<button type="submit">Filter</button></form>'
    )


def render_study_page(state: AdminState, study_uid: str, where: SimilarFilter) -> str | None:
    """The page as HTML text; None when the journal has no such study."""
    info = state.journal.study(study_uid)
    if info is None:
        return None
    summary = views.study_summary(state, info)
    similar = views.similar_studies(state, study_uid, SIMILAR_ROWS, where)
    uid = escape(study_uid)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>study {uid}: pacs-ai gateway</title>"
        '<link rel="stylesheet" href="/dashboard.css"></head>'
        '<body><header><h1><a href="/">pacs-ai gateway</a></h1>'
        f"<span class=uid>study {uid}</span></header><main>"
        f"<section id=study data-study-uid={uid}><h2>Study</h2><p>Stage: "
        f"{escape(summary['stage'])}. Instances: {summary['instances']}. Results: "
        f"{summary['results']}. "
        f'<a href="/api/studies/{quote(study_uid)}">Timeline (JSON)</a></p></section>'
        f"<section id=similar><h2>Similar studies</h2>{_form(where)}{_similar(similar)}"
        "</section></main></body></html>"
    )
