"""Routing rules: condition matching, loading with precise errors, and plan_study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from factory import ct_series
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file

from listener.errors import ConfigError
from listener.route import (
    AssociationFacts,
    Condition,
    Destination,
    RuleSet,
    default_rules,
    load_rules,
    parse_rules,
)
from listener.route.plan import headers_from_dataset, plan_study, task_from_payload, task_payload

ROOT = Path(__file__).resolve().parents[2]


def cond(data: dict[str, Any]) -> Condition:
    """A condition validated from its YAML form."""
    return Condition.model_validate(data)


# --- condition table -------------------------------------------------------------------------

CR = {"Modality": "CR", "BodyPartExamined": "CHEST ", "ViewPosition": "PA", "Rows": 1955}
CT = {
    "Modality": "CT",
    "BodyPartExamined": "ABDOMEN",
    "SliceThickness": 1.25,
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "ContrastBolusAgent": "",
}

TABLE: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    ({"attribute": "Modality", "equals": "CR"}, CR, True),
    ({"attribute": "Modality", "equals": "cr"}, CR, False),
    ({"attribute": "Modality", "equals": "cr", "ignore_case": True}, CR, True),
    ({"attribute": "BodyPartExamined", "equals": "CHEST"}, CR, True),  # padding ignored
    ({"attribute": "Modality", "one_of": ["CR", "DX"]}, CR, True),
    ({"attribute": "Modality", "one_of": ["CR", "DX"]}, CT, False),
    ({"attribute": "ViewPosition", "regex": "^(PA|AP)$"}, CR, True),
    ({"attribute": "ViewPosition", "regex": "^L"}, CR, False),
    ({"attribute": "ViewPosition", "regex": "pa", "ignore_case": True}, CR, True),
    ({"attribute": "SliceThickness", "range": {"min": 0.5, "max": 3}}, CT, True),
    ({"attribute": "SliceThickness", "range": {"min": 2}}, CT, False),
    ({"attribute": "SliceThickness", "range": {"max": 1.25}}, CT, True),  # inclusive
    ({"attribute": "Modality", "range": {"min": 0}}, CT, False),  # not a number
    ({"attribute": "Rows", "equals": 1955}, CR, True),
    ({"attribute": "Rows", "present": True}, CR, True),
    ({"attribute": "Rows", "present": True}, CT, False),
    ({"attribute": "ContrastBolusAgent", "present": False}, CT, True),  # empty counts as absent
    ({"attribute": "ImageType", "equals": "AXIAL"}, CT, True),  # any value of a multi-value
    ({"attribute": "ImageType", "equals": "LOCALIZER"}, CT, False),
    ({"not": {"attribute": "ImageType", "equals": "LOCALIZER"}}, CT, True),
    (
        {
            "all": [
                {"attribute": "Modality", "equals": "CT"},
                {"attribute": "Rows", "present": True},
            ]
        },
        CT,
        False,
    ),
    (
        {
            "any": [
                {"attribute": "Modality", "equals": "MR"},
                {"attribute": "Modality", "equals": "CT"},
            ]
        },
        CT,
        True,
    ),
]


@pytest.mark.parametrize(("data", "headers", "expected"), TABLE)
def test_condition_table(data: dict[str, Any], headers: dict[str, Any], expected: bool) -> None:
    """Each attribute test, combinator and value convention gives the documented result."""
    assert cond(data).matches(headers) is expected


FACTS = AssociationFacts(calling_ae="CT_SCANNER1", called_ae="PACSAI", peer_address="10.20.3.4")
ASSOC_TABLE: list[tuple[dict[str, Any], AssociationFacts | None, bool]] = [
    ({"association": "calling_ae", "equals": "CT_SCANNER1"}, FACTS, True),
    ({"association": "calling_ae", "one_of": ["MR1", "MR2"]}, FACTS, False),
    ({"association": "called_ae", "regex": "^PACSAI"}, FACTS, True),
    ({"association": "peer", "networks": ["10.20.0.0/16"]}, FACTS, True),
    ({"association": "peer", "networks": ["10.21.0.0/16", "192.168.1.7"]}, FACTS, False),
    ({"association": "peer", "networks": ["10.20.3.4"]}, FACTS, True),
    ({"association": "peer", "equals": "10.20.3.4"}, FACTS, True),
    ({"association": "calling_ae", "equals": "CT_SCANNER1"}, None, False),  # facts unknown
    ({"association": "calling_ae", "present": False}, None, True),
    ({"association": "peer", "networks": ["::1/128"]}, AssociationFacts(peer_address="::1"), True),
]


@pytest.mark.parametrize(("data", "facts", "expected"), ASSOC_TABLE)
def test_association_conditions(
    data: dict[str, Any], facts: AssociationFacts | None, expected: bool
) -> None:
    """Calling AE, called AE and peer address (CIDR networks included) are matched."""
    assert cond(data).matches({}, facts) is expected


# --- properties ------------------------------------------------------------------------------

KEYWORDS = ["Modality", "BodyPartExamined", "ViewPosition", "SliceThickness"]
TEXTS = ["CR", "CT", "PA", "LL", "CHEST", "cr", ""]
value_st = st.one_of(
    st.sampled_from(TEXTS),
    st.integers(-5, 5),
    st.lists(st.sampled_from(TEXTS), min_size=1, max_size=3),
)
headers_st = st.dictionaries(st.sampled_from(KEYWORDS), value_st, max_size=4)
test_st = st.one_of(
    st.builds(lambda v: {"equals": v}, st.sampled_from(TEXTS[:-1])),
    st.builds(lambda v: {"one_of": v}, st.lists(st.sampled_from(TEXTS[:-1]), min_size=1)),
    st.builds(lambda v: {"regex": v}, st.sampled_from(["^C", "A$", "L+", "."])),
    st.builds(
        lambda a, b: {"range": {"min": min(a, b), "max": max(a, b)}},
        st.integers(-5, 5),
        st.integers(-5, 5),
    ),
    st.builds(lambda v: {"present": v}, st.booleans()),
)
leaf_st = st.builds(
    lambda k, t, ic: {"attribute": k, **t, "ignore_case": ic},
    st.sampled_from(KEYWORDS),
    test_st,
    st.booleans(),
)
condition_st = st.recursive(
    leaf_st,
    lambda inner: st.one_of(
        st.builds(lambda c: {"not": c}, inner),
        st.builds(lambda cs: {"all": cs}, st.lists(inner, max_size=3)),
        st.builds(lambda cs: {"any": cs}, st.lists(inner, max_size=3)),
    ),
    max_leaves=6,
)


@settings(deadline=None)
@given(condition_st, headers_st)
def test_not_is_the_negation(data: dict[str, Any], headers: dict[str, Any]) -> None:
    """not(x) matches exactly when x does not."""
    assert cond({"not": data}).matches(headers) is not cond(data).matches(headers)


@settings(deadline=None)
@given(st.lists(condition_st, max_size=4), headers_st)
def test_all_and_any_are_conjunction_and_disjunction(
    items: list[dict[str, Any]], headers: dict[str, Any]
) -> None:
    """all([...]) is the conjunction and any([...]) the disjunction of the parts."""
    parts = [cond(c).matches(headers) for c in items]
    assert cond({"all": items}).matches(headers) is all(parts)
    assert cond({"any": items}).matches(headers) is any(parts)


@settings(deadline=None)
@given(st.sampled_from(KEYWORDS), st.lists(st.sampled_from(TEXTS[:-1]), min_size=1), headers_st)
def test_one_of_is_any_of_equals(keyword: str, values: list[str], headers: dict[str, Any]) -> None:
    """one_of [a, b] matches when equals a or equals b does."""
    equals = [cond({"attribute": keyword, "equals": v}).matches(headers) for v in values]
    assert cond({"attribute": keyword, "one_of": values}).matches(headers) is any(equals)


@settings(deadline=None)
@given(st.sampled_from(KEYWORDS), headers_st)
def test_present_splits_every_header_set(keyword: str, headers: dict[str, Any]) -> None:
    """present: true and present: false never both match, and one of them always does."""
    yes = cond({"attribute": keyword, "present": True}).matches(headers)
    no = cond({"attribute": keyword, "present": False}).matches(headers)
    assert yes is not no


@settings(deadline=None)
@given(st.floats(-1e6, 1e6), st.floats(0, 1e3))
def test_range_contains_its_centre(centre: float, half: float) -> None:
    """A value between min and max (inclusive) is in the range, and one beyond max is not."""
    rng = {"min": centre - half, "max": centre + half}
    assert cond({"attribute": "SliceThickness", "range": rng}).matches({"SliceThickness": centre})
    beyond = {"SliceThickness": centre + half + 1}
    assert not cond({"attribute": "SliceThickness", "range": rng}).matches(beyond)


# --- loading and error messages --------------------------------------------------------------

VALID = """
destinations:
  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
rules:
  - name: chest-xray
    match:
      all:
        - {attribute: Modality, one_of: [CR, DX]}
        - {attribute: ViewPosition, regex: "^(PA|AP)$"}
    tasks: [{model: cxrreportgen}]
    results_to: [pacs]
"""

BAD: list[tuple[str, str, str]] = [
    (
        'regex: "^(PA|AP)$"',
        'regex: "^(PA"',
        "rule 'chest-xray' field match.all[1].regex: invalid regular expression",
    ),
    (
        "attribute: Modality,",
        "attribute: Modalty,",
        "rule 'chest-xray' field match.all[0].attribute: unknown DICOM keyword 'Modalty'",
    ),
    ("model: cxrreportgen", "model: gpt", "rule 'chest-xray' field tasks[0].model:"),
    (
        "results_to: [pacs]",
        "results_to: [archive]",
        "rule 'chest-xray' field results_to[0]: unknown destination 'archive'",
    ),
    ("port: 4242", "port: 70000", "destination 'pacs' field port:"),
    (
        "one_of: [CR, DX]",
        "one_of: [CR, DX], equals: CR",
        "rule 'chest-xray' field match.all[0]: give exactly one test",
    ),
    (
        "    tasks: [{model: cxrreportgen}]\n",
        "",
        "rule 'chest-xray': a rule needs tasks, forward_to or discard",
    ),
    (
        "tasks: [{model: cxrreportgen}]",
        "tasks: [{model: medimageparse}]",
        "rule 'chest-xray' field tasks[0]: medimageparse needs prompts",
    ),
    (
        "tasks: [{model: cxrreportgen}]",
        "tasks: [{model: medimageparse, prompts: [liver], window: ct-foot}]",
        "field tasks[0].window: unknown window preset 'ct-foot'",
    ),
    (
        "tasks: [{model: cxrreportgen}]",
        "tasks: [{model: medimageinsight, labels: [a], routes: {b: pacs}}]",
        "field tasks[0]: routes name labels that are not in labels: b",
    ),
    ("name: chest-xray", "name: chest xray", "rule 'chest xray' field name:"),
]


def test_valid_rules_load() -> None:
    """A valid file loads into rules and destinations."""
    ruleset = parse_rules(VALID)
    assert [r.name for r in ruleset.rules] == ["chest-xray"]
    assert ruleset.destinations["pacs"].port == 4242


@pytest.mark.parametrize(("old", "new", "message"), BAD)
def test_invalid_rules_name_the_rule_and_field(old: str, new: str, message: str) -> None:
    """Each mistake raises ConfigError naming the file, the rule (or destination) and the field."""
    assert old in VALID
    with pytest.raises(ConfigError) as caught:
        parse_rules(VALID.replace(old, new), source="rules.yaml")
    assert str(caught.value).startswith("rules.yaml: ")
    assert message in str(caught.value)


def test_load_rules_names_the_file(tmp_path: Path) -> None:
    """load_rules reports YAML syntax errors and missing files with the path."""
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules: [\n")
    with pytest.raises(ConfigError, match=r"rules\.yaml: not valid YAML"):
        load_rules(bad)
    with pytest.raises(ConfigError, match="cannot read the rules file"):
        load_rules(tmp_path / "missing.yaml")


def test_example_file_holds_the_default_rules() -> None:
    """config/rules.yaml is valid and spells out exactly the embedded default rules."""
    ruleset = load_rules(ROOT / "config" / "rules.yaml")
    by_name = {rule.name: rule for rule in ruleset.rules}
    defaults = default_rules(ruleset.destinations)
    for rule in defaults.rules:
        assert by_name[rule.name] == rule
    assert len(ruleset.rules) > len(defaults.rules)
    assert any(r.forward_to and not r.tasks for r in ruleset.rules)
    assert any(t.routes for r in ruleset.rules for t in r.tasks)


# --- plan_study ------------------------------------------------------------------------------


def chest_headers() -> list[dict[str, Any]]:
    """Headers of a frontal and a lateral chest image."""
    path = get_testdata_file("RG1_UNCR.dcm")
    assert path is not None
    frontal = headers_from_dataset(dcmread(path, stop_before_pixels=True))
    lateral = dict(frontal, SOPInstanceUID=frontal["SOPInstanceUID"] + ".2", ViewPosition="LL")
    return [frontal, lateral]


def ct_headers(n: int = 4) -> list[dict[str, Any]]:
    """Headers of an ``n``-slice CT series."""
    return [headers_from_dataset(ds) for ds in ct_series(n)]


PACS = {"pacs": Destination(ae_title="ORTHANC", host="127.0.0.1", port=4242)}


def test_default_plan_for_a_chest_xray() -> None:
    """A chest CR gets CXRReportGen with frontal and lateral roles plus a classification."""
    headers = chest_headers()
    plan = plan_study(default_rules(PACS), headers)
    assert plan.matched == ("chest-xray",)
    report, classify = plan.tasks
    assert report.model == "cxrreportgen"
    assert report.inputs["frontal"] == (headers[0]["SOPInstanceUID"],)
    assert report.inputs["lateral"] == (headers[1]["SOPInstanceUID"],)
    assert classify.model == "medimageinsight" and classify.labels
    assert plan.result_destinations == ("pacs",)


def test_default_plan_for_a_ct_uses_body_part_prompts() -> None:
    """A CT of the abdomen gets MedImageParse with the abdominal prompts over every slice."""
    headers = ct_headers()
    plan = plan_study(default_rules(), [dict(h, BodyPartExamined="ABDOMEN") for h in headers])
    (task,) = plan.tasks
    assert task.model == "medimageparse"
    assert task.prompts == ("liver", "kidney", "pancreas", "tumor")
    assert len(task.instance_uids) == len(headers)
    assert plan.result_destinations == ()  # no "pacs" destination configured
    other = plan_study(default_rules(), [dict(h, BodyPartExamined="KNEE") for h in headers])
    assert other.matched == ("ct-mr-other",)


def test_default_plan_for_other_images_and_non_images() -> None:
    """Other images get a classification; a structured report matches no rule."""
    us = [{"SOPInstanceUID": "1", "Modality": "US", "Rows": 480}]
    assert plan_study(default_rules(), us).tasks[0].model == "medimageinsight"
    sr = [{"SOPInstanceUID": "2", "Modality": "SR"}]
    plan = plan_study(default_rules(), sr)
    assert plan.matched == () and not plan.has_work


RULES = """
destinations:
  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
  archive: {ae_title: ARCHIVE, host: 127.0.0.1, port: 4243}
rules:
  - name: forward-from-scanner
    priority: 100
    match: {association: calling_ae, equals: CT1}
    forward_to: [archive]
  - name: ct
    priority: 10
    quiet_period_s: 30
    match: {attribute: Modality, equals: CT}
    tasks: [{model: medimageparse, prompts: [liver]}]
    results_to: [pacs]
    on_match: stop
  - name: late
    priority: 5
    quiet_period_s: 90
    match: {attribute: Modality, equals: CT}
    forward_to: [pacs]
  - name: drop-tests
    priority: 200
    match: {attribute: PatientID, equals: ZZTEST}
    discard: true
  - name: chest
    match: {attribute: Modality, equals: CR}
    expect:
      conditions:
        - {attribute: ViewPosition, equals: PA}
        - {attribute: ViewPosition, equals: LL}
      max_wait_s: 120
      on_timeout: discard
    tasks: [{model: cxrreportgen}]
"""


def test_continue_and_stop_and_priority() -> None:
    """Rules run by priority; continue goes on, stop ends, and association facts count."""
    ruleset = parse_rules(RULES)
    headers = ct_headers(3)
    plan = plan_study(ruleset, headers, AssociationFacts(calling_ae="CT1"))
    assert plan.matched == ("forward-from-scanner", "ct")  # "late" is after a stop
    assert plan.priority == 100
    assert plan.quiet_period_s == 30
    (forward,) = plan.forwards
    assert forward.destination == "archive" and len(forward.instance_uids) == 3
    assert plan.tasks[0].result_destinations == ("pacs",)
    other_sender = plan_study(ruleset, headers, AssociationFacts(calling_ae="CT2"))
    assert other_sender.matched == ("ct",) and other_sender.forwards == ()


def test_discard_drops_everything() -> None:
    """A matched discard rule leaves no tasks and no forwards."""
    headers = [dict(h, PatientID="ZZTEST") for h in ct_headers(2)]
    plan = plan_study(parse_rules(RULES), headers, AssociationFacts(calling_ae="CT1"))
    assert plan.discard and plan.tasks == () and plan.forwards == () and not plan.has_work


def test_rule_acts_on_matched_instances_only() -> None:
    """A study matches when one instance does; tasks get only the instances that matched."""
    headers = [*ct_headers(2), {"SOPInstanceUID": "9.9", "Modality": "SR"}]
    plan = plan_study(parse_rules(RULES), headers)
    assert "9.9" not in plan.tasks[0].instance_uids
    assert len(plan.tasks[0].instance_uids) == 2


def test_expected_content() -> None:
    """Expected content is reported missing until each condition has an instance."""
    ruleset = parse_rules(RULES)
    frontal, lateral = chest_headers()
    partial = plan_study(ruleset, [frontal])
    (status,) = partial.expectations
    assert not status.satisfied and not partial.ready_by_content
    assert status.missing == ("ViewPosition equals LL",)
    assert (status.max_wait_s, status.on_timeout) == (120, "discard")
    assert plan_study(ruleset, [frontal, lateral]).ready_by_content


def test_plan_is_pure() -> None:
    """The same inputs give the same plan, and the headers are not modified."""
    ruleset: RuleSet = default_rules(PACS)
    headers = chest_headers()
    before = [dict(h) for h in headers]
    assert plan_study(ruleset, headers) == plan_study(ruleset, headers)
    assert headers == before


STRUCTURED = """
rules:
  - name: chest
    match: {attribute: Modality, equals: CR}
    tasks:
      - model: medimageinsight
        labels:
          - {modality: x-ray, anatomy: chest, finding: pleural effusion}
          - {modality: x-ray, anatomy: chest, finding: no finding}
          - cardiomegaly
        routes: {pleural effusion: qa}
destinations:
  qa: {ae_title: QA, host: 127.0.0.1, port: 11112}
"""


def test_structured_labels_are_named_by_finding_and_sent_templated() -> None:
    """A label given as modality, anatomy and finding is named by its finding (results, routes)
    and embedded as the filled template; plain labels stay as written."""
    (task,) = plan_study(parse_rules(STRUCTURED), [{"Modality": "CR"}]).tasks
    assert task.labels == ("pleural effusion", "no finding", "cardiomegaly")
    assert task.label_texts == (
        "x-ray chest pleural effusion",
        "x-ray chest no finding",
        "cardiomegaly",
    )
    assert task_from_payload(task_payload(task)).label_texts == task.label_texts
    custom = parse_rules("label_template: '{anatomy} {modality} showing {finding}'\n" + STRUCTURED)
    (task,) = plan_study(custom, [{"Modality": "CR"}]).tasks
    assert task.label_texts[0] == "chest x-ray showing pleural effusion"


def test_label_template_and_findings_are_checked_at_load() -> None:
    """A template naming an unknown field, or two labels with one finding, stop loading."""
    with pytest.raises(ConfigError, match="label_template may use only"):
        parse_rules("label_template: '{organ} {finding}'\n" + STRUCTURED)
    with pytest.raises(ConfigError, match="labels must be distinct"):
        parse_rules(STRUCTURED.replace("finding: no finding", "finding: pleural effusion"))
