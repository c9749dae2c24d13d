"""Shared fixtures: synthetic data and real peers (Orthanc, DCMTK storescp)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import Orthanc, StoreSCP, run_orthanc, run_storescp


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
