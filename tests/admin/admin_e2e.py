"""An end-to-end run from real pieces, shared by the admin tests.

A modality (DCMTK storescu) sends a synthetic CT series and a chest CR to the real receiver;
the studies are released by the assemble step and planned by the pipeline with the default
rules; their jobs run against the built-in emulator over loopback HTTP (model calls recorded for
the metrics); the outbox delivers the result objects to a DCMTK storescp as the PACS. The admin
server then serves that data folder on a free loopback port.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from factory import ct_series, write_series
from peers import StoreSCP, free_port, nodelay_env, run_storescp
from pydicom import dcmread
from pydicom.data import get_testdata_file

from listener.admin import AdminServer, ModelCallRecorder, start_admin
from listener.assemble import release_step
from listener.emulator import start_emulator
from listener.infer import build_clients
from listener.pipeline import Pipeline, build_pipeline
from listener.receive.scp import Receiver
from listener.receive.server import start_server
from listener.serve.loops import runner_id
from listener.settings import Settings, load_settings
from listener.store.journal import Journal
from listener.store.records import AdminRecords
from listener.store.spool import Spool

CT_SLICES = 6


@dataclass
class EndToEnd:
    """The finished run: settings, what was sent and received, and the admin server.

    ``study_uid`` is the CT study (segmented), ``chest_uid`` the chest CR (report with boxes).
    """

    settings: Settings
    sent_files: list[Path]
    study_uid: str
    chest_uid: str
    pacs: StoreSCP
    admin: AdminServer
    pipeline: Pipeline

    def pacs_files(self) -> list[Path]:
        return [p for p in self.pacs.folder.iterdir() if p.is_file()]


def _storescu(port: int, files: list[Path]) -> None:
    subprocess.run(
        ["storescu", "-aet", "MODALITY", "-aec", "PACSAI", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        env=nodelay_env(),
        check=True,
        capture_output=True,
        timeout=60,
    )


async def _run_jobs(pipeline: Pipeline, settings: Settings, emulator_url: str) -> None:
    recorder = ModelCallRecorder(AdminRecords(settings.journal_path))
    async with build_clients(
        settings.models, emulator_url, emulator_key=settings.emulator.key, on_call=recorder
    ) as clients:
        owner = runner_id(pipeline.settings)
        while (job := pipeline.jobs.claim(owner, time.time(), 600.0)) is not None:
            await pipeline.runner.run_job(job, pipeline.runner.context(clients, job.study_uid))


def _receive(settings: Settings, files: list[Path]) -> None:
    spool = Spool(settings.spool_dir, settings.quarantine_dir)
    journal = Journal(settings.journal_path)
    server = start_server(settings, Receiver(settings, spool, journal))
    try:
        _storescu(settings.port, files)
        deadline = time.monotonic() + 10
        while not any(a["ended"] for a in journal.associations()):
            assert time.monotonic() < deadline, "the association was not recorded as ended"
            time.sleep(0.05)
    finally:
        server.shutdown()
        journal.close()


@pytest.fixture(scope="session")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndToEnd]:
    """Receive, plan, infer, convert and send one CT study, then serve the admin app on it."""
    root = tmp_path_factory.mktemp("e2e")
    series = ct_series(CT_SLICES, body_part="ABDOMEN")
    files = write_series(series, root / "modality")
    chest = get_testdata_file("RG1_UNCR.dcm")
    assert chest is not None, "install the dev dependency pydicom-data"
    files.append(Path(shutil.copy(chest, root / "modality" / "chest.dcm")))
    with run_storescp(root / "pacs") as pacs:
        settings = load_settings(
            None,
            host="127.0.0.1",
            port=free_port(),
            data_dir=root / "data",
            disk_min_free_mb=0,
            quiet_period_s=0.2,
            admin_port=0,
            destinations={"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.port}},
        )
        _receive(settings, files)
        pipeline = build_pipeline(settings)
        released, deadline = 0, time.time() + 30
        while released < 2 and time.time() < deadline:  # each study's quiet period, kept short
            due = pipeline.journal.next_due_at()
            assert due is not None
            time.sleep(max(0.0, due - time.time()))
            released += release_step(pipeline.journal, time.time(), pipeline.router.on_study_ready)
        assert released == 2
        emulator = start_emulator(settings.emulator)
        try:
            asyncio.run(_run_jobs(pipeline, settings, emulator.url))
        finally:
            emulator.stop()
        pipeline.deliverer.deliver_due(time.time())
        admin = start_admin(settings)
        try:
            chest_uid = str(dcmread(chest, stop_before_pixels=True).StudyInstanceUID)
            ct_uid = str(series[0].StudyInstanceUID)
            yield EndToEnd(settings, files, ct_uid, chest_uid, pacs, admin, pipeline)
        finally:
            admin.stop()
            pipeline.journal.close()
