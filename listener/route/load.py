"""Load a rules file (YAML) into a :class:`~listener.route.model.RuleSet`.

Every problem becomes one :class:`~listener.errors.ConfigError` whose message names the file, the
rule and the field the way the YAML spells it, e.g.
``rules.yaml: rule 'chest-xray' field match.all[1].regex: invalid regular expression: ...``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from listener.errors import ConfigError
from listener.route.defaults import default_rules
from listener.route.model import RuleSet
from listener.settings import Settings

_PREFIXES = ("Value error, ", "Assertion failed, ")


def load_rules(path: Path) -> RuleSet:
    """Read and validate a rules file; raise ConfigError naming the rule and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the rules file: {exc.strerror}") from None
    return parse_rules(text, source=str(path))


def parse_rules(text: str, source: str = "rules.yaml") -> RuleSet:
    """Validate rules given as YAML text; ``source`` prefixes every message."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with destinations and rules")
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error, data) for error in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def _describe(error: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """One pydantic error as ``rule 'NAME' field PATH: message (got VALUE)``."""
    loc: tuple[int | str, ...] = tuple(error["loc"])
    message = str(error["msg"])
    for prefix in _PREFIXES:
        message = message.removeprefix(prefix)
    value = error.get("input")
    if isinstance(value, str | int | float | bool) and str(value) not in message:
        message += f" (got {value!r})"
    owner, rest = _owner(loc, data)
    if not rest:
        return f"{owner}: {message}" if owner else message
    field = _path(rest)
    return f"{owner} field {field}: {message}" if owner else f"field {field}: {message}"


def _owner(loc: tuple[int | str, ...], data: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """Who the error belongs to (a rule or a destination) and the rest of the location."""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules = data.get("rules")
        name: Any = None
        if isinstance(rules, Sequence) and loc[1] < len(rules) and isinstance(rules[loc[1]], dict):
            name = rules[loc[1]].get("name")
        label = repr(name) if isinstance(name, str) else f"#{loc[1] + 1}"
        return f"rule {label}", loc[2:]
    if len(loc) >= 2 and loc[0] == "destinations":
        return f"destination {loc[1]!r}", loc[2:]
    return "", loc


def _path(parts: tuple[Any, ...]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def effective_rules(settings: Settings) -> RuleSet:
    """The rules file's rules, or the embedded defaults.

    Destinations in the settings override those of the same name in the rules file, so one rules
    file serves several sites whose peers differ (``PACSAI_DESTINATIONS__PACS__HOST=...``).
    """
    if settings.rules_file is None:
        return default_rules(dict(settings.destinations))
    rules = load_rules(settings.rules_file)
    by_key = {_name_key(name): name for name in rules.destinations}
    merged = dict(rules.destinations)
    for name, destination in settings.destinations.items():
        merged[by_key.get(_name_key(name), name)] = destination
    return rules.model_copy(update={"destinations": merged})


def _name_key(name: str) -> str:
    """Destination names compare without case and with ``-`` equal to ``_``: environment
    variables can spell neither ``chest-reading`` nor upper case (``..._CHEST_READING__HOST``)."""
    return name.lower().replace("-", "_")
