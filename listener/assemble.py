"""Assemble: decide when a study is complete and hand it to the route stage.

A study is ready when no instance has arrived for its quiet period, or at the latest
``max_study_wait_s`` after its first instance (mercure's force-complete: a study that keeps
trickling in is released anyway, and what comes later opens a follow-up). The timer is a due time
stored in the journal (``studies.due_at``), pushed forward by every new instance, so a restart in
the middle of a quiet period resumes the same timer: the study is released once, when it falls
due, whichever process is running then. Releasing is one journal transaction
(:meth:`~listener.store.journal.Journal.release_due_studies`), so it happens exactly once per
generation even with several dispatchers.

Late instances: an instance that arrives after its study was released opens a *follow-up*. The
study goes back to ``receiving`` with its generation raised by one, gets a fresh quiet period,
and is released again; the :class:`~listener.store.journal.ReleasedStudy` then has the new
generation and counts the late instances in ``new_instances``
(``Journal.instances(uid, generation=g)`` lists them). What a follow-up triggers (re-run,
amend, ignore) is the routing rules' decision.

Delivery to the route callback is at least once: a study stays ``ready`` until its callback
returned and :meth:`~listener.store.journal.Journal.mark_dispatched` ran, and a dispatcher that
starts hands every ``ready`` study over again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from listener.logging import get_logger
from listener.store.journal import Journal, ReleasedStudy

StudyCallback = Callable[[ReleasedStudy], None]


def log_study_ready(study: ReleasedStudy) -> None:
    """The default callback until a pipeline is wired: nothing beyond the release event."""
    get_logger("assemble", study_uid=study.study_uid).debug("study_not_routed")


def dispatch(journal: Journal, studies: list[ReleasedStudy], on_ready: StudyCallback) -> int:
    """Log each released study, hand it to the callback, mark it dispatched; return how many."""
    for study in studies:
        get_logger("assemble", study_uid=study.study_uid).info(
            "study_ready",
            generation=study.generation,
            follow_up=study.generation > 0,
            instances=study.instance_count,
            new_instances=study.new_instances,
            calling_ae=study.calling_ae,
        )
        on_ready(study)
        journal.mark_dispatched(study.study_uid, study.generation)
    return len(studies)


def release_step(
    journal: Journal, now: float, on_ready: StudyCallback, max_wait_s: float | None = None
) -> int:
    """Release the studies due at ``now`` (quiet period over, or waited ``max_wait_s`` since
    their first instance) and dispatch them; return how many."""
    return dispatch(journal, journal.release_due_studies(now, max_wait_s), on_ready)


def next_wait(
    journal: Journal, now: float, poll_interval_s: float, max_wait_s: float | None = None
) -> float:
    """How long to sleep: until the next due time, at most the poll interval."""
    due = journal.next_due_at(max_wait_s)
    if due is None:
        return poll_interval_s
    return max(0.0, min(poll_interval_s, due - now))


def release_loop(
    journal: Journal,
    stop: threading.Event,
    *,
    on_ready: StudyCallback = log_study_ready,
    clock: Callable[[], float] = time.time,
    poll_interval_s: float = 0.5,
    max_wait_s: float | None = None,
) -> None:
    """Release studies as their quiet periods end (or their maximum wait) until ``stop`` is set.

    Studies left ``ready`` by a previous run (released, callback not finished) go first.
    """
    log = get_logger("assemble")
    redelivered = dispatch(journal, journal.ready_studies(), on_ready)
    log.info("release_loop_started", redelivered=redelivered)
    while not stop.is_set():
        release_step(journal, clock(), on_ready, max_wait_s)
        stop.wait(next_wait(journal, clock(), poll_interval_s, max_wait_s))
    log.info("release_loop_stopped")
