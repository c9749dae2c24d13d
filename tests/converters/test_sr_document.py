"""The SR document built without highdicom's copies of its content tree is the document
highdicom's constructor builds, element for element, and keeps its evidence check."""

from __future__ import annotations

import copy
import subprocess
import sys

import highdicom as hd
import pytest
from pydicom import Dataset
from result_cases import load_sources, provenance

from converters.check import encode
from converters.codes import COMMENT
from converters.sr import _comprehensive_3d_sr, measurement_report


def _identity(sources: list[Dataset]) -> dict[str, object]:
    return {
        "series_instance_uid": hd.UID(),
        "series_number": 99,
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "manufacturer": "test",
        "is_complete": False,
        "is_final": False,
        "is_verified": False,
        "specific_character_set": "ISO_IR 192",
    }


def _without_build_time(ds: Dataset) -> bytes:
    """The Part 10 bytes with highdicom's per-build times (content, contribution) fixed."""
    for item in ds.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = "20260101000000"
    for keyword in ("ContentDate", "InstanceCreationDate"):
        if keyword in ds:
            setattr(ds, keyword, "20260101")
    for keyword in ("ContentTime", "InstanceCreationTime"):
        if keyword in ds:
            setattr(ds, keyword, "000000")
    return encode(ds)


def test_copy_free_document_equals_highdicoms_constructor() -> None:
    """Same bytes as ``hd.sr.Comprehensive3DSR(content=report[0])``, same typed ``.content``,
    and the report's tree is the one in the document (no copy of 64 image references)."""
    sources = load_sources("ct_series")
    report = measurement_report([], provenance(), sources, root_texts=[(COMMENT, "note")])
    identity = _identity(sources)
    expected = hd.sr.Comprehensive3DSR(
        evidence=sources, content=copy.deepcopy(report[0]), **identity
    )
    built = _comprehensive_3d_sr(evidence=sources, root=report[0], **identity)
    assert _without_build_time(built) == _without_build_time(expected)
    assert built.content[0] is report[0]
    assert len(built.content[0].ContentSequence) == len(expected.content[0].ContentSequence)


def test_a_reference_outside_the_evidence_is_refused() -> None:
    """An image the content references but the evidence lacks stops the build, as highdicom's
    constructor does."""
    sources = load_sources("ct_series")
    report = measurement_report([], provenance(), sources, root_texts=[(COMMENT, "note")])
    with pytest.raises(ValueError, match="1 instance"):
        _comprehensive_3d_sr(evidence=sources[1:], root=report[0], **_identity(sources))


def test_preloading_reads_highdicoms_tables_before_any_result() -> None:
    """In a fresh process the tables highdicom reads on first use are loaded by the preload,
    so the first result a job runner builds does not pay for them."""
    code = (
        "from highdicom._standard_utils import get_module_attribute_map as tables\n"
        "from converters.sr import preload_standard_tables\n"
        "assert tables.cache_info().currsize == 0\n"
        "preload_standard_tables()\n"
        "assert tables.cache_info().currsize == 1\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
