"""Readers on a host without the local copy (``spool_url: s3://...``): a job reads its input
from the bucket and puts its results there, a result send reads its object from the bucket,
retention purges the objects, and a wrong secret key is named, never shown. Against SeaweedFS
(``weed mini``) over loopback, the emulator over real HTTP and DCMTK storescp."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from factory import ct_series
from peers import StoreSCP
from s3peer import SECRET_ACCESS_KEY, SeaweedS3, object_bytes, object_keys
from spooled import schedule_classification, store_study

from listener.asgi import BackgroundServer
from listener.errors import ConfigError, ObjectStoreError
from listener.infer import build_clients
from listener.pipeline import Pipeline, build_pipeline
from listener.serve.loops import retention
from listener.settings import Settings, load_settings
from listener.store.jobs import JobState
from listener.store.objects import check_spool_bucket, object_store

Start = Callable[..., BackgroundServer]


def _uploaded_study(tmp_path: Path, s3: SeaweedS3, **settings: Any) -> tuple[Pipeline, list[Any]]:
    """A pipeline on the bucket with a CT study whose files were uploaded, as a receiver on
    another host leaves it."""
    pipeline = build_pipeline(Settings(data_dir=tmp_path / "var", **s3.settings(), **settings))
    series = ct_series(3)
    store_study(pipeline, series, at=time.time())
    store = object_store(pipeline.settings)
    assert store is not None
    for record in pipeline.journal.instances(str(series[0].StudyInstanceUID)):
        store.put(record.path, pipeline.settings.spool_dir / record.path)
    return pipeline, series


def test_a_job_reads_its_input_from_the_bucket_and_a_send_reads_its_result_from_it(
    tmp_path: Path, seaweedfs: SeaweedS3, emulator: Start, storescp: StoreSCP
) -> None:
    """The study's spool folder is deleted (a worker on another host); the classification job
    still completes on its first attempt, its inputs fetched from the bucket with the same
    bytes, and its result objects are in the bucket. With the local results deleted too (a
    deliverer on a third host), the result send to storescp reads them from the bucket."""
    server = emulator()
    destination = {"ae_title": storescp.aet, "host": "127.0.0.1", "port": storescp.port}
    pipeline, series = _uploaded_study(tmp_path, seaweedfs, destinations={"pacs": destination})
    study_uid = str(series[0].StudyInstanceUID)
    folder = pipeline.settings.spool_dir / study_uid
    originals = {p.name: p.read_bytes() for p in folder.rglob("*.dcm")}
    shutil.rmtree(folder)
    job_id = schedule_classification(
        pipeline, str(series[0].StudyInstanceUID), [str(ds.SOPInstanceUID) for ds in series]
    )

    async def run() -> None:
        async with build_clients(pipeline.settings.models, server.url) as clients:
            job = pipeline.jobs.claim("runner", time.time(), 60.0)
            assert job is not None
            await pipeline.runner.run_job(job, pipeline.runner.context(clients, study_uid))

    asyncio.run(run())
    job = pipeline.jobs.get(job_id)
    assert job is not None and job.state is JobState.COMPLETED and job.attempts == 1
    fetched = {p.name: p.read_bytes() for p in folder.rglob("*.dcm")}
    assert fetched == originals
    results = pipeline.runner.results_dir / study_uid
    written = {p.name: p.read_bytes() for p in results.glob("*.dcm")}
    url = str(pipeline.settings.spool_url)
    assert written and all(
        object_bytes(seaweedfs, url, f"results/{study_uid}/{name}") == data
        for name, data in written.items()
    )
    shutil.rmtree(results)
    for name in written:
        pipeline.outbox.enqueue("pacs", results / name, name.removesuffix(".dcm"), job_id, 0.0)
    report = pipeline.deliverer.deliver_due(time.time())
    assert report.sent == {"pacs": len(written)}
    assert len(list(storescp.folder.iterdir())) == len(written)


def test_retention_purges_the_objects_of_a_study_with_its_rows(
    tmp_path: Path, seaweedfs: SeaweedS3
) -> None:
    """A settled study past its retention: its originals' and its results' objects leave the
    bucket, its instance rows the journal, though this host never held its files."""
    pipeline, series = _uploaded_study(
        tmp_path, seaweedfs, retention_originals_s=60.0, retention_results_s=60.0
    )
    study_uid = str(series[0].StudyInstanceUID)
    shutil.rmtree(pipeline.settings.spool_dir / study_uid)
    result = tmp_path / "result.dcm"
    result.write_bytes(b"result")  # a result object another host's job runner wrote
    store = object_store(pipeline.settings)
    assert store is not None
    store.put(f"results/{study_uid}/1.2.3.dcm", result)
    now = time.time()
    for study in pipeline.journal.release_due_studies(now + 3600):
        pipeline.journal.mark_dispatched(study.study_uid, study.generation)
    url = str(pipeline.settings.spool_url)
    assert len(object_keys(seaweedfs, url)) == 4
    report = retention(pipeline).purge_due(now + 7200)
    assert report.files == {"originals": 3, "results": 1}
    assert object_keys(seaweedfs, url) == []
    assert pipeline.journal.instances(study_uid) == []


def test_a_wrong_secret_key_stops_start_up_naming_the_setting_not_the_key(
    tmp_path: Path, seaweedfs: SeaweedS3
) -> None:
    """The bucket answers SignatureDoesNotMatch: start-up stops with an error that names
    s3.secret_access_key and does not carry the key; an upload fails the same way."""
    wrong = "not-the-right-secret-0123456789"
    settings = load_settings(None, data_dir=tmp_path / "var", **seaweedfs.settings(secret=wrong))
    with pytest.raises(ConfigError) as stopped:
        check_spool_bucket(settings)
    assert "s3.secret_access_key" in str(stopped.value)
    assert wrong not in str(stopped.value) and SECRET_ACCESS_KEY not in str(stopped.value)
    store = object_store(settings)
    assert store is not None
    sample = tmp_path / "sample.dcm"
    sample.write_bytes(b"\0" * 128)
    with pytest.raises(ObjectStoreError) as refused:
        store.put("a/b/c.dcm", sample)
    assert refused.value.setting == "s3.secret_access_key"
    assert wrong not in str(refused.value)
    assert object_bytes(seaweedfs, str(settings.spool_url), "a/b/c.dcm") is None
