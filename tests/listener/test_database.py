"""The journal database on both engines: the ``database_url`` setting, rows, errors, and claims
that stay exactly-once when several processes share one database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from peers import free_port
from pgserver import PASSWORD, PostgresServer

from listener.admin.readiness import readiness
from listener.admin.state import open_state
from listener.errors import ConfigError
from listener.route.load import effective_rules
from listener.serve.summary import startup_summary
from listener.settings import load_settings
from listener.settings.database import DatabaseUrl, Engine
from listener.store.audit import AuditLog, AuditTrail
from listener.store.db import (
    Database,
    DatabaseError,
    DatabaseUnavailableError,
    MissingTableError,
)
from listener.store.db import DatabaseTarget as JournalDb
from listener.store.journal import AssociationRecord, InstanceConflict, InstanceRecord, Journal
from listener.store.priors import ChestIndex, IndexedStudy
from listener.store.records import AdminRecords, SupervisedProcess, SupervisedRecords


def test_default_is_the_sqlite_file_in_the_data_folder(tmp_path: Path) -> None:
    """With no database_url the journal is journal.sqlite in data_dir, as before the setting."""
    settings = load_settings(None, data_dir=tmp_path)
    assert settings.journal_database == DatabaseUrl.sqlite(tmp_path / "journal.sqlite")
    assert settings.journal_path == tmp_path / "journal.sqlite"
    assert load_settings(None, database_url="sqlite:///other.db").journal_path == Path("other.db")


def test_the_password_never_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database_url from the environment: its password is in no repr, str or start-up line,
    only in what the driver gets."""
    url = f"postgresql://gw:{PASSWORD}@db.example:5432/pacsai?sslmode=require"
    monkeypatch.setenv("PACSAI_DATABASE_URL", url)
    settings = load_settings(None, data_dir=tmp_path)
    database = settings.journal_database
    assert database.engine is Engine.POSTGRESQL
    assert database.secret() == url
    assert str(database) == "postgresql://gw:***@db.example:5432/pacsai?sslmode=require"
    lines = startup_summary(settings, effective_rules(settings), None)
    shown = [repr(settings), str(settings), repr(database), str(database), repr(lines)]
    assert all(PASSWORD not in text for text in shown)
    (line,) = [line for line in lines if line.event == "journal_database"]
    assert line.fields == {"engine": "postgresql", "url": str(database)}


@pytest.mark.parametrize(
    "url",
    [
        f"mysql://gw:{PASSWORD}@db/pacsai",
        f"postgresql://gw:{PASSWORD}@:5432/pacsai",
        f"postgresql://gw:{PASSWORD}@db:port/pacsai",
        "sqlite://journal.sqlite",
    ],
)
def test_a_bad_url_stops_start_up_naming_the_setting(url: str) -> None:
    """An unusable database_url is a ConfigError that names the setting and hides the password."""
    with pytest.raises(ConfigError) as caught:
        load_settings(None, database_url=url)
    assert "database_url" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_unreachable_postgresql_stops_the_gateway_with_a_clear_error(tmp_path: Path) -> None:
    """`pacs-ai serve` and `pacs-ai jobs` with no server at the URL exit at once with one line
    naming the setting and the redacted URL: no traceback, no password."""
    url = f"postgresql://gw:{PASSWORD}@127.0.0.1:{free_port()}/pacsai"
    with pytest.raises(DatabaseUnavailableError) as caught:
        Journal(DatabaseUrl.parse(url))
    assert "database_url" in str(caught.value) and PASSWORD not in str(caught.value)
    env = dict(os.environ, PACSAI_DATABASE_URL=url, PACSAI_ADMIN_PORT="0")
    for command in (["serve", "--port", str(free_port())], ["jobs", "list"]):
        run = subprocess.run(
            [sys.executable, "-m", "listener.cli", *command, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        output = run.stdout + run.stderr
        assert run.returncode != 0, output
        assert "database_url: cannot connect to PostgreSQL at postgresql://gw:***@" in output
        assert PASSWORD not in output and "Traceback" not in output


def test_rows_types_and_errors_are_the_same_on_both_engines(journal_db: JournalDb) -> None:
    """Rows read by name and by index; a Unix time keeps its microseconds, a boolean is 0 or 1,
    bytes come back as bytes; a missing table and a bad statement raise the neutral errors,
    and a failed transaction or schema script leaves the connection usable."""
    database = Database(journal_db)
    with database.read() as db:
        db.executescript(
            "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL,"
            " flag INTEGER, data BLOB, name TEXT)"
        )
    with database.transaction() as db:
        (row_id,) = db.execute(
            "INSERT INTO t (at, flag, data, name) VALUES (?, ?, ?, ?) RETURNING id",
            (1764650000.123456, True, b"\x00\xff", "50% done?"),
        ).fetchone()
    with database.read() as db:
        row = db.execute("SELECT * FROM t WHERE name LIKE '%done?'").fetchone()
        with pytest.raises(MissingTableError):
            db.execute("SELECT * FROM nowhere")
    assert row["id"] == row[0] == row_id
    assert (row["at"], row["flag"], bytes(row["data"]), row["name"]) == (
        1764650000.123456,
        1,
        b"\x00\xff",
        "50% done?",
    )
    assert list(row.keys()) == ["id", "at", "flag", "data", "name"]

    def insert_twice() -> None:
        with database.transaction() as db:
            db.execute("INSERT INTO t (at, flag) VALUES (?, ?)", (1.0, 0))
            db.execute("INSERT INTO t (id, at) VALUES (?, ?)", (row_id, 2.0))  # duplicate key

    with pytest.raises(DatabaseError):
        insert_twice()
    with database.read() as db:
        assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1  # rolled back
        with pytest.raises(DatabaseError):
            db.executescript("CREATE TABLE u (x INTEGER); CREATE TABLE t (x INTEGER)")
        assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1  # still usable
    database.close()


def test_readiness_reports_the_database(postgres: PostgresServer, tmp_path: Path) -> None:
    """/readyz names the engine and the URL without its password, and turns not ready (naming
    the database) when the server stops answering."""
    url = postgres.new_database()
    settings = load_settings(None, data_dir=tmp_path, database_url=url.secret(), disk_min_free_mb=0)
    state = open_state(settings)
    code, body = readiness(state, now=0.0)
    assert body["database"] == {"engine": "postgresql", "url": str(url), "reachable": True}
    assert code == 200 and PASSWORD not in repr(body)
    name = url.secret().rsplit("/", 1)[1]
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
    code, body = readiness(state, now=0.0)
    assert code == 503 and body["database"]["reachable"] is False
    (reason,) = body["reasons"]
    assert reason.startswith(f"database: database_url: {url}") or reason.startswith(
        f"database: database_url: cannot connect to PostgreSQL at {url}"
    )
    assert readiness(state, now=0.0)[0] == 503  # reconnecting fails too
    assert PASSWORD not in repr(body)
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    assert readiness(state, now=0.0)[1]["database"]["reachable"] is True  # reconnected


def test_every_store_round_trips_on_both_engines(journal_db: JournalDb) -> None:
    """The stores no other test runs on both engines write and read back the same values:
    associations, conflicts, the prior index, admin records, supervised exits and the audit
    trail (insert-or-replace rows keep one row per key)."""
    journal = Journal(journal_db)
    journal.start_association(AssociationRecord("a1", "10.0.0.1", 104, "MOD", "PACSAI", 5.0))
    journal.end_association(
        AssociationRecord("a1", "10.0.0.1", 104, "MOD", "PACSAI", 5.0, received=2, stored=2),
        ended="released",
        now=7.5,
    )
    journal.record_conflict(InstanceConflict("1.9", 6.0, "a1", 10, "ab", None, "q/1.9.dcm"))
    journal.record_instance(
        InstanceRecord("1.3", "1.2.840", "1.2", "1.2.1", "CR", "1.2", "p", 1, 5.0, 0),
        quiet_period_s=1.0,
        patient_id="P1",
    )
    (association,) = journal.associations()
    assert (association["received"], association["duration_s"], association["ended"]) == (
        2,
        2.5,
        "released",
    )
    assert journal.conflicts() == [InstanceConflict("1.9", 6.0, "a1", 10, "ab", None, "q/1.9.dcm")]
    index = ChestIndex(journal_db)
    (stale,) = index.stale_studies("P1")
    for path in ("old.dcm", "new.dcm"):  # re-indexing replaces the row
        index.put(stale, patient_id="P1", issuer="", study_date="20240101", frontal_path=path)
    assert index.stale_studies("P1") == []
    assert index.latest_before("P1", "", "20250101", "other") == IndexedStudy(
        "1.2", "20240101", "new.dcm"
    )
    records = AdminRecords(journal_db)
    records.record_model_call("cxrreportgen", at=1.0, duration_s=0.5, outcome="ok", attempts=1)
    reload = records.record_rules_reload("abc", 3, source="api", now=2.0)
    assert records.latest_rules_reload() == reload and reload.id > 0
    supervised = SupervisedRecords(journal_db)
    for failures in (1, 2):
        supervised.record(SupervisedProcess("worker-1", failures, 1, "boom", 3.0))
    assert supervised.crash_looping() == [SupervisedProcess("worker-1", 2, 1, "boom", 3.0)]
    audit = AuditLog(journal_db)
    trail = AuditTrail(audit, source_id="gw", our_ae="PACSAI", clock=lambda: 4.0)
    first = trail.application(started=True)
    (row,) = audit.unshipped()
    assert row["id"] == row[0] == first and audit.records()[0]["event"] == "Application Activity"
    audit.mark_shipped([first], 5.0)
    assert audit.unshipped() == []
    for store in (journal, index, records, supervised, audit):
        store.close()
