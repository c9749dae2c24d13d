"""Route: decide, by the rules, what happens to a study. A pure function over headers.

Evaluation, in the rules' order (priority descending, then file order):

- A rule's ``match`` is evaluated **per instance**, together with the facts of the association
  that brought that instance (a study sent in several associations, even by several senders,
  has each instance judged by its own sender: a rule on the sender's address acts on the
  instances that came from that address). The
  study matches the rule when at least one instance does, and the rule then acts on exactly the
  instances that matched (its *matched instances*). Study-level attributes (StudyDescription,
  BodyPartExamined, ...) are the same on every instance, so testing them per instance is the
  same as testing them on the study.
- Each task selects, among the matched instances, the ones that meet its ``inputs`` condition per
  role (e.g. frontal/lateral); a task whose roles select nothing is still planned, with empty
  roles, so that the job can say why it did nothing.
- ``forward_to`` forwards the matched instances (originals, unchanged).
- ``expect`` is evaluated over all instances of the study: each condition needs at least one.
- A rule with ``on_match: stop`` ends the evaluation. A matched ``discard`` rule drops the whole
  study: the plan then has no tasks and no forwards, whatever other rules matched.

No I/O, no clock: the same inputs always give the same plan (DESIGN.md, route stage).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset

from listener.route.conditions import AssociationFacts, Headers
from listener.route.model import ModelTask, Rule, RuleSet
from listener.settings import ModelName

DEFAULT_ROLE = "images"


@dataclass(frozen=True)
class PlannedTask:
    """One model call the study needs: which rule asked, which model, which instances per role."""

    rule: str
    name: str
    model: ModelName
    inputs: Mapping[str, tuple[str, ...]]
    prompts: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    window: str | None = None
    parameters: Mapping[str, str | float | int | bool] = field(default_factory=dict)
    routes: Mapping[str, str] = field(default_factory=dict)
    default_route: str | None = None
    result_destinations: tuple[str, ...] = ()
    priority: int = 0
    label_texts: tuple[str, ...] = ()  # what the model embeds per label (empty: the labels)

    @property
    def instance_uids(self) -> tuple[str, ...]:
        """Every selected SOP Instance UID once, roles in order."""
        seen: dict[str, None] = {}
        for uids in self.inputs.values():
            seen.update(dict.fromkeys(uids))
        return tuple(seen)


@dataclass(frozen=True)
class PlannedForward:
    """Forward the originals of these instances to one destination (modality forwarding)."""

    rule: str
    destination: str
    instance_uids: tuple[str, ...]


@dataclass(frozen=True)
class ExpectationStatus:
    """A rule's expected content and whether the study holds it now."""

    rule: str
    satisfied: bool
    missing: tuple[str, ...]
    max_wait_s: float
    on_timeout: str


@dataclass(frozen=True)
class StudyPlan:
    """What the rules say to do with one study."""

    study_uid: str
    matched: tuple[str, ...] = ()
    tasks: tuple[PlannedTask, ...] = ()
    forwards: tuple[PlannedForward, ...] = ()
    result_destinations: tuple[str, ...] = ()
    discard: bool = False
    priority: int = 0
    quiet_period_s: float | None = None
    expectations: tuple[ExpectationStatus, ...] = ()

    @property
    def ready_by_content(self) -> bool:
        """True when every matched rule's expected content is present (or none is expected)."""
        return all(e.satisfied for e in self.expectations)

    @property
    def has_work(self) -> bool:
        return not self.discard and bool(self.tasks or self.forwards)


FactsBySop = Mapping[str, AssociationFacts]
"""Association facts per SOP Instance UID (each instance's own sender)."""


def plan_study(
    rules: RuleSet,
    instances_headers: Sequence[Headers],
    association_facts: AssociationFacts | FactsBySop | None = None,
) -> StudyPlan:
    """Evaluate the rules over one study's instances; see the module docstring for semantics.

    ``association_facts`` is one set of facts for every instance, or facts per SOP Instance UID
    (an instance missing from the mapping has no facts).
    """
    study_uid = next(
        (str(h["StudyInstanceUID"]) for h in instances_headers if h.get("StudyInstanceUID")), ""
    )
    facts = _FactsOf(association_facts)
    builder = _PlanBuilder(study_uid, rules.label_template)
    for rule in rules.ordered():
        matched = [h for h in instances_headers if rule.match.matches(h, facts(h))]
        if not matched:
            continue
        builder.add(rule, matched, instances_headers, facts)
        if rule.on_match == "stop":
            break
    return builder.build()


class _FactsOf:
    """The association facts of one instance (by its headers' SOP Instance UID)."""

    def __init__(self, given: AssociationFacts | FactsBySop | None) -> None:
        self.given = given

    def __call__(self, headers: Headers) -> AssociationFacts | None:
        if self.given is None or isinstance(self.given, AssociationFacts):
            return self.given
        return self.given.get(str(headers.get("SOPInstanceUID", "")))


class _PlanBuilder:
    """Collects what each matched rule contributes to the plan."""

    def __init__(self, study_uid: str, label_template: str) -> None:
        self.study_uid = study_uid
        self.label_template = label_template
        self.matched: list[str] = []
        self.tasks: list[PlannedTask] = []
        self.forwards: list[PlannedForward] = []
        self.results: dict[str, None] = {}
        self.discard = False
        self.priority: int | None = None
        self.quiet: float | None = None
        self.expectations: list[ExpectationStatus] = []

    def add(
        self,
        rule: Rule,
        matched: Sequence[Headers],
        everything: Sequence[Headers],
        facts: _FactsOf,
    ) -> None:
        self.matched.append(rule.name)
        self.priority = (
            rule.priority if self.priority is None else max(self.priority, rule.priority)
        )
        if rule.quiet_period_s is not None:
            self.quiet = max(self.quiet or 0.0, rule.quiet_period_s)
        if rule.expect is not None:
            missing = tuple(
                c.describe()
                for c in rule.expect.conditions
                if not any(c.matches(h, facts(h)) for h in everything)
            )
            self.expectations.append(
                ExpectationStatus(
                    rule.name, not missing, missing, rule.expect.max_wait_s, rule.expect.on_timeout
                )
            )
        if rule.discard:
            self.discard = True
            return
        self.results.update(dict.fromkeys(rule.results_to))
        uids = _uids(matched)
        self.forwards += [PlannedForward(rule.name, d, uids) for d in rule.forward_to]
        for task in rule.tasks:
            if task.inputs is None:
                inputs = {DEFAULT_ROLE: uids}
            else:
                inputs = {
                    role: _uids(h for h in matched if condition.matches(h, facts(h)))
                    for role, condition in task.inputs.items()
                }
            # An adapter task is a MedImageInsight task (its client, egress policy and breaker)
            # whose parameters name the adapter that classifies the embedding.
            model: ModelName = "medimageinsight" if task.model == "adapter" else task.model
            parameters = dict(task.parameters)
            if task.adapter is not None:
                parameters["adapter"] = task.adapter
            parameters |= _action_parameters(task)
            self.tasks.append(
                PlannedTask(
                    rule=rule.name,
                    name=task.task_name,
                    model=model,
                    inputs=inputs,
                    prompts=tuple(task.prompts),
                    labels=tuple(task.label_names),
                    label_texts=_texts(task, self.label_template),
                    window=task.window,
                    parameters=parameters,
                    routes=dict(task.routes),
                    default_route=task.default_route,
                    result_destinations=tuple(rule.results_to),
                    priority=rule.priority,
                )
            )

    def build(self) -> StudyPlan:
        return StudyPlan(
            study_uid=self.study_uid,
            matched=tuple(self.matched),
            tasks=() if self.discard else tuple(self.tasks),
            forwards=() if self.discard else tuple(self.forwards),
            result_destinations=() if self.discard else tuple(self.results),
            discard=self.discard,
            priority=self.priority or 0,
            quiet_period_s=self.quiet,
            expectations=tuple(self.expectations),
        )


def _texts(task: ModelTask, template: str) -> tuple[str, ...]:
    """The model's texts of a task's labels; empty when they are the labels themselves."""
    texts = tuple(task.label_texts(template))
    return () if texts == tuple(task.label_names) else texts


def _action_parameters(task: ModelTask) -> dict[str, str | float | int | bool]:
    """A task's actions on its output as job parameters (listener.infer.actions reads them)."""
    out: dict[str, str | float | int | bool] = {}
    review = task.flag_for_review
    if review is not None:
        out["review_above"] = review.above
        out |= {"review_label": review.label} if review.label else {}
        out |= {"review_destination": review.forward_to} if review.forward_to else {}
        out |= {"review_priority": review.raise_priority} if review.raise_priority else {}
    if task.ood is not None:
        out["ood_threshold"] = task.ood.above
        out |= {"ood_destination": task.ood.forward_to} if task.ood.forward_to else {}
    return out


def _uids(headers: Iterable[Headers]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(h.get("SOPInstanceUID", "")) for h in headers))


def headers_from_dataset(ds: Dataset) -> dict[str, Any]:
    """An instance's top-level attributes by keyword, as plain values (sequences and bulk left out).

    This is what rules see: text values as ``str``, numbers as numbers, multi-valued attributes
    as lists. Private and unknown tags have no keyword and are left out.
    """
    headers: dict[str, Any] = {}
    for element in ds:
        keyword = element.keyword
        if not keyword or element.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            continue
        value = element.value
        if value is None or value == "":
            headers[keyword] = ""
        elif element.VM > 1:
            headers[keyword] = [_plain(v) for v in value]
        else:
            headers[keyword] = _plain(value)
    return headers


def _plain(value: Any) -> Any:
    # pydicom's DSfloat, IS, PersonName and UID subclass builtins; plain copies serialise cleanly.
    for kind in (float, int, str):
        if isinstance(value, kind):
            return kind(value)
    return str(value)


def task_payload(task: PlannedTask) -> dict[str, Any]:
    """A planned task as JSON-ready data (the job payload)."""
    return {
        "rule": task.rule,
        "name": task.name,
        "model": task.model,
        "inputs": {role: list(uids) for role, uids in task.inputs.items()},
        "prompts": list(task.prompts),
        "labels": list(task.labels),
        "window": task.window,
        "parameters": dict(task.parameters),
        "routes": dict(task.routes),
        "default_route": task.default_route,
        "result_destinations": list(task.result_destinations),
        "priority": task.priority,
        "label_texts": list(task.label_texts),
    }


def task_from_payload(payload: dict[str, Any]) -> PlannedTask:
    """The inverse of :func:`task_payload`."""
    return PlannedTask(
        rule=payload["rule"],
        name=payload["name"],
        model=payload["model"],
        inputs={role: tuple(uids) for role, uids in payload["inputs"].items()},
        prompts=tuple(payload.get("prompts", ())),
        labels=tuple(payload.get("labels", ())),
        window=payload.get("window"),
        parameters=dict(payload.get("parameters", {})),
        routes=dict(payload.get("routes", {})),
        default_route=payload.get("default_route"),
        result_destinations=tuple(payload.get("result_destinations", ())),
        priority=int(payload.get("priority", 0)),
        label_texts=tuple(payload.get("label_texts", ())),
    )
