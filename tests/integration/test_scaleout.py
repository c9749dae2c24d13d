"""Distributed end to end: HAProxy in front of two receive hosts, two work hosts, Orthanc as the
PACS. A CT whose two series come over separate associations (so they reach different receivers)
and ten chest CRs: each study is released once and each result reaches Orthanc once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from factory import ct_series, write_series
from peers import Orthanc, run_orthanc, send_with_storescu, wait_for
from pgserver import database_setting
from scaleout import chest_studies, pacs_env, result_count, run_cluster

from listener.settings import load_settings
from listener.store.db import DatabaseTarget
from listener.store.jobs import JobState, JobStore
from listener.store.outbox import EntryState, Outbox

pytestmark = pytest.mark.integration

CT_SERIES_SLICES = 50
CR_STUDIES = 10
# The default rules' results: a chest CT gets a SEG and its SR; the synthetic chest CR a report
# SR and a classification SR (the emulator boxes no finding on it, so no presentation state).
CT_RESULTS = 2
CR_RESULTS = 2


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc as the PACS the results go to."""
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        yield orthanc


def _modality_associations(log: list[dict[str, object]]) -> int:
    return sum(1 for e in log if e.get("calling_ae") == "MODALITY")


def test_studies_split_over_receivers_assemble_once_and_results_reach_the_pacs_once(
    tmp_path: Path, pacs: Orthanc, journal_db: DatabaseTarget
) -> None:
    """The CT's series go over two associations through HAProxy and land on both receivers;
    the CT and ten CRs are each released once (generation 0 only), every job completes once,
    and Orthanc holds exactly the expected results, each sent once. On the embedded journal
    (SQLite) and on PostgreSQL: one code path."""
    ct_uid = "1.2.826.0.1.3680043.8.498.77001"
    series = [
        write_series(
            ct_series(
                CT_SERIES_SLICES,
                body_part="CHEST",
                study_uid=ct_uid,
                series_uid=f"{ct_uid}.{index}",
                uid_seed=f"scaleout-ct-{index}",
            ),
            tmp_path / f"ct{index}",
        )
        for index in (1, 2)
    ]
    crs, cr_uids = chest_studies(tmp_path, "scaleout-cr", CR_STUDIES)
    env = {
        **pacs_env(pacs),
        "PACSAI_QUIET_PERIOD_S": "2",
        **{f"PACSAI_{k.upper()}": v for k, v in database_setting(journal_db).items()},
    }
    with run_cluster(tmp_path, env) as cluster:
        for paths in series:
            send_with_storescu(cluster.port, paths)
        for path in crs:
            send_with_storescu(cluster.port, [path])
        wait_for(
            "every study's results in Orthanc",
            lambda: (
                result_count(pacs, ct_uid) >= CT_RESULTS
                and all(result_count(pacs, uid) >= CR_RESULTS for uid in cr_uids)
            ),
            timeout=300,
        )
        spread = [
            _modality_associations(r.events("association_accepted")) for r in cluster.receivers
        ]
        settings = load_settings(
            None, data_dir=cluster.receivers[0].data_dir, **database_setting(journal_db)
        )
    assert all(count >= 1 for count in spread), spread
    assert sum(spread) == len(series) + CR_STUDIES
    assert result_count(pacs, ct_uid) == CT_RESULTS
    assert all(result_count(pacs, uid) == CR_RESULTS for uid in cr_uids)
    jobs = JobStore(settings.journal_database).list_jobs()
    assert {j.study_uid for j in jobs} == {ct_uid, *cr_uids}
    assert {j.generation for j in jobs} == {0}
    assert {j.state for j in jobs} == {JobState.COMPLETED}
    keys = [(j.study_uid, j.task) for j in jobs]
    assert len(keys) == len(set(keys))
    sent = Outbox(settings.journal_database).entries(destination="pacs")
    assert {e.state for e in sent} == {EntryState.SENT}
    assert [e.attempts for e in sent] == [1] * len(sent)
    assert (
        len({e.sop_instance_uid for e in sent}) == len(sent) == CT_RESULTS + CR_RESULTS * CR_STUDIES
    )
