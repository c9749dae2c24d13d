"""The admin API's OpenAPI 3.1 description, written by hand (the app has a dozen paths)."""

from __future__ import annotations

from typing import Any

from listener import __version__

_JSON = {"application/json": {"schema": {"type": "object"}}}
_ERROR = {"description": "error", "content": _JSON}


def _get(summary: str, *, params: list[dict[str, Any]] | None = None, media: str = "") -> Any:
    content = {media: {}} if media else _JSON
    return {
        "get": {
            "summary": summary,
            "parameters": params or [],
            "responses": {"200": {"description": "OK", "content": content}, "404": _ERROR},
        }
    }


def _post(summary: str, params: list[dict[str, Any]], errors: dict[str, Any]) -> Any:
    return {
        "post": {
            "summary": summary,
            "parameters": params,
            "responses": {"200": {"description": "done", "content": _JSON}, **errors},
        }
    }


def _query(name: str, description: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": {"type": kind}}


def _path(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": kind}}


_SHOW = _query("show_patient", "1 to include patient ID and name (PHI); off by default")
_LIMIT = _query("limit", "at most this many rows", "integer")


def openapi_schema() -> dict[str, Any]:
    """The OpenAPI document served at ``/openapi.json``."""
    job_id = _path("id", "integer")
    conflict = {"404": _ERROR, "409": {"description": "not allowed in the job's state"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "pacs-ai admin API", "version": __version__},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            }
        },
        "security": [{"bearer": []}, {"basic": []}, {}],
        "paths": {
            "/": _get("Dashboard (HTML)", params=[_SHOW], media="text/html"),
            "/healthz": _get("Liveness: the process answers (never needs a token)"),
            "/readyz": _get("Readiness: 503 with the reasons when a stage is stuck or disk low"),
            "/metrics": _get("Prometheus metrics", media="text/plain"),
            "/openapi.json": _get("This document"),
            "/api/studies": _get(
                "Studies, newest first, with stage and counts", params=[_SHOW, _LIMIT]
            ),
            "/api/studies/{uid}": _get(
                "A study's timeline: received, released, jobs and events, results, sends",
                params=[_path("uid"), _SHOW],
            ),
            "/api/studies/{uid}/overlay.png": _get(
                "The study's SEG overlay or finding boxes on its source image",
                params=[_path("uid")],
                media="image/png",
            ),
            "/api/similar/{uid}": _get(
                "The instances most like one (MedImageInsight embeddings, similarity index)",
                params=[
                    _path("uid"),
                    _query("top", "how many, 1 to 100 (default 5)"),
                    _query("modality", "only this modality"),
                    _query("since", "received on or after, YYYY-MM-DD"),
                    _query("until", "received on or before, YYYY-MM-DD"),
                ],
            ),
            "/api/drift": _get("Each embedding drift group's latest reading (MMD², p-value)"),
            "/api/drift/plot.png": _get(
                "A drift group's MMD² readings over time, drifted ones in red",
                params=[_query("group", "drift group, e.g. calling_ae=CT1,modality=CT")],
                media="image/png",
            ),
            "/api/jobs": _get(
                "Jobs, newest first",
                params=[_query("state", "UPS state"), _query("study_uid", "one study"), _LIMIT],
            ),
            "/api/jobs/{id}": _get("A job with its events and sends", params=[job_id]),
            "/api/jobs/{id}/retry": _post("Retry a CANCELED job", [job_id], conflict),
            "/api/jobs/{id}/cancel": _post(
                "Cancel a SCHEDULED or IN PROGRESS job", [job_id], conflict
            ),
            "/api/rules/reload": _post(
                "Validate the rules file and ask the dispatcher and job runners to reload it",
                [],
                {"400": {"description": "invalid rules: the message names rule and field"}},
            ),
            "/api/associations": _get("The association log, newest first", params=[_LIMIT]),
        },
    }
