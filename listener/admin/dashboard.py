"""The operator dashboard at ``/``: one server-rendered HTML page with its script and style served
beside it (``/dashboard.js``, ``/dashboard.css``), since the Content-Security-Policy allows no
inline script or style (see :mod:`listener.admin.security`).

It shows the studies flowing through the stages (counts per stage, jobs and outbox queues), the
recent failures with their reasons, the latest studies, and a picture of each processed study
(``/api/studies/<uid>/overlay.png``). Patient data is left out unless ``show_patient`` is asked.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from listener.admin import views
from listener.admin.drift_plot import drift_readings
from listener.admin.pictures import has_picture
from listener.admin.readiness import problems
from listener.admin.state import AdminState
from listener.settings import MODEL_NAMES

STUDY_ROWS = 50
PICTURES = 12
STAGES = ("receiving", "ready", "processing", "sending", "done", "failed")

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header h1{font-size:18px;margin:0}header a{color:inherit}.ok{color:#7be07b}.bad{color:#ff8080}
main{padding:12px 20px}section{background:#fff;border-radius:6px;padding:10px 14px;margin:0 0 12px}
h2{font-size:15px;margin:0 0 8px}table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:3px 8px;border-bottom:1px solid #e3e5ea;font-size:13px}
.stages{display:flex;gap:8px;flex-wrap:wrap}.stage{background:#eef1f6;border-radius:6px;
padding:6px 12px;min-width:90px}.stage b{display:block;font-size:22px}.stage.failed b{color:#c62828}
.uid{font-family:ui-monospace,monospace;font-size:12px}.pictures{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;background:#111;padding:6px;border-radius:6px;color:#ddd;max-width:420px}
figure img{max-width:408px;display:block}
figcaption{font-size:12px;padding-top:4px;word-break:break-all}
"""

SCRIPT = """
const box = document.getElementById('refresh');
box.checked = localStorage.getItem('pacsai-refresh') !== 'off';
box.addEventListener('change',
  () => localStorage.setItem('pacsai-refresh', box.checked ? 'on' : 'off'));
setInterval(() => { if (box.checked) location.reload(); }, 15000);
for (const img of document.querySelectorAll('img.overlay, img.drift')) {
  const mark = () => { img.dataset.loaded = img.naturalWidth > 0 ? 'yes' : 'no'; };
  if (img.complete) { mark(); } else { img.addEventListener('load', mark);
    img.addEventListener('error', mark); }
}
"""


def _time(at: Any) -> str:
    if at is None:
        return ""
    return datetime.fromtimestamp(float(at), UTC).strftime("%Y-%m-%d %H:%M:%S")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{escape(k)}: {v}" for k, v in sorted(counts.items())) or "-"


def _stages(state: AdminState) -> str:
    counts = views.stage_counts(state)
    cells = "".join(
        f'<div class="stage {s}" data-stage="{s}"><b>{counts.get(s, 0)}</b>{s}</div>'
        for s in STAGES
    )
    jobs = _counts(state.jobs.counts())
    outbox = _counts(views.outbox_counts(state))
    return (
        f'<section><h2>Studies by stage</h2><div class="stages">{cells}</div>'
        f"<p>Jobs: {jobs}. Outbox: {outbox}.</p></section>"
    )


def _failures(state: AdminState) -> str:
    rows = "".join(
        f"<tr><td>{_time(f['at'])}</td><td>{escape(f['kind'])}</td>"
        f"<td class=uid>{escape(str(f.get('study_uid') or f.get('job_id') or ''))}</td>"
        f"<td>{escape(str(f['what']))}</td><td>{escape(str(f['reason']))}</td></tr>"
        for f in views.failures(state, limit=20)
    )
    body = rows or '<tr><td colspan="5">No failures.</td></tr>'
    return (
        "<section id=failures><h2>Failures</h2><table><tr><th>When (UTC)</th><th>Kind</th>"
        f"<th>Study / job</th><th>What</th><th>Reason</th></tr>{body}</table></section>"
    )


def _studies(state: AdminState, summaries: list[dict[str, Any]], show_patient: bool) -> str:
    patient_head = "<th>Patient</th>" if show_patient else ""
    rows = []
    for s in summaries:
        uid = escape(s["study_uid"])
        patient = f"<td>{escape(str(s.get('patient_id') or ''))}</td>" if show_patient else ""
        rows.append(
            f'<tr data-study-uid="{uid}"><td class=uid><a href="/studies/{uid}">{uid}</a></td>'
            f"{patient}<td>{escape(s['stage'])}</td><td>{s['instances']}</td>"
            f"<td>{_counts(s['jobs'])}</td><td>{s['results']}</td><td>{_counts(s['sends'])}</td>"
            f"<td>{_time(s['last_received_at'])}</td><td>{_ood(s.get('ood_score'))}</td>"
            f"<td class=flags>{_flags(s.get('flags') or [])}</td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="8">No studies yet.</td></tr>'
    return (
        f"<section id=studies><h2>Latest studies</h2><table><tr><th>Study</th>{patient_head}"
        "<th>Stage</th><th>Instances</th><th>Jobs</th><th>Results</th><th>Sends</th>"
        f"<th>Last received (UTC)</th><th>OOD score</th><th>Flags</th></tr>{body}</table>"
        "</section>"
    )


def _ood(score: Any) -> str:
    return "" if score is None else f"{float(score):.3f}"


def _flags(flags: list[dict[str, Any]]) -> str:
    """Review and OOD flags (listener.store.flags), each with its reason."""
    return "<br>".join(
        f"<mark>{escape(str(f['kind']))}</mark> {escape(str(f['reason']))}" for f in flags
    )


def _drift(state: AdminState) -> str:
    """A drift plot per group (listener.admin.drift_plot) with its latest reading."""
    figures = []
    for group, readings in drift_readings(state).items():
        last = readings[-1]
        mark = " DRIFTED" if last.drifted else ""
        figures.append(
            f'<figure data-drift-group="{escape(group)}"><img class="drift"'
            f' src="/api/drift/plot.png?group={quote(group)}" alt="drift of {escape(group)}">'
            f"<figcaption>{escape(group)}: MMD² {last.statistic:.4f},"
            f" p {last.p_value:.4f}{mark}</figcaption></figure>"
        )
    if not figures:
        return ""
    return f"<section id=drift><h2>Embedding drift</h2>{''.join(figures)}</section>"


def _pictures(state: AdminState, summaries: list[dict[str, Any]]) -> str:
    figures = []
    for s in summaries:
        if s["results"] == 0 or not has_picture(state, s["study_uid"]):
            continue
        uid = escape(s["study_uid"])
        figures.append(
            f'<figure data-study-uid="{uid}"><img class="overlay"'
            f' src="/api/studies/{uid}/overlay.png" alt="results of study {uid}">'
            f"<figcaption class=uid>{uid} ({escape(s['stage'])})</figcaption></figure>"
        )
        if len(figures) == PICTURES:
            break
    body = "".join(figures) or "<p>No processed study with a picture yet.</p>"
    head = "<section id=pictures><h2>Processed studies</h2>"
    return f'{head}<div class="pictures">{body}</div></section>'


def emulated_models(state: AdminState) -> list[str]:
    """The models the built-in emulator answers for (no endpoint configured)."""
    return [name for name in MODEL_NAMES if not state.settings.models.get(name).endpoint]


def _emulator_mark(state: AdminState) -> str:
    names = emulated_models(state)
    if not names:
        return ""
    return (
        f'<span class="bad" id="emulated">emulator: {escape(", ".join(names))} answered by the'
        " model emulator (synthetic, not a clinical model)</span>"
    )


def render_dashboard(state: AdminState, *, show_patient: bool = False) -> str:
    """The whole dashboard page as HTML text."""
    infos = list(reversed(state.journal.studies()))[:STUDY_ROWS]
    summaries = [views.study_summary(state, i, show_patient=show_patient) for i in infos]
    reasons = problems(state, state.clock())
    status = (
        '<span class="ok">ready</span>'
        if not reasons
        else '<span class="bad">not ready: ' + escape("; ".join(reasons)) + "</span>"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>pacs-ai gateway</title>"
        '<link rel="stylesheet" href="/dashboard.css"></head>'
        "<body><header><h1>pacs-ai gateway</h1>"
        f"<span id=readiness>{status}</span>{_emulator_mark(state)}"
        f"<span>{_time(state.clock())} UTC</span>"
        '<label><input type="checkbox" id="refresh"> auto refresh</label></header><main>'
        f"{_stages(state)}{_failures(state)}{_pictures(state, summaries)}"
        f"{_studies(state, summaries, show_patient)}{_drift(state)}</main>"
        '<script src="/dashboard.js"></script></body></html>'
    )
