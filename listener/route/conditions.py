"""Match conditions of the routing rules, and their evaluation over one instance's headers.

A condition is data (validated from YAML), never code: a test on one DICOM attribute named by its
keyword (PS3.6 data dictionary), a test on a fact of the association that brought the study
(calling AE, called AE, peer address; PS3.8 §7.1.1), or ``all`` / ``any`` / ``not`` over other
conditions. One model holds every form so that a validation error's location reads like the
YAML (``match.all[1].regex``); the validators make sure exactly one form is used.

Attribute values compare as text with surrounding spaces removed (DICOM pads values to an even
length, PS3.5 §6.2). A multi-valued attribute (value multiplicity > 1, e.g. ImageType) satisfies a
test when any one of its values does.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydicom.datadict import keyword_dict

Headers = Mapping[str, Any]
"""One instance's attributes by DICOM keyword (top-level, no pixel data)."""

AssociationField = Literal["calling_ae", "called_ae", "peer"]


@dataclass(frozen=True)
class AssociationFacts:
    """What the association that brought a study says about its sender (PS3.8 §7.1.1)."""

    calling_ae: str | None = None
    called_ae: str | None = None
    peer_address: str | None = None

    def get(self, field: AssociationField) -> str | None:
        if field == "calling_ae":
            return self.calling_ae
        if field == "called_ae":
            return self.called_ae
        return self.peer_address


class NumericRange(BaseModel):
    """An inclusive numeric range; a missing bound is open."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> NumericRange:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self

    def contains(self, value: float) -> bool:
        low = -math.inf if self.min is None else self.min
        high = math.inf if self.max is None else self.max
        return low <= value <= high


_VALUE_TESTS = ("equals", "one_of", "regex", "range", "present", "networks")


class Condition(BaseModel):
    """One condition: exactly one of an attribute test, an association test or a combinator.

    Forms (YAML):

    - ``{attribute: Modality, equals: CT}``; tests are ``equals``, ``one_of``, ``regex``
      (``re.search``, anchor with ``^...$`` for a whole-value match), ``range: {min, max}``
      (numeric, inclusive) and ``present: true|false`` (present and not empty, or not).
      ``ignore_case: true`` makes text tests case-insensitive.
    - ``{association: calling_ae|called_ae|peer, <test>}``; for ``peer`` also
      ``networks: [10.0.0.0/8, 192.168.1.7]`` (CIDR or single addresses).
    - ``{all: [...]}``, ``{any: [...]}``, ``{not: {...}}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    attribute: str | None = None
    association: AssociationField | None = None
    equals: str | float | None = None
    one_of: list[str | float] | None = None
    regex: str | None = None
    range: NumericRange | None = None
    present: bool | None = None
    networks: list[str] | None = None
    ignore_case: bool = False
    _pattern: re.Pattern[str] | None = PrivateAttr(default=None)
    all_of: list[Condition] | None = Field(default=None, alias="all")
    any_of: list[Condition] | None = Field(default=None, alias="any")
    not_: Condition | None = Field(default=None, alias="not")

    @field_validator("attribute")
    @classmethod
    def _known_keyword(cls, value: str | None) -> str | None:
        if value is not None and value not in keyword_dict:
            raise ValueError(f"unknown DICOM keyword {value!r} (PS3.6 data dictionary)")
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @field_validator("networks")
    @classmethod
    def _networks(cls, value: list[str] | None) -> list[str] | None:
        for item in value or []:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value

    @model_validator(mode="after")
    def _one_form(self) -> Condition:
        combinators = [n for n in ("all_of", "any_of", "not_") if getattr(self, n) is not None]
        tests = [name for name in _VALUE_TESTS if getattr(self, name) is not None]
        subjects = [s for s in ("attribute", "association") if getattr(self, s) is not None]
        if combinators:
            if len(combinators) > 1 or tests or subjects:
                raise ValueError("use exactly one of all, any, not, attribute or association")
            return self
        if len(subjects) != 1:
            raise ValueError("a condition needs one of: attribute, association, all, any, not")
        if len(tests) != 1:
            raise ValueError(
                "give exactly one test: equals, one_of, regex, range, present or networks"
            )
        if self.networks is not None and self.association != "peer":
            raise ValueError("networks applies to 'association: peer' only")
        return self

    def model_post_init(self, context: Any, /) -> None:
        """Compile the regular expression once."""
        if self.regex is not None:
            self._pattern = re.compile(self.regex, re.IGNORECASE if self.ignore_case else 0)

    def describe(self) -> str:
        """A short human-readable form, for ``rules test`` and logs."""
        if self.all_of is not None:
            return "all(" + ", ".join(c.describe() for c in self.all_of) + ")"
        if self.any_of is not None:
            return "any(" + ", ".join(c.describe() for c in self.any_of) + ")"
        if self.not_ is not None:
            return f"not({self.not_.describe()})"
        subject = self.attribute or self.association
        for name in _VALUE_TESTS:
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, NumericRange):
                    value = f"[{value.min}, {value.max}]"
                return f"{subject} {name} {value}"
        return str(subject)

    def matches(self, headers: Headers, facts: AssociationFacts | None = None) -> bool:
        """Whether one instance (its headers) and the association satisfy this condition."""
        if self.all_of is not None:
            return all(c.matches(headers, facts) for c in self.all_of)
        if self.any_of is not None:
            return any(c.matches(headers, facts) for c in self.any_of)
        if self.not_ is not None:
            return not self.not_.matches(headers, facts)
        if self.attribute is not None:
            return self._test(_values(headers.get(self.attribute)))
        assert self.association is not None
        fact = facts.get(self.association) if facts is not None else None
        return self._test([] if fact is None else [fact])

    def _test(self, values: list[str]) -> bool:
        if self.present is not None:
            return bool(values) == self.present
        return any(self._test_one(value) for value in values)

    def _test_one(self, value: str) -> bool:
        if self.range is not None:
            number = _number(value)
            return number is not None and self.range.contains(number)
        if self._pattern is not None:
            return self._pattern.search(value) is not None
        if self.networks is not None:
            return _in_networks(value, self.networks)
        wanted = [self.equals] if self.equals is not None else list(self.one_of or [])
        return any(_same(value, w, self.ignore_case) for w in wanted)


def _values(raw: Any) -> list[str]:
    """The attribute's values as stripped, non-empty strings."""
    if raw is None:
        return []
    items: Iterable[Any] = raw if isinstance(raw, list | tuple) else _split(raw)
    text = (str(item).strip() for item in items if item is not None)
    return [item for item in text if item]


def _split(raw: Any) -> Iterable[Any]:
    # pydicom's MultiValue is a MutableSequence but neither list nor tuple.
    if isinstance(raw, str | bytes):
        return [raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw]
    try:
        return list(raw)
    except TypeError:
        return [raw]


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _same(value: str, wanted: str | float, ignore_case: bool) -> bool:
    if isinstance(wanted, float | int) and not isinstance(wanted, bool):
        number = _number(value)
        return number is not None and number == float(wanted)
    if ignore_case:
        return value.casefold() == str(wanted).strip().casefold()
    return value == str(wanted).strip()


def _in_networks(value: str, networks: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)
