"""The egress policy: what of a study may leave for a model (pure functions, and rules test)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file

from listener.cli.rules import rules_test
from listener.infer.egress import EgressReport, outgoing_text, scrub, withheld_because
from listener.security.settings import EgressPolicy


def header(**values: object) -> Dataset:
    """A dataset with just ``values``."""
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.parametrize(
    ("values", "withheld"),
    [
        ({"Modality": "CR", "BurnedInAnnotation": "YES"}, True),
        ({"Modality": "US"}, True),
        ({"Modality": "US", "BurnedInAnnotation": "NO"}, False),
        ({"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, True),
        ({"Modality": "CR"}, False),
    ],
)
def test_burned_in_images_are_withheld_by_default(values: dict[str, str], withheld: bool) -> None:
    """Burned In Annotation YES, or US/SC without NO, is not sent; allow_burned_in sends it."""
    ds = header(**values)
    assert (withheld_because(ds, EgressPolicy()) is not None) is withheld
    assert withheld_because(ds, EgressPolicy(allow_burned_in=True)) is None


def test_names_dates_and_ids_are_scrubbed() -> None:
    """The patient's name parts, other person names, dates and ID-like tokens are replaced."""
    ds = header(
        PatientName="Doe^Johnathan", PatientID="PID778899", ReferringPhysicianName="Smith^Anna"
    )
    text = (
        "Johnathan Doe (PID778899), ref. Dr Smith: cough since 12.03.2024 and 2024-03-01,"
        " seen March 3, 2024; MRN A12345X"
    )
    out = scrub(text, ds)
    for leaked in ("Johnathan", "Doe", "PID778899", "Smith", "2024", "A12345X"):
        assert leaked not in out, out
    assert out.count("[name]") >= 3 and out.count("[date]") == 3 and "[id]" in out
    assert "cough since" in out


def test_text_fields_not_listed_are_withheld() -> None:
    """A field the policy does not list goes as empty; the report says so."""
    report = EgressReport("cxrreportgen")
    policy = EgressPolicy(text_fields=["technique"], scrub_text=False)
    out = outgoing_text({"indication": "x", "technique": "PA"}, header(), policy, report)
    assert out == {"indication": "", "technique": "PA"}
    assert report.text_withheld == ["indication"]


def test_rules_test_shows_what_leaves(tmp_path: Path) -> None:
    """`rules test` shows the scrubbed indication of a CXR and the withheld burned-in US."""
    cr = dcmread(get_testdata_file("RG1_UNCR.dcm"))
    cr.PatientName = "Doe^Johnathan"
    cr.ReasonForTheRequestedProcedure = "Johnathan Doe, cough since 12.03.2024"
    cr.save_as(tmp_path / "cr.dcm")
    us = dcmread(get_testdata_file("US1_UNCR.dcm"))
    us.BurnedInAnnotation = "YES"
    us.save_as(tmp_path / "us.dcm")
    out = io.StringIO()
    policies = {"cxrreportgen": EgressPolicy(), "medimageinsight": EgressPolicy()}
    rules_test([tmp_path], None, None, out, policies)
    text = out.getvalue()
    assert "sent indication: '[name] [name], cough since [date]'" in text
    assert "not sent: 1 images (Burned In Annotation is YES)" in text
    assert "Johnathan" not in text
