"""Routing a released study: forwards, jobs, per-rule waits, expected content, follow-ups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from factory import ct_series
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from spooled import store_study

from listener.infer.tasks import TaskOutcome
from listener.pipeline import Pipeline, build_pipeline
from listener.route import parse_rules
from listener.route.load import effective_rules
from listener.route.plan import PlannedTask, task_payload
from listener.settings import Settings
from listener.store.jobs import Job
from listener.store.journal import StudyState

RULES = """
destinations:
  archive: {ae_title: ARCHIVE, host: 127.0.0.1, port: 11199}
  pacs: {ae_title: PACS, host: 127.0.0.1, port: 11198}
rules:
  - name: ct
    match: {attribute: Modality, equals: CT}
    quiet_period_s: 30
    forward_to: [archive]
    tasks:
      - {name: segment, model: medimageparse, prompts: [liver]}
    results_to: [pacs]
  - name: chest-pair
    match: {attribute: Modality, equals: CR}
    expect:
      conditions:
        - {attribute: ViewPosition, one_of: [PA]}
        - {attribute: ViewPosition, one_of: [LL]}
      max_wait_s: 60
      on_timeout: discard
    tasks:
      - {name: classify, model: medimageinsight, labels: [a, b]}
"""


class Clock:
    """A settable clock for the pipeline."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pipeline(tmp_path: Path) -> tuple[Pipeline, Clock]:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    settings = Settings(data_dir=tmp_path / "var", rules_file=rules_file, quiet_period_s=5)
    clock = Clock()
    pipeline = build_pipeline(settings, clock=clock)
    return pipeline, clock


def _release(pipeline: Pipeline, clock: Clock) -> None:
    for study in pipeline.journal.release_due_studies(clock.now):
        pipeline.router.on_study_ready(study)
        pipeline.journal.mark_dispatched(study.study_uid, study.generation)


def test_rule_quiet_period_rearms_then_plans_forwards_and_jobs(tmp_path: Path) -> None:
    """A rule's longer quiet period re-arms the study; then originals are queued for the
    archive and one job is scheduled per task, once."""
    pipeline, clock = _pipeline(tmp_path)
    series = ct_series(4)
    store_study(pipeline, series, at=clock.now)
    clock.now += 6  # global quiet period (5 s) over, the rule's 30 s not
    _release(pipeline, clock)
    study = pipeline.journal.study(str(series[0].StudyInstanceUID))
    assert study is not None and study.state is StudyState.RECEIVING
    assert pipeline.jobs.list_jobs() == [] and pipeline.outbox.entries() == []
    clock.now += 25
    _release(pipeline, clock)
    assert len(pipeline.outbox.entries(destination="archive")) == 4
    (job,) = pipeline.jobs.list_jobs()
    assert (job.rule, job.task, job.payload["result_destinations"]) == ("ct", "segment", ["pacs"])


def test_follow_up_forwards_only_late_instances(tmp_path: Path) -> None:
    """An instance arriving after release opens a follow-up that forwards just that instance
    and schedules the tasks again for the new generation."""
    pipeline, clock = _pipeline(tmp_path)
    series = ct_series(4)
    store_study(pipeline, series[:3], at=clock.now)
    clock.now += 31
    _release(pipeline, clock)
    store_study(pipeline, series[3:], at=clock.now)
    clock.now += 31
    _release(pipeline, clock)
    forwarded = [e.sop_instance_uid for e in pipeline.outbox.entries(destination="archive")]
    assert sorted(forwarded) == sorted(str(ds.SOPInstanceUID) for ds in series)
    assert len(pipeline.jobs.list_jobs()) == 2


def _cr(view: str, study_uid: str) -> Dataset:
    ds = ct_series(1, study_uid=study_uid)[0]
    ds.Modality = "CR"
    ds.ViewPosition = view
    return ds


def test_expected_content_waits_then_discards_on_timeout(tmp_path: Path) -> None:
    """A chest pair missing its lateral waits up to max_wait_s, then is discarded as configured."""
    pipeline, clock = _pipeline(tmp_path)
    store_study(pipeline, [_cr("PA", "1.2.3.4.5")], at=clock.now)
    clock.now += 6
    _release(pipeline, clock)
    study = pipeline.journal.study("1.2.3.4.5")
    assert study is not None and study.state is StudyState.RECEIVING
    clock.now += 60
    _release(pipeline, clock)
    assert pipeline.jobs.list_jobs() == []


def test_expected_content_present_plans_at_once(tmp_path: Path) -> None:
    """With both views present the study is planned at its first release."""
    pipeline, clock = _pipeline(tmp_path)
    store_study(pipeline, [_cr("PA", "1.2.3.4.6"), _cr("LL", "1.2.3.4.6")], at=clock.now)
    clock.now += 6
    _release(pipeline, clock)
    assert [j.task for j in pipeline.jobs.list_jobs()] == ["classify"]


def test_settings_destinations_override_the_rules_file(tmp_path: Path) -> None:
    """A destination given in the settings (e.g. by environment) replaces the file's, whatever
    the spelling of its name."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    settings = Settings(
        rules_file=rules_file,
        destinations={"ARCHIVE": {"ae_title": "REAL", "host": "10.0.0.9", "port": 104}},
    )
    rules = effective_rules(settings)
    assert rules.destinations["archive"].ae_title == "REAL"
    assert set(rules.destinations) == {"archive", "pacs"}
    assert parse_rules(RULES).destinations["archive"].ae_title == "ARCHIVE"


def _report(study_uid: str, text: str) -> Dataset:
    """A minimal SR holding a draft report text at its root, as the report SR builder writes it."""
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "18782-3", "LN"
    code.CodeMeaning = "Radiology Study observation (narrative)"
    item = Dataset()
    item.ValueType, item.ConceptNameCodeSequence, item.TextValue = "TEXT", [code], text
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    sr.SOPInstanceUID = generate_uid()
    sr.StudyInstanceUID, sr.Modality, sr.ContentSequence = study_uid, "SR", [item]
    return sr


def test_prior_is_the_latest_earlier_frontal_of_the_same_patient(tmp_path: Path) -> None:
    """CXRReportGen's prior: the same patient's most recent earlier frontal image, with the draft
    report the gateway made for it; later studies and other patients are not priors."""
    pipeline, clock = _pipeline(tmp_path)
    studies = {}
    for uid, date, patient in (
        ("1.9.1", "20240101", "P1"),
        ("1.9.2", "20250101", "P1"),
        ("1.9.3", "20270101", "P1"),
        ("1.9.4", "20251201", "P2"),
    ):
        ds = _cr("PA", uid)
        ds.StudyDate, ds.PatientID = date, patient
        studies[uid] = ds
        store_study(pipeline, [ds], at=clock.now)
    pipeline.runner.results_dir.joinpath("1.9.2").mkdir(parents=True)
    _report("1.9.2", "Small left effusion.").save_as(
        pipeline.runner.results_dir / "1.9.2" / "report.dcm", enforce_file_format=True
    )
    current = _cr("PA", "1.9.9")
    current.StudyDate, current.PatientID = "20260101", "P1"
    prior = pipeline.runner.priors(current)
    assert prior is not None
    assert prior.dataset.StudyInstanceUID == "1.9.2"
    assert (prior.study_date, prior.report) == ("20250101", "Small left effusion.")
    stranger = _cr("PA", "1.9.8")
    stranger.StudyDate, stranger.PatientID = "20260101", "P3"
    assert pipeline.runner.priors(stranger) is None


def test_out_of_distribution_study_is_forwarded_for_review(tmp_path: Path) -> None:
    """A classified study whose embedding is far from every earlier study's exceeds the rule's
    threshold and is forwarded to the rule's OOD destination; embeddings are kept either way."""
    pipeline, clock = _pipeline(tmp_path)
    series = ct_series(2)
    store_study(pipeline, series, at=clock.now)
    study_uid = str(series[0].StudyInstanceUID)
    rng = np.random.default_rng(3)
    common = rng.normal(size=1024)
    for i in range(6):  # the reference: earlier studies that look alike
        vector = common + rng.normal(size=1024) * 0.05
        pipeline.embeddings.put(f"ref{i}", f"1.8.{i}", list(vector), "v1", now=clock.now)
    task = PlannedTask(
        rule="r",
        name="classify",
        model="medimageinsight",
        inputs={"images": (str(series[0].SOPInstanceUID),)},
        labels=("a", "b"),
        parameters={"ood_threshold": 0.5, "ood_destination": "archive"},
    )
    job_id = pipeline.jobs.schedule(
        job_key="k",
        study_uid=study_uid,
        generation=0,
        rule="r",
        task="classify",
        payload=task_payload(task),
        priority=0,
        now=clock.now,
    )
    job = pipeline.jobs.claim("w", clock.now, 60)
    assert job is not None and job.id == job_id
    strange = list(rng.normal(size=1024))
    outcome = TaskOutcome((), "a", {str(series[0].SOPInstanceUID): strange}, model_version="v1")
    assert pipeline.runner.act(job, outcome, clock.now) == []
    forwarded = pipeline.outbox.entries(destination="archive")
    assert sorted(e.sop_instance_uid for e in forwarded) == sorted(
        str(ds.SOPInstanceUID) for ds in series
    )
    assert pipeline.embeddings.count() == 7


def _claimed_job(pipeline: Pipeline, task: PlannedTask, study_uid: str, generation: int) -> Job:
    pipeline.jobs.schedule(
        job_key=f"{study_uid}:{generation}",
        study_uid=study_uid,
        generation=generation,
        rule=task.rule,
        task=task.name,
        payload=task_payload(task),
        priority=0,
        now=1000.0,
    )
    job = pipeline.jobs.claim("w", 1000.0, 60)
    assert job is not None
    return job


def test_follow_up_routed_by_label_forwards_only_late_instances(tmp_path: Path) -> None:
    """Routing by classification sends the study once; a follow-up's job routed to the same
    destination forwards only the late instance, not the whole study again."""
    pipeline, clock = _pipeline(tmp_path)
    series = ct_series(3)
    study_uid = str(series[0].StudyInstanceUID)
    task = PlannedTask(
        rule="r",
        name="sort",
        model="medimageinsight",
        inputs={"images": (str(series[0].SOPInstanceUID),)},
        labels=("a", "b"),
        routes={"a": "archive"},
    )
    store_study(pipeline, series[:2], at=clock.now)
    job = _claimed_job(pipeline, task, study_uid, 0)
    pipeline.runner.act(job, TaskOutcome((), "a", {}), clock.now)
    assert len(pipeline.outbox.entries(destination="archive")) == 2
    store_study(pipeline, series[2:], at=clock.now + 100)
    follow_up = _claimed_job(pipeline, task, study_uid, 1)
    pipeline.runner.act(follow_up, TaskOutcome((), "a", {}), clock.now + 200)
    forwarded = [e.sop_instance_uid for e in pipeline.outbox.entries(destination="archive")]
    assert sorted(forwarded) == sorted(str(ds.SOPInstanceUID) for ds in series)
