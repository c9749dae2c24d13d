"""The house's promises about its own layout, checked on every run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500
MAX_TOP_LEVEL_MODULES = 8


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_no_module_is_over_500_lines() -> None:
    """Every module of listener/ and converters/ fits in 500 lines."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in _modules("listener") + _modules("converters")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_listener_keeps_few_modules_at_its_top() -> None:
    """At most eight modules sit directly in listener/; everything else lives in its stage."""
    top = sorted(path.name for path in (ROOT / "listener").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_only_the_store_opens_the_database() -> None:
    """``sqlite3.connect`` appears in one module: the store's connection policy."""
    pattern = re.compile(r"\bsqlite3\.connect\(")
    openers = [
        str(path.relative_to(ROOT))
        for path in _modules("listener") + _modules("converters")
        if pattern.search(path.read_text())
    ]
    assert openers == ["listener/store/db.py"]


def test_admin_writes_no_sql_and_spells_no_stored_state() -> None:
    """The admin side reads through listener/store/: no SQL and no stored state strings."""
    sql = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b")
    # "receiving" and "ready" are also the dashboard's own stage names, so they are not listed
    states = re.compile(
        r"""["'](pending|sent|dead|dispatched|SCHEDULED|IN PROGRESS|COMPLETED|CANCELED)["']"""
    )
    offenders = [
        str(path.relative_to(ROOT))
        for path in _modules("listener/admin")
        if sql.search(path.read_text()) or states.search(path.read_text())
    ]
    assert offenders == []
