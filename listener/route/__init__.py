"""Routing rules: conditions and rule models (data), the loader, and the embedded defaults.

The evaluation over a study is :func:`listener.route.plan.plan_study`.
"""

from listener.route.conditions import AssociationFacts, Condition, Headers, NumericRange
from listener.route.defaults import default_rules
from listener.route.load import load_rules, parse_rules
from listener.route.model import (
    Expectation,
    ModelTask,
    Rule,
    RuleSet,
)
from listener.settings import Destination

__all__ = [
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
