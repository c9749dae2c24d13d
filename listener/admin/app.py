"""The admin HTTP app: health, readiness, metrics, studies, jobs, rules reload, dashboard.

Built by :func:`create_admin_app` from an :class:`~listener.admin.state.AdminState`; handlers
are plain functions (Starlette runs them in its thread pool), since every answer comes from
SQLite and files. Every answer passes :mod:`listener.admin.security`'s middleware: security
headers, the Host allow-list, same-origin JSON for the state-changing POSTs, and the token.
"""

from __future__ import annotations

import dataclasses
from datetime import date

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from listener.admin import dicomweb, views
from listener.admin.dashboard import SCRIPT, STYLE, render_dashboard
from listener.admin.drift_plot import drift_readings, render_drift
from listener.admin.metrics import JournalCollector, build_registry
from listener.admin.openapi import openapi_schema
from listener.admin.pictures import study_picture
from listener.admin.readiness import readiness
from listener.admin.security import BrowserGuard, SecurityHeaders, TokenGuard, allowed_hosts
from listener.admin.state import AdminState
from listener.admin.study_page import render_study_page
from listener.errors import ConfigError
from listener.logging import get_logger
from listener.route.load import effective_rules
from listener.route.model import rules_fingerprint
from listener.store.jobs import JobState
from listener.store.retry import retry_job
from listener.store.vector_index import SimilarFilter

_log = get_logger("admin")
_TRUE = frozenset({"1", "true", "yes", "on"})
DEFAULT_LIMIT = 200


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() in _TRUE


def _limit(request: Request) -> int:
    try:
        return max(1, min(5000, int(request.query_params.get("limit", DEFAULT_LIMIT))))
    except ValueError:
        return DEFAULT_LIMIT


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Handlers:
    """One method per path, over the admin state."""

    def __init__(self, state: AdminState) -> None:
        self.state = state
        collector = JournalCollector(
            state.journal.db,
            state.spool.quarantine_dir,
            lambda: state.spool.free_mb() * 1024 * 1024,
        )
        self.registry = build_registry(collector)

    def healthz(self, _: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def readyz(self, _: Request) -> Response:
        code, body = readiness(self.state, self.state.clock())
        return JSONResponse(body, status_code=code)

    def metrics(self, _: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def studies(self, request: Request) -> Response:
        show = _flag(request, "show_patient")
        infos = list(reversed(self.state.journal.studies()))[: _limit(request)]
        return JSONResponse([views.study_summary(self.state, i, show_patient=show) for i in infos])

    def study(self, request: Request) -> Response:
        info = self.state.journal.study(request.path_params["uid"])
        if info is None:
            return _error(404, "no such study")
        show = _flag(request, "show_patient")
        return JSONResponse(views.study_timeline(self.state, info, show_patient=show))

    def overlay(self, request: Request) -> Response:
        uid = request.path_params["uid"]
        png = study_picture(self.state, uid) if self.state.journal.study(uid) is not None else None
        if png is None:
            return _error(404, "no drawable result for this study")
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    def similar(self, request: Request) -> Response:
        """The instances most like one (listener.store.vector_index), with optional filters."""
        try:
            top = int(request.query_params.get("top", "5"))
            where = _similar_filter(request)
        except ValueError:
            return _error(400, "top: a whole number; since, until: YYYY-MM-DD")
        if not 1 <= top <= 100:
            return _error(400, "top: 1 to 100")
        try:
            found = self.state.similar(request.path_params["uid"], top, where)
        except KeyError:
            return _error(404, "no embedding for this instance")
        return JSONResponse([dataclasses.asdict(n) for n in found])

    def drift(self, request: Request) -> Response:
        """Each drift group's latest reading (listener.store.drift)."""
        return JSONResponse(
            {
                group: dataclasses.asdict(readings[-1])
                for group, readings in drift_readings(self.state).items()
            }
        )

    def drift_plot(self, request: Request) -> Response:
        group = request.query_params.get("group", "")
        readings = drift_readings(self.state).get(group)
        if readings is None:
            return _error(404, "no drift readings for this group")
        png = render_drift(group, readings)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    def jobs(self, request: Request) -> Response:
        wanted = request.query_params.get("state")
        try:
            job_state = JobState(wanted) if wanted else None
        except ValueError:
            return _error(400, f"state: one of {', '.join(s.value for s in JobState)}")
        found = self.state.jobs.list_jobs(
            state=job_state, study_uid=request.query_params.get("study_uid")
        )
        return JSONResponse([views.job_json(job) for job in found[: _limit(request)]])

    def job(self, request: Request) -> Response:
        found = self.state.jobs.get(request.path_params["id"])
        if found is None:
            return _error(404, "no such job")
        return JSONResponse(views.job_detail(self.state, found))

    def job_action(self, request: Request) -> Response:
        job_id, action = request.path_params["id"], request.path_params["action"]
        found = self.state.jobs.get(job_id)
        if found is None:
            return _error(404, "no such job")
        now = self.state.clock()
        if action == "retry":
            outcome = retry_job(self.state.jobs, self.state.outbox, job_id, now)
            done = outcome is not None and outcome.done
            shown = outcome.new_job_id if outcome and outcome.new_job_id else job_id
        elif action == "cancel":
            done, shown = self.state.jobs.cancel(job_id, now), job_id
        else:
            return _error(404, "unknown action: retry or cancel")
        self._audit(request, action, f"job {job_id}", done)
        if not done:
            return _error(409, f"cannot {action} a job in state {found.state.value}")
        _log.info(f"job_{action}_requested", job_id=job_id, study_uid=found.study_uid)
        updated = self.state.jobs.get(shown)
        assert updated is not None
        return JSONResponse(views.job_detail(self.state, updated))

    def _audit(
        self, request: Request, action: str, target: str, ok: bool, detail: str | None = None
    ) -> None:
        """An operator action into the audit trail, with the caller's address."""
        if self.state.audit is not None:
            caller = request.client.host if request.client else "unknown"
            self.state.audit.admin_action(
                action=action, caller=caller, target=target, ok=ok, detail=detail
            )

    def audit(self, request: Request) -> Response:
        """The audit trail, newest first (PS3.15 A.5 messages); reading it is audited too."""
        if self.state.audit is None:
            return _error(404, "no audit trail")
        records = self.state.audit.log.records(
            limit=_limit(request),
            study_uid=request.query_params.get("study"),
            event=request.query_params.get("event"),
        )
        self.state.audit.audit_read(request.client.host if request.client else "unknown")
        return JSONResponse(records)

    def rules_reload(self, request: Request) -> Response:
        settings = self.state.settings
        if settings.rules_file is None:
            return _error(400, "rules_file: not set; the embedded default rules are in use")
        try:
            rules = effective_rules(settings)
        except ConfigError as exc:
            _log.warning("rules_reload_refused", error=str(exc))
            self._audit(request, "reload", "rules", False, str(exc))
            return _error(400, str(exc))
        self._audit(request, "reload", "rules", True)
        reload = self.state.records.record_rules_reload(
            rules_fingerprint(rules),
            len(rules.rules),
            source=str(settings.rules_file),
            now=self.state.clock(),
        )
        _log.info("rules_reload_requested", fingerprint=reload.fingerprint, rules=reload.rule_count)
        return JSONResponse(
            {"fingerprint": reload.fingerprint, "rules": reload.rule_count, "at": reload.at}
        )

    def associations(self, request: Request) -> Response:
        return JSONResponse(self.state.journal.associations()[: _limit(request)])

    def openapi(self, _: Request) -> Response:
        return JSONResponse(openapi_schema())

    def dashboard(self, request: Request) -> Response:
        return HTMLResponse(
            render_dashboard(self.state, show_patient=_flag(request, "show_patient"))
        )

    def study_page(self, request: Request) -> Response:
        """One study's page with its similar studies (listener.admin.study_page)."""
        try:
            where = _similar_filter(request)
        except ValueError:
            return _error(400, "since, until: YYYY-MM-DD")
        page = render_study_page(self.state, request.path_params["uid"], where)
        if page is None:
            return _error(404, "no such study")
        return HTMLResponse(page)

    def dashboard_script(self, _: Request) -> Response:
        return Response(SCRIPT, media_type="text/javascript")

    def dashboard_style(self, _: Request) -> Response:
        return Response(STYLE, media_type="text/css")


def _similar_filter(request: Request) -> SimilarFilter:
    """The modality and received-date filter of a similarity query (ValueError: a bad date)."""
    query = request.query_params
    return SimilarFilter(
        query.get("modality") or None,
        date.fromisoformat(query["since"]) if query.get("since") else None,
        date.fromisoformat(query["until"]) if query.get("until") else None,
    )


def _routes(state: AdminState) -> list[Route]:
    handlers = _Handlers(state)
    return [
        Route("/", handlers.dashboard),
        Route("/studies/{uid}", handlers.study_page),
        Route("/dashboard.js", handlers.dashboard_script),
        Route("/dashboard.css", handlers.dashboard_style),
        Route("/healthz", handlers.healthz),
        Route("/readyz", handlers.readyz),
        Route("/metrics", handlers.metrics),
        Route("/openapi.json", handlers.openapi),
        Route("/api/studies", handlers.studies),
        Route("/api/studies/{uid}", handlers.study),
        Route("/api/studies/{uid}/overlay.png", handlers.overlay),
        Route("/api/drift", handlers.drift),
        Route("/api/similar/{uid}", handlers.similar),
        Route("/api/drift/plot.png", handlers.drift_plot),
        Route("/api/jobs", handlers.jobs),
        Route("/api/jobs/{id:int}", handlers.job),
        Route("/api/jobs/{id:int}/{action}", handlers.job_action, methods=["POST"]),
        Route("/api/rules/reload", handlers.rules_reload, methods=["POST"]),
        Route("/api/associations", handlers.associations),
        Route("/api/audit", handlers.audit),
        *dicomweb.routes(state),
    ]


def create_admin_app(state: AdminState, *, token: str | None = None) -> Starlette:
    """The admin app over ``state``; with ``token`` every path but /healthz needs it. The Host
    allow-list comes from ``state.settings`` (:func:`~listener.admin.security.allowed_hosts`)."""
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(BrowserGuard, allowed=allowed_hosts(state.settings)),
    ]
    if token:
        middleware.append(Middleware(TokenGuard, token=token))
    return Starlette(routes=_routes(state), middleware=middleware)
