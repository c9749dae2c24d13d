"""The pure builders: identity, supersession, UTF-8 text, unusual source values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import factory
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from result_cases import block_masks, dciodvfy, findings_for, frontal_of, provenance, write

from converters.check import encode
from converters.copied import redact
from converters.kos import REJECTED_FOR_QUALITY_REASONS, build_rejection_note
from converters.prepare import ImageModel, prepare_image
from converters.provenance import ResultRef
from converters.results import build_parse_results, build_report_results
from converters.seg import Prompt, SourceMasks

PROMPTS = (Prompt("liver", "liver"), Prompt("tumor", "tumor"))
NON_ASCII = (Prompt("pneumothorax – large", "other"), Prompt("肺炎", "infection"))


def parse(sources: list[Dataset], prompts: tuple[Prompt, ...] = PROMPTS, **changes: object):
    """SEG and SR of block masks (the last prompt's empty) for ``sources``."""
    prov = dataclasses.replace(provenance(), **changes)  # type: ignore[arg-type]
    masks = SourceMasks(prompts, block_masks(sources, len(prompts) + 1)[: len(prompts)])
    return build_parse_results(sources, masks, prov).objects


def uids(objects: tuple[Dataset, ...]) -> set[str]:
    """Series and SOP Instance UIDs of result objects."""
    return {str(o.SeriesInstanceUID) for o in objects} | {str(o.SOPInstanceUID) for o in objects}


def test_other_inputs_of_one_study_give_other_uids() -> None:
    """Four slices and six slices of one series give disjoint result UIDs; order is irrelevant."""
    series = factory.ct_series(6)
    assert not uids(parse(series[:4])) & uids(parse(series))
    assert uids(parse(series)) == uids(parse(list(reversed(series))))


def test_two_tasks_of_one_rule_with_one_model_give_other_uids() -> None:
    """Two task names under one rule and model never share a Series or SOP Instance UID."""
    series = factory.ct_series(4)
    assert not uids(parse(series, task="segment")) & uids(parse(series, task="segment-b"))


def test_same_input_gives_the_same_bytes() -> None:
    """Building twice gives byte-identical objects, Dimension Organization UID included."""
    series = factory.ct_series(4)
    first, second = parse(series), parse(series)
    assert [encode(o) for o in first] == [encode(o) for o in second]
    seg = first[0]
    assert seg.DimensionOrganizationSequence[0].DimensionOrganizationUID.startswith("2.25.")


def test_follow_up_rejects_the_earlier_generation(tmp_path: Path) -> None:
    """A follow-up's results end with a KOS rejecting the earlier results (title 113001) and
    their SR names the earlier SR as predecessor; everything passes dciodvfy."""
    series = factory.ct_series(6)
    earlier = parse(series[:4])
    refs = tuple(ResultRef.of(o) for o in earlier)
    *later, kos = parse(series, supersedes=refs)
    prov = dataclasses.replace(provenance(), supersedes=refs)
    assert encode(kos) == encode(build_rejection_note(series, refs, prov))
    assert [o.Modality for o in later] == ["SEG", "SR"] and kos.Modality == "KO"
    assert not uids(earlier) & uids((*later, kos))
    predecessors = {
        str(sop.ReferencedSOPInstanceUID)
        for study in later[-1].PredecessorDocumentsSequence
        for s in study.ReferencedSeriesSequence
        for sop in s.ReferencedSOPSequence
    }
    assert predecessors == {str(earlier[-1].SOPInstanceUID)}
    assert kos.ConceptNameCodeSequence[0].CodeValue == REJECTED_FOR_QUALITY_REASONS.value
    referenced = {
        str(sop.ReferencedSOPInstanceUID)
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
        for sop in s.ReferencedSOPSequence
    }
    assert referenced == {str(o.SOPInstanceUID) for o in earlier}
    for i, obj in enumerate((*later, kos)):
        dciodvfy(write(obj, tmp_path, f"obj{i}"))


def latin1_ct() -> list[Dataset]:
    """A CT series in ISO_IR 100 with accented patient and study text."""
    series = factory.ct_series(4)
    for ds in series:
        ds.PatientName = "Müller^Jürgen"
        ds.StudyDescription = "Thorax – Übersicht"[:64].replace("–", "-")
    return series


def no_charset_ct() -> list[Dataset]:
    """A CT series without Specific Character Set (ASCII only, the default repertoire)."""
    series = factory.ct_series(4)
    for ds in series:
        del ds.SpecificCharacterSet
    return series


@pytest.mark.parametrize("make", [latin1_ct, no_charset_ct])
def test_non_ascii_prompts_survive_in_utf8(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Results of a Latin-1 or charset-less source carry ISO_IR 192, the source's text and the
    prompts exactly, and pass dciodvfy."""
    sources = make()
    # Written and read back, so the source's text goes through its own character set.
    paths = factory.write_series(sources, tmp_path / "in")
    sources = [pydicom.dcmread(p) for p in paths]
    objects = parse(sources, (*NON_ASCII, Prompt("cyst", "other lesion")))
    for i, obj in enumerate(objects):
        back = pydicom.dcmread(write(obj, tmp_path, f"r{i}"))
        dciodvfy(tmp_path / f"r{i}.dcm")
        assert back.SpecificCharacterSet == "ISO_IR 192"
        assert str(back.PatientName) == str(sources[0].PatientName)
        text = "\n".join(str(e.value) for e in back.iterall() if e.VR in ("LO", "UT", "ST"))
        assert "pneumothorax – large" in text and "肺炎" in text


def test_malformed_source_values_are_left_out_and_never_quoted(tmp_path: Path) -> None:
    """A 1945-12-31 birth date, a six-component name, a 70-character LO and two sexes give a
    valid result; the malformed values are emptied or left out as converters.copied says."""
    sources = factory.ct_series(4)
    for ds in sources:
        ds.PatientBirthDate = "1945-12-31"
        ds.PatientName = "A^B^C^D^E^F"
        ds.StudyDescription = "X" * 70
        ds.PatientSex = ["M", "F"]
        ds.PatientID = "PID-1"
    objects = parse(sources)
    for i, obj in enumerate(objects):
        dciodvfy(write(obj, tmp_path, f"m{i}"))
        assert obj.PatientBirthDate == "" and obj.PatientName == "" and obj.PatientSex == ""
        assert "StudyDescription" not in obj and obj.PatientID == "PID-1"
    message = redact("bad value 1945-12-31 for A^B^C^D^E^F", sources)
    assert "1945" not in message and "A^B" not in message


@pytest.mark.parametrize("vr", ["OW", "US"])
def test_voi_lut_cr_gets_results(vr: str, tmp_path: Path) -> None:
    """A CR whose VOI LUT Data is OW or US is prepared and gets a report SR and GSPS."""
    path = get_testdata_file("RG1_UNCR.dcm")
    assert path is not None
    factory.with_voi_lut(pydicom.dcmread(path), vr).save_as(tmp_path / "cr.dcm")
    cr = pydicom.dcmread(tmp_path / "cr.dcm")
    assert prepare_image(cr, ImageModel.CXRREPORTGEN).png
    objects = build_report_results([cr], frontal_of([cr]), findings_for(cr), provenance("x"))
    assert [o.Modality for o in objects] == ["SR", "PR"]
    for i, obj in enumerate(objects):
        dciodvfy(write(obj, tmp_path, f"v{i}"))


def test_segments_have_distinct_colours() -> None:
    """Each segment has its own Recommended Display CIELab Value."""
    seg = parse(factory.ct_series(4), (*PROMPTS, Prompt("cyst", "other lesion")))[0]
    colours = [tuple(s.RecommendedDisplayCIELabValue) for s in seg.SegmentSequence]
    assert len(colours) == len(set(colours)) == 3
    assert np.all(np.asarray(colours) >= 0)
