"""Shared fixtures: synthetic data and real peers (Orthanc, DCMTK storescp, SeaweedFS S3)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import Orthanc, StoreSCP, run_orthanc, run_storescp
from s3peer import SeaweedS3, run_seaweedfs


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
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 service (``weed mini``) for the session; tests use their own prefix."""
    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
