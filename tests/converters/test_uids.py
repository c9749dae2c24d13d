"""Deterministic result UIDs: same input, same UIDs; another rule or model version, new ones."""

from __future__ import annotations

import re

import factory
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import Dataset
from result_cases import block_masks, findings_for, frontal_of, load_sources, provenance

from converters.provenance import Provenance
from converters.results import build_parse_results, build_report_results
from converters.seg import Prompt, SourceMasks
from converters.uids import MAX_UID_LENGTH, derive_uid, validate_root

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
PROMPTS = (Prompt("liver", "liver"), Prompt("tumor", "tumor"), Prompt("cyst", "other lesion"))


def all_uids(sources: list[Dataset], prov: Provenance) -> list[str]:
    """Series, SOP and tracking UIDs of every object built for the CT series and the report."""
    masks = SourceMasks(PROMPTS, block_masks(sources, len(PROMPTS)))
    objects = list(build_parse_results(sources, masks, prov).objects)
    objects += build_report_results(sources, frontal_of(sources), findings_for(sources[0]), prov)
    uids = []
    for obj in objects:
        uids += [obj.SeriesInstanceUID, obj.SOPInstanceUID]
        uids += [str(e.value) for e in obj.iterall() if e.keyword in ("TrackingUID", "UID")]
    from_sources = {str(e.value) for ds in sources for e in ds.iterall() if e.VR == "UI"}
    return [uid for uid in uids if uid not in from_sources]


@given(
    st.lists(st.text(), min_size=1, max_size=5),
    st.sampled_from([None, "1.2.826.0.1.3680043.8.498."]),
)
def test_derived_uids_are_valid_and_stable(parts: list[str], root: str | None) -> None:
    """Any key gives a well-formed UID of at most 64 characters, the same each time."""
    uid = derive_uid(*parts, root=root)
    assert UID_PATTERN.match(uid) and len(uid) <= MAX_UID_LENGTH
    assert uid == derive_uid(*parts, root=root)
    assert uid.startswith(root or "2.25.")


def test_key_parts_are_not_ambiguous() -> None:
    """Moving text between key parts changes the UID (parts are separated, not concatenated)."""
    assert derive_uid("ab", "c") != derive_uid("a", "bc")


@pytest.mark.parametrize("root", ["1.2.3", "1.02.3.", "x.1.", "1." * 30])
def test_bad_roots_are_refused(root: str) -> None:
    """A root that is not dotted digits ending in a dot, or that is too long, raises."""
    with pytest.raises(ValueError, match="UID root"):
        validate_root(root)


def test_building_twice_gives_the_same_uids() -> None:
    """Re-running the same model and rule on the same study yields identical UIDs."""
    sources = factory.ct_series(6)
    first = all_uids(sources, provenance())
    assert first == all_uids(sources, provenance())
    assert len(set(first)) > 10


@pytest.mark.parametrize(
    "changed",
    [
        provenance(rule="another-rule"),
        provenance(version="emulator-2"),
        provenance(model="medimageparse3d"),
    ],
)
def test_another_rule_or_model_version_gives_new_uids(changed: Provenance) -> None:
    """A different rule, model version or model gives new series, instance and tracking UIDs."""
    sources = factory.ct_series(6)
    base = all_uids(sources, provenance())
    other = all_uids(sources, changed)
    device = provenance().device_uid()
    assert not (set(base) - {device}) & (set(other) - {device, changed.device_uid()})


def test_configured_root_is_used_for_result_uids() -> None:
    """With a UID root configured, result UIDs hang under it."""
    root = "1.2.826.0.1.3680043.8.498."
    prov = provenance()
    rooted = Provenance(prov.model, prov.rule, prov.gateway_version, prov.created, uid_root=root)
    sources = load_sources("mr_small")
    masks = SourceMasks(PROMPTS, block_masks(sources, len(PROMPTS)))
    for obj in build_parse_results(sources, masks, rooted).objects:
        assert obj.SOPInstanceUID.startswith(root) and obj.SeriesInstanceUID.startswith(root)
