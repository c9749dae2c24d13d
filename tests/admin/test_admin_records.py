"""Model calls recorded by the transport hook reach the metrics, failures included."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from listener.admin import AdminRecords, ModelCallRecorder, open_state
from listener.admin.metrics import JournalCollector, build_registry
from listener.asgi import BackgroundServer
from listener.emulator import create_app
from listener.errors import TransientModelError
from listener.infer import ModelTransport
from listener.infer.resilience import CallBackoff
from listener.settings import EmulatorSettings, ModelSettings, load_settings
from listener.store.db import Database


def _metrics(path: Path, quarantine: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    database = Database(path)
    text = generate_latest(build_registry(JournalCollector(database, quarantine, lambda: 1.0)))
    database.close()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


async def _call(transport: ModelTransport) -> None:
    try:
        await transport.score(
            {"input_data": {"columns": ["image", "text"], "data": [], "index": []}}
        )
    finally:
        await transport.aclose()


@pytest.mark.integration
def test_failed_model_calls_are_counted_per_model(tmp_path: Path) -> None:
    """A call the emulator keeps answering 503 is recorded once, as transient after its
    retries, and shows as a model error and a latency sample of its model."""
    settings = load_settings(None, data_dir=tmp_path / "data")
    state = open_state(settings)
    state.close()
    recorder = ModelCallRecorder(AdminRecords(settings.journal_path), clock=lambda: 1000.0)
    faulty = EmulatorSettings(fault_rate=1.0, fault_statuses=[503])
    with BackgroundServer(create_app(faulty)) as emulator:
        transport = ModelTransport(
            "medimageparse",
            ModelSettings(retries=2),
            endpoint=f"{emulator.url}/medimageparse/score",
            emulated=True,
            backoff=CallBackoff(initial_s=0.005, max_s=0.02),
            on_call=recorder,
        )
        with pytest.raises(TransientModelError):
            asyncio.run(_call(transport))
    samples = _metrics(settings.journal_path, settings.quarantine_dir)
    model = (("model", "medimageparse"),)
    assert samples[("pacsai_model_calls_total", (*model, ("outcome", "transient")))] == 1
    assert samples[("pacsai_model_errors_total", model)] == 1
    assert samples[("pacsai_model_call_duration_seconds_count", model)] == 1
    with closing(sqlite3.connect(settings.journal_path)) as db:
        assert db.execute("SELECT attempts, at FROM model_calls").fetchall() == [(3, 1000.0)]
