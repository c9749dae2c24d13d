"""Actions on a task's output (rules ``flag_for_review`` and ``ood``, :mod:`listener.route.model`).

Pure decisions over a task's parameters and its outcome; :class:`listener.infer.runner.JobRunner`
carries them out (flag, forward, raise priority). The planner writes the rule's actions into the
job parameters (``review_*``, ``ood_*``; :func:`listener.route.plan._action_parameters`), so a job
carries the actions of the rules it was planned under.
"""

from __future__ import annotations

from collections.abc import Mapping

from listener.route.plan import PlannedTask
from listener.store.flags import OOD, REVIEW, StudyFlag


def review_flag(
    task: PlannedTask, probabilities: Mapping[str, float], study_uid: str, now: float
) -> tuple[StudyFlag, int] | None:
    """The review flag (and priority raise) the outcome earns; None when below the threshold.

    The label is the rule's ``flag_for_review.label``, or the top label when it names none.
    """
    above = task.parameters.get("review_above")
    if above is None or not probabilities:
        return None
    label = task.parameters.get("review_label")
    label = str(label) if label else max(probabilities, key=lambda k: probabilities[k])
    probability = probabilities.get(label)
    if probability is None or probability <= float(above):
        return None
    destination = task.parameters.get("review_destination")
    flag = StudyFlag(
        study_uid=study_uid,
        kind=REVIEW,
        rule=task.rule,
        task=task.name,
        reason=f"{label}: probability {probability:.3f} above {float(above):g}",
        score=probability,
        destination=str(destination) if destination else None,
        created_at=now,
    )
    return flag, int(task.parameters.get("review_priority") or 0)


def ood_flag(task: PlannedTask, score: float, study_uid: str, now: float) -> StudyFlag | None:
    """The OOD flag a score earns under the task's ``ood_threshold``; None when below it."""
    threshold = task.parameters.get("ood_threshold")
    if threshold is None or score <= float(threshold):
        return None
    destination = task.parameters.get("ood_destination")
    return StudyFlag(
        study_uid=study_uid,
        kind=OOD,
        rule=task.rule,
        task=task.name,
        reason=f"out-of-distribution score {score:.3f} above {float(threshold):g}",
        score=score,
        destination=str(destination) if destination else None,
        created_at=now,
    )
