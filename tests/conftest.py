"""Shared fixtures: synthetic data and real peers (Orthanc, DCMTK storescp, SeaweedFS S3)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import Orthanc, StoreSCP, run_orthanc, run_storescp
from pgserver import PostgresServer, run_postgres
from s3peer import SeaweedS3, run_seaweedfs

from listener.settings.database import DatabaseUrl


@pytest.fixture(params=["fast", "stock"])
def receive_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test once per receive engine (``receive_engine``: fast, stock), set in the
    environment so that in-process receivers and ``pacs-ai serve`` subprocesses both take it."""
    engine: str = request.param
    monkeypatch.setenv("PACSAI_RECEIVE_ENGINE", engine)
    return engine


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A fresh Orthanc PACS on free loopback ports."""
    with run_orthanc(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """A DCMTK storescp reference receiver on a free loopback port."""
    with run_storescp(tmp_path / "storescp") as scp:
        yield scp


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole test run (each test gets its own database)."""
    with run_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_db(request: pytest.FixtureRequest, tmp_path: Path) -> Path | DatabaseUrl:
    """Where a test's journal lives, once per engine: a SQLite file in ``tmp_path``, then a fresh
    database on the test PostgreSQL server. The same test runs on both: one code path."""
    if request.param == "sqlite":
        return tmp_path / "journal.sqlite"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 service (``weed mini``) for the session; tests use their own prefix."""
    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
