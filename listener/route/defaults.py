"""The embedded default rules, used when no rules file is configured.

- Chest CR/DX: CXRReportGen (frontal PA/AP, lateral LL/RL/LATERAL) and a MedImageInsight
  classification.
- CT and MR: MedImageParse with prompts chosen by BodyPartExamined (PS3.16 CID 4031 terms as
  modalities write them): abdomen, chest, head/brain, otherwise a generic set.
- Any other image: MedImageInsight classification.

Results go back to the destination named ``pacs`` when one is configured. ``config/rules.yaml``
spells out the same rules (a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from listener.route.model import RuleSet
from listener.settings import Destination

PACS = "pacs"
CHEST_LABELS = [
    "no finding",
    "pleural effusion",
    "pneumothorax",
    "cardiomegaly",
    "consolidation",
    "atelectasis",
    "pulmonary edema",
    "support devices",
]
GENERAL_LABELS = [
    "chest x-ray",
    "chest CT",
    "abdominal CT",
    "head CT",
    "brain MRI",
    "spine MRI",
    "knee MRI",
    "mammogram",
    "ultrasound",
    "extremity x-ray",
]
# Non-image objects and results that no model should see.
NOT_IMAGES = ["SR", "SEG", "PR", "KO", "DOC", "REG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD"]
# View Position values of a frontal chest image (PS3.3 C.8.11.5.1.1).
FRONTAL_VIEWS = ("PA", "AP")
LATERAL = ["LL", "RL", "LATERAL"]

# (rule name, body parts, prompts, CT window preset)
_PARSE_RULES: list[tuple[str, list[str], list[str], str | None]] = [
    (
        "ct-mr-abdomen",
        ["ABDOMEN", "ABDOMENPELVIS", "ABDOMEN_PELVIS"],
        ["liver", "kidney", "pancreas", "tumor"],
        "ct-abdomen",
    ),
    ("ct-mr-chest", ["CHEST", "THORAX"], ["lung", "tumor"], "ct-lung"),
    ("ct-mr-head", ["HEAD", "BRAIN", "SKULL"], ["brain", "tumor"], None),
]
GENERIC_PROMPTS = ["tumor", "other lesion"]


def _task(model: str, name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "model": model, **fields}


def _chest_rule(results: list[str]) -> dict[str, Any]:
    return {
        "name": "chest-xray",
        "priority": 30,
        "match": {
            "all": [
                {"attribute": "Modality", "one_of": ["CR", "DX"]},
                {
                    "attribute": "BodyPartExamined",
                    "one_of": ["CHEST", "THORAX"],
                    "ignore_case": True,
                },
            ]
        },
        "tasks": [
            _task(
                "cxrreportgen",
                "report",
                inputs={
                    "frontal": {
                        "any": [
                            {"attribute": "ViewPosition", "one_of": list(FRONTAL_VIEWS)},
                            {"attribute": "ViewPosition", "present": False},
                        ]
                    },
                    "lateral": {"attribute": "ViewPosition", "one_of": LATERAL},
                },
            ),
            _task("medimageinsight", "classify", labels=CHEST_LABELS),
        ],
        "results_to": results,
        "on_match": "stop",
    }


def _parse_rule(
    name: str, parts: list[str] | None, prompts: list[str], window: str | None, results: list[str]
) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = [{"attribute": "Modality", "one_of": ["CT", "MR"]}]
    if parts is not None:
        conditions.append({"attribute": "BodyPartExamined", "one_of": parts, "ignore_case": True})
    task = _task("medimageparse", "segment", prompts=prompts)
    if window is not None:
        task["window"] = window
    return {
        "name": name,
        "priority": 20 if parts is not None else 10,
        "match": {"all": conditions},
        "tasks": [task],
        "results_to": results,
        "on_match": "stop",
    }


def _other_rule(results: list[str]) -> dict[str, Any]:
    return {
        "name": "other-images",
        "priority": 0,
        "match": {
            "all": [
                {"attribute": "Rows", "present": True},
                {"not": {"attribute": "Modality", "one_of": NOT_IMAGES}},
            ]
        },
        "tasks": [_task("medimageinsight", "classify", labels=GENERAL_LABELS)],
        "results_to": results,
        "on_match": "stop",
    }


def default_rule_data(destinations: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The default rules as plain data (what a YAML file would hold)."""
    dests = dict(destinations or {})
    results = [PACS] if PACS in dests else []
    rules = [_chest_rule(results)]
    rules += [_parse_rule(n, parts, p, w, results) for n, parts, p, w in _PARSE_RULES]
    rules.append(_parse_rule("ct-mr-other", None, GENERIC_PROMPTS, None, results))
    rules.append(_other_rule(results))
    return {"destinations": dests, "rules": rules}


def default_rules(destinations: Mapping[str, Destination] | None = None) -> RuleSet:
    """The embedded default plan; results go to ``pacs`` when ``destinations`` has one."""
    data = default_rule_data({k: v.model_dump() for k, v in (destinations or {}).items()})
    return RuleSet.model_validate(data)
