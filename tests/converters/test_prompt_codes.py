"""The prompt-code table (converters.codes) covers every prompt a shipped rule can send.

A prompt outside the table is still coded (as an unmapped prompt with its text kept), but a
prompt the project itself ships in its rules must have its standard code: a reader filtering
segments by SNOMED CT type must find the example rules' and the defaults' segments.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from converters.codes import UNMAPPED_PROMPT, known_prompts, segment_property
from listener.route.defaults import default_rules
from listener.route.load import load_rules
from listener.route.model import RuleSet

RULES_FILE = Path(__file__).resolve().parents[2] / "config" / "rules.yaml"


def prompts_of(rules: RuleSet) -> set[str]:
    """Every prompt of every task of ``rules``."""
    return {prompt for rule in rules.rules for task in rule.tasks for prompt in task.prompts}


@pytest.mark.parametrize(
    "rules",
    [
        pytest.param(lambda: load_rules(RULES_FILE), id="rules.yaml"),
        pytest.param(default_rules, id="defaults"),
    ],
)
def test_every_shipped_prompt_has_a_standard_code(rules) -> None:  # type: ignore[no-untyped-def]
    """Each prompt of the rules is in the table and is coded with a standard (non-private)
    category and type, whatever category the model answers."""
    prompts = prompts_of(rules())
    assert prompts, "the rules have no prompts at all"
    missing = sorted(p for p in prompts if " ".join(p.lower().split()) not in known_prompts())
    assert not missing, f"prompts without a code in converters.codes: {missing}"
    for prompt in prompts:
        prop = segment_property("other", prompt)
        assert prop.category != UNMAPPED_PROMPT, prompt
        assert prop.type.scheme_designator == "SCT", prompt


def test_an_unknown_prompt_is_coded_as_such_with_its_text() -> None:
    """A prompt outside the table falls back to the unmapped-prompt code keeping its words."""
    prop = segment_property("other", "left adrenal gland")
    assert prop.category == UNMAPPED_PROMPT
    assert prop.type.meaning == "left adrenal gland"
