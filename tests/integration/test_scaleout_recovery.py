"""A host dies and nothing is lost or doubled (the kill trial, tests/killtrial.py): a work host
killed while its model calls are in flight and a receive host killed between two instances of
an association. Every acknowledged instance is in the shared spool (S3 with PostgreSQL, the
local folder on the embedded backends), every study completes, no result is doubled in Orthanc
and no job or send is left waiting once the sweeper has run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from killtrial import CR_STUDIES, CT_SLICES, run_kill_trial
from peers import Orthanc, run_orthanc
from pgserver import PostgresServer, database_setting
from s3peer import SeaweedS3

pytestmark = pytest.mark.integration


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc as the PACS the results go to."""
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        yield orthanc


@pytest.mark.parametrize("backend", ["sqlite+folder", "postgresql+s3"])
def test_a_dead_worker_and_a_dead_receiver_lose_and_double_nothing(
    tmp_path: Path, pacs: Orthanc, request: pytest.FixtureRequest, backend: str
) -> None:
    """The kill trial on the embedded backends and on PostgreSQL with the spool on S3: the
    same code path, the same outcome."""
    database: dict[str, str] = {}
    env: dict[str, str] = {}
    bucket = None
    if backend == "postgresql+s3":
        postgres: PostgresServer = request.getfixturevalue("postgres")
        seaweedfs: SeaweedS3 = request.getfixturevalue("seaweedfs")
        prefix = uuid.uuid4().hex
        database = database_setting(postgres.new_database())
        env = {f"PACSAI_{k.upper()}": v for k, v in database.items()} | seaweedfs.env(prefix)
        bucket = (seaweedfs, seaweedfs.spool_url(prefix))
    outcome = run_kill_trial(tmp_path, pacs, env, database, bucket)
    assert outcome.worker_recovered
    assert outcome.acknowledged == CT_SLICES + CR_STUDIES
    assert outcome.in_shared_spool == outcome.acknowledged
    assert outcome.results_in_pacs == outcome.results_expected
    assert outcome.jobs_not_completed == 0 and outcome.duplicate_jobs == 0
    assert outcome.sends_not_sent == 0
    assert outcome.distinct_results_sent == outcome.results_expected
