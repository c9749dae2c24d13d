"""The routing rules file as pydantic models: destinations, rules and their actions.

A rule says which studies it applies to (``match``, evaluated per instance), how long to wait for
them (``quiet_period_s``, ``expect``), and what to do: model ``tasks``, ``forward_to``
destinations (modality forwarding of the originals), ``results_to`` destinations, or ``discard``.
A MedImageInsight task with ``labels`` and ``routes`` also forwards the study to the destination
mapped to its top label. A task with ``model: adapter`` and ``adapter: NAME`` classifies with a
trained adapter (:mod:`listener.infer.adapters`) on the study's MedImageInsight embedding, and
routes the same way by the adapter's label. Cross references (destination names) are checked
when the file loads, so a typo stops start-up instead of losing a study later.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from converters.intensity import CT_PRESETS
from listener.route.conditions import Condition
from listener.settings import Destination

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PROMPT_MODELS = ("medimageparse", "medimageparse3d")
_EMBEDDING_MODELS = ("medimageinsight", "adapter")
# The models a task names: the four hosted models, and ``adapter`` (MedImageInsight + an adapter).
TaskModel = Literal[
    "medimageinsight", "cxrreportgen", "medimageparse", "medimageparse3d", "adapter"
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def check_name(value: str) -> str:
    """Rule, task and destination names: letters, digits, ``_ . -``; up to 64 characters."""
    if not _NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a valid name (letters, digits, _ . -; up to 64)")
    return value


DEFAULT_LABEL_TEMPLATE = "{modality} {anatomy} {finding}"
_TEMPLATE_FIELDS = ("modality", "anatomy", "finding")


class LabelSpec(_Section):
    """A zero-shot label in the form MedImageInsight's model card recommends: the modality, the
    anatomy and the finding (e.g. ``x-ray``, ``chest``, ``pleural effusion``). The text the model
    embeds is the rules' ``label_template`` filled with them; the label results and routes name
    is the finding."""

    modality: str = Field(min_length=1)
    anatomy: str = Field(min_length=1)
    finding: str = Field(min_length=1)

    def text(self, template: str) -> str:
        return " ".join(template.format(**self.model_dump()).split())


class ReviewAction(_Section):
    """Flag a study for review when a label's probability is above a threshold.

    ``label`` defaults to the task's top label; the flag is kept (admin API and dashboard), and
    optionally the study is forwarded to ``forward_to`` and its waiting jobs' priority raised.
    """

    label: str | None = None
    above: float = Field(gt=0, lt=1)
    forward_to: str | None = None
    raise_priority: int = Field(default=0, ge=0, le=1000)


class OodAction(_Section):
    """Flag (and optionally forward) a study whose out-of-distribution score is above a
    threshold (:mod:`listener.store.embeddings`)."""

    above: float = Field(gt=0)
    forward_to: str | None = None


class ModelTask(_Section):
    """One model call over a selection of the rule's instances.

    ``inputs`` names image roles (e.g. ``frontal``, ``lateral``) with the condition an instance
    must meet to fill that role; without it the task gets every instance the rule matched, as the
    role ``images``.
    """

    name: str | None = Field(default=None, description="unique within the rule; default: model")
    model: TaskModel
    adapter: str | None = Field(default=None, description="adapter name (model: adapter)")
    inputs: dict[str, Condition] | None = None
    prompts: list[str] = Field(default_factory=list)
    labels: list[str | LabelSpec] = Field(default_factory=list)
    window: str | None = Field(default=None, description="CT window preset, e.g. ct-abdomen")
    parameters: dict[str, str | float | int | bool] = Field(default_factory=dict)
    routes: dict[str, str] = Field(default_factory=dict, description="label -> destination")
    default_route: str | None = Field(default=None, description="destination for other labels")
    flag_for_review: ReviewAction | None = None
    ood: OodAction | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value)

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None and value not in CT_PRESETS:
            raise ValueError(f"unknown window preset {value!r} (known: {', '.join(CT_PRESETS)})")
        return value

    @model_validator(mode="after")
    def _fits_model(self) -> ModelTask:
        if (self.model == "adapter") != (self.adapter is not None):
            raise ValueError("model: adapter and adapter: NAME go together")
        if self.model == "adapter" and self.labels:
            raise ValueError("an adapter brings its own labels; leave labels out")
        if self.prompts and self.model not in _PROMPT_MODELS:
            raise ValueError(f"prompts apply to medimageparse(3d), not {self.model}")
        if self.model in _PROMPT_MODELS and not self.prompts:
            raise ValueError(f"{self.model} needs prompts")
        if self.labels and self.model != "medimageinsight":
            raise ValueError(f"labels apply to medimageinsight, not {self.model}")
        if (self.flag_for_review or self.ood) and self.model not in _EMBEDDING_MODELS:
            raise ValueError("flag_for_review and ood apply to medimageinsight and adapter tasks")
        review = self.flag_for_review
        if review and review.label and self.labels and review.label not in self.label_names:
            raise ValueError(f"flag_for_review.label {review.label!r} is not in labels")
        if self.model == "adapter":
            return self  # route labels are the adapter's, known when it loads
        if (self.routes or self.default_route) and not self.labels:
            raise ValueError("routes need labels to classify with")
        names = self.label_names
        if len(set(names)) != len(names):
            raise ValueError("labels must be distinct (a structured label is named by its finding)")
        unknown = sorted(set(self.routes) - set(names))
        if unknown:
            raise ValueError(f"routes name labels that are not in labels: {', '.join(unknown)}")
        return self

    @property
    def task_name(self) -> str:
        return self.name or self.model

    @property
    def label_names(self) -> list[str]:
        """The labels as results and routes name them (a structured label: its finding)."""
        return [label if isinstance(label, str) else label.finding for label in self.labels]

    def label_texts(self, template: str) -> list[str]:
        """The texts the model embeds: plain labels as written, structured ones templated."""
        return [label if isinstance(label, str) else label.text(template) for label in self.labels]


class Expectation(_Section):
    """Expected content: each condition needs at least one matching instance.

    Until all are met (or ``max_wait_s`` runs out) the study is not ready, even after its quiet
    period. ``on_timeout`` says what happens then: ``process`` what is there, or ``discard``.
    """

    conditions: list[Condition] = Field(min_length=1)
    max_wait_s: float = Field(default=600.0, gt=0, le=7 * 86400)
    on_timeout: Literal["process", "discard"] = "process"


class Rule(_Section):
    """One routing rule; see the module docstring."""

    name: str
    priority: int = Field(default=0, description="higher is evaluated (and scheduled) first")
    match: Condition
    quiet_period_s: float | None = Field(default=None, gt=0, le=86400)
    expect: Expectation | None = None
    tasks: list[ModelTask] = Field(default_factory=list)
    forward_to: list[str] = Field(default_factory=list)
    results_to: list[str] = Field(default_factory=list)
    discard: bool = False
    on_match: Literal["continue", "stop"] = "continue"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @model_validator(mode="after")
    def _actions(self) -> Rule:
        if self.discard and (self.tasks or self.forward_to or self.results_to):
            raise ValueError("a discard rule has no tasks, forward_to or results_to")
        if not self.discard and not (self.tasks or self.forward_to):
            raise ValueError("a rule needs tasks, forward_to or discard: true")
        names = [task.task_name for task in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique in a rule: {', '.join(duplicates)}")
        return self


class RuleSet(_Section):
    """The whole rules file: destinations by name and the rules."""

    destinations: dict[str, Destination] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    label_template: str = Field(
        default=DEFAULT_LABEL_TEMPLATE,
        description="text of a structured zero-shot label: {modality}, {anatomy}, {finding}",
    )

    @field_validator("label_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(**dict.fromkeys(_TEMPLATE_FIELDS, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"label_template may use only {{modality}}, {{anatomy}}, {{finding}} ({exc})"
            ) from None
        return value

    @field_validator("destinations")
    @classmethod
    def _destination_names(cls, value: dict[str, Destination]) -> dict[str, Destination]:
        for name in value:
            check_name(name)
        return value

    @model_validator(mode="after")
    def _references(self) -> RuleSet:
        problems = reference_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def ordered(self) -> list[Rule]:
        """Rules in evaluation order: priority descending, then file order."""
        return sorted(self.rules, key=lambda rule: -rule.priority)


def reference_problems(ruleset: RuleSet) -> list[str]:
    """Messages for duplicate rule names and unknown destination names, naming rule and field."""
    problems: list[str] = []
    seen: set[str] = set()
    known = ", ".join(sorted(ruleset.destinations)) or "none defined"
    for rule in ruleset.rules:
        if rule.name in seen:
            problems.append(f"rule {rule.name!r} field name: duplicate rule name")
        seen.add(rule.name)
        refs = [(f"forward_to[{i}]", d) for i, d in enumerate(rule.forward_to)]
        refs += [(f"results_to[{i}]", d) for i, d in enumerate(rule.results_to)]
        for t, task in enumerate(rule.tasks):
            refs += [(f"tasks[{t}].routes.{label}", d) for label, d in task.routes.items()]
            if task.default_route is not None:
                refs.append((f"tasks[{t}].default_route", task.default_route))
            if task.flag_for_review and task.flag_for_review.forward_to is not None:
                refs.append(
                    (f"tasks[{t}].flag_for_review.forward_to", task.flag_for_review.forward_to)
                )
            if task.ood and task.ood.forward_to is not None:
                refs.append((f"tasks[{t}].ood.forward_to", task.ood.forward_to))
            legacy = task.parameters.get("ood_destination")  # the older spelling of ood
            if isinstance(legacy, str) and legacy:
                refs.append((f"tasks[{t}].parameters.ood_destination", legacy))
        for field, dest in refs:
            if dest not in ruleset.destinations:
                problems.append(
                    f"rule {rule.name!r} field {field}: unknown destination {dest!r} "
                    f"(known: {known})"
                )
    return problems


def rules_fingerprint(rules: RuleSet) -> str:
    """A stable hash of validated rules (destinations included): equal rules, equal hash."""
    return hashlib.sha256(rules.model_dump_json().encode()).hexdigest()
