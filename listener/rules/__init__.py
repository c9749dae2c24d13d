"""Routing rules: conditions and rule models (data), the loader, and the embedded defaults.

The evaluation over a study is :func:`listener.route.plan_study`.
"""

from listener.rules.conditions import AssociationFacts, Condition, Headers, NumericRange
from listener.rules.defaults import default_rules
from listener.rules.load import load_rules, parse_rules
from listener.rules.model import (
    WINDOW_PRESETS,
    Expectation,
    ModelTask,
    Rule,
    RuleSet,
)
from listener.settings import Destination

__all__ = [
    "WINDOW_PRESETS",
    "AssociationFacts",
    "Condition",
    "Destination",
    "Expectation",
    "Headers",
    "ModelTask",
    "NumericRange",
    "Rule",
    "RuleSet",
    "default_rules",
    "load_rules",
    "parse_rules",
]
