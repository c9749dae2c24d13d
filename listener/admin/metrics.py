"""Prometheus metrics read from the journal database and the data folder at scrape time.

Receive processes, the dispatcher, the job runners and the admin server share nothing but the
journal and the files, so the numbers come from there (:class:`JournalCollector`), not from
in-process counters: they are the same whichever process is scraped, and survive restarts.
Counters are totals over what the journal holds (instances, associations, outbox entries, model
calls).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from listener.settings import MODEL_NAMES
from listener.store.db import Database
from listener.store.drift import latest_readings
from listener.store.flags import flag_metrics
from listener.store.outbox import EntryState
from listener.store.permits import requests_in_flight
from listener.store.stats import JOB_STATES, STUDY_STATES, Stats, read_stats
from listener.store.uploads import upload_counts

PREFIX = "pacsai"
COMPLETION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
MODEL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def histogram_buckets(
    values: Iterable[float], bounds: Sequence[float]
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (upper bound, count) pairs ending with +Inf, and the sum of the values."""
    data = list(values)
    buckets = [(repr(float(b)), float(sum(1 for v in data if v <= b))) for b in bounds]
    buckets.append(("+Inf", float(len(data))))
    return buckets, float(sum(data))


class JournalCollector(Collector):
    """Reads every gateway metric from the journal database at scrape time.

    ``quarantine_dir`` holds one JSON reason file per quarantined instance; ``free_bytes``
    gives the spool file system's free space.
    """

    def __init__(
        self, database: Database, quarantine_dir: Path, free_bytes: Callable[[], float]
    ) -> None:
        self.database = database
        self.quarantine_dir = quarantine_dir
        self.free_bytes = free_bytes

    def describe(self) -> list[Metric]:
        return []  # no describe: the registry must not scrape the database when registering

    def collect(self) -> Iterator[Metric]:
        stats = read_stats(self.database)
        yield from _received(stats)
        yield from _stages(stats)
        yield from _models(stats)
        yield from _sends(stats)
        yield from _purged(stats)
        yield from _flags(self.database)
        yield from _drift(self.database)
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_model_requests_in_flight",
            "Requests on the wire to each model endpoint from the whole gateway (permits held)",
            labels=["model"],
        )
        held = requests_in_flight(self.database, time.time())
        for model in MODEL_NAMES:
            in_flight.add_metric([model], held.get(model, 0))
        yield in_flight
        uploads = GaugeMetricFamily(
            f"{PREFIX}_spool_uploads",
            "Spool files by upload state to the S3 bucket (pending: only on a receiver's disk)",
            labels=["state"],
        )
        for state, count in sorted(upload_counts(self.database).items()):
            uploads.add_metric([state], count)
        yield uploads
        quarantined = sum(1 for _ in self.quarantine_dir.glob("*.json"))
        yield CounterMetricFamily(
            f"{PREFIX}_quarantined_instances", "Instances set aside as unstorable", quarantined
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_spool_free_bytes", "Free space on the spool file system", self.free_bytes()
        )


OOD_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0)


def _flags(database: Database) -> Iterator[Metric]:
    """Studies' latest OOD scores and the review/OOD flags raised (listener.store.flags)."""
    scores, counts = flag_metrics(database)
    buckets, total = histogram_buckets(scores, OOD_BUCKETS)
    yield HistogramMetricFamily(
        f"{PREFIX}_study_ood_score",
        "Latest out-of-distribution score of each scored study",
        buckets=buckets,
        sum_value=total,
    )
    family = CounterMetricFamily(
        f"{PREFIX}_study_flags", "Flags raised on studies by kind (review, ood)", labels=["kind"]
    )
    for kind, n in sorted(counts.items()):
        family.add_metric([kind], n)
    yield family


def _drift(database: Database) -> Iterator[Metric]:
    """Each drift group's latest reading (listener.store.drift): MMD², p-value, drifted."""
    families = [
        GaugeMetricFamily(
            f"{PREFIX}_embedding_drift",
            "MMD² of the group's latest embedding window against its reference",
            labels=["group"],
        ),
        GaugeMetricFamily(
            f"{PREFIX}_embedding_drift_p_value",
            "Permutation p-value of the group's latest drift test",
            labels=["group"],
        ),
        GaugeMetricFamily(
            f"{PREFIX}_embedding_drifted",
            "1 when the group's latest drift test is under drift.alpha",
            labels=["group"],
        ),
    ]
    for r in latest_readings(database):
        values = (r.statistic, r.p_value, float(r.drifted))
        for family, value in zip(families, values, strict=True):
            family.add_metric([r.group], value)
    yield from families


def _received(stats: Stats) -> Iterator[Metric]:
    yield CounterMetricFamily(
        f"{PREFIX}_instances_received", "Instances stored by the receiver", stats.instances
    )
    yield CounterMetricFamily(
        f"{PREFIX}_received_bytes",
        "Bytes of the instances stored by the receiver",
        stats.received_bytes,
    )
    assoc = CounterMetricFamily(
        f"{PREFIX}_associations",
        "Associations by how they ended (released, aborted, closed, rejected)",
        labels=["outcome"],
    )
    for outcome, n in stats.associations.items():
        assoc.add_metric([outcome], n)
    yield assoc
    buckets, total = histogram_buckets(stats.completion_waits, COMPLETION_BUCKETS)
    yield HistogramMetricFamily(
        f"{PREFIX}_study_completion_wait_seconds",
        "Time from a study's last instance to its release to the route stage",
        buckets=buckets,
        sum_value=total,
    )


def _stages(stats: Stats) -> Iterator[Metric]:
    for name, counts, states, text in (
        ("studies", stats.studies, STUDY_STATES, "Studies per assemble state"),
        ("jobs", stats.jobs, JOB_STATES, "Model jobs per UPS state"),
    ):
        family = GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=["state"])
        for state in dict.fromkeys([*states, *counts]):
            family.add_metric([state], counts.get(state, 0))
        yield family
    outbox = GaugeMetricFamily(
        f"{PREFIX}_outbox_entries",
        "Outbox entries per destination and state",
        labels=["destination", "state"],
    )
    for destination, state, n in stats.outbox:
        outbox.add_metric([destination, state], n)
    yield outbox


def _models(stats: Stats) -> Iterator[Metric]:
    calls = CounterMetricFamily(
        f"{PREFIX}_model_calls", "Model calls by model and outcome", labels=["model", "outcome"]
    )
    errors = CounterMetricFamily(
        f"{PREFIX}_model_errors", "Model calls that failed, by model", labels=["model"]
    )
    failed: dict[str, int] = {}
    for model, outcome, n in stats.model_calls:
        calls.add_metric([model, outcome], n)
        if outcome != "ok":
            failed[model] = failed.get(model, 0) + n
    for model, n in sorted(failed.items()):
        errors.add_metric([model], n)
    latency = HistogramMetricFamily(
        f"{PREFIX}_model_call_duration_seconds",
        "Model call latency including retries, by model",
        labels=["model"],
    )
    durations: dict[str, list[float]] = {}
    for model, seconds in stats.model_durations:
        durations.setdefault(model, []).append(seconds)
    for model, values in sorted(durations.items()):
        buckets, total = histogram_buckets(values, MODEL_BUCKETS)
        latency.add_metric([model], buckets, total)
    available = GaugeMetricFamily(
        f"{PREFIX}_model_available",
        "1 unless the breaker of the job runner that last called the model is open",
        labels=["model"],
    )
    for model, down in sorted(stats.models_down.items()):
        available.add_metric([model], 0.0 if down else 1.0)
    waiting = GaugeMetricFamily(
        f"{PREFIX}_jobs_waiting_for_model",
        "Jobs IN PROGRESS waiting for a model to come back (transient failures)",
        labels=["model"],
    )
    for model in dict.fromkeys([*MODEL_NAMES, *sorted(stats.waiting_jobs)]):
        waiting.add_metric([model], stats.waiting_jobs.get(model, 0))
    yield from (calls, errors, latency, available, waiting)


def _sends(stats: Stats) -> Iterator[Metric]:
    sends = CounterMetricFamily(
        f"{PREFIX}_sends",
        "Instances sent (confirmed) or given up (dead letter), by destination",
        labels=["destination", "outcome"],
    )
    failures = CounterMetricFamily(
        f"{PREFIX}_send_failed_attempts",
        "C-STORE attempts that did not confirm the instance, by destination",
        labels=["destination"],
    )
    for destination, sent, dead, failed in stats.sends:
        sends.add_metric([destination, EntryState.SENT.value], sent)
        sends.add_metric([destination, EntryState.DEAD.value], dead)
        failures.add_metric([destination], failed)
    yield from (sends, failures)


def _purged(stats: Stats) -> Iterator[Metric]:
    files = CounterMetricFamily(
        f"{PREFIX}_purged_files",
        "Files removed by retention, by kind (originals, results, quarantine)",
        labels=["kind"],
    )
    size = CounterMetricFamily(
        f"{PREFIX}_purged_bytes", "Bytes removed by retention, by kind", labels=["kind"]
    )
    for kind, count, total in stats.purged:
        files.add_metric([kind], count)
        size.add_metric([kind], total)
    yield from (files, size)


def build_registry(collector: JournalCollector) -> CollectorRegistry:
    """A registry of its own (not the process-global one) holding ``collector``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
