"""DICOMweb pieces without peers: the store response, the request's media type, the settings of a
DICOMweb destination, and the chest index behind prior look-ups."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.errors import ConfigError
from listener.receive.status import StoreStatus
from listener.receive.stow import (
    PartResult,
    StowRequestError,
    multipart_boundary,
    store_response,
    warning_header,
)
from listener.settings import load_settings
from listener.store.journal import Journal
from listener.store.priors import ChestIndex, StudyToIndex

OK = PartResult("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1", StoreStatus.SUCCESS)
WARNED = PartResult("1.2.840.10008.5.1.4.1.1.2", "1.2.3.2", StoreStatus.WARNING_ELEMENTS_DISCARDED)
BAD = PartResult(None, None, StoreStatus.CANNOT_UNDERSTAND, 'not a "DICOM" file')


@pytest.mark.parametrize(
    ("results", "code"),
    [([OK], 200), ([OK, BAD], 202), ([WARNED], 202), ([BAD], 409), ([], 409)],
)
def test_store_response_status_follows_ps3_18(results: list[PartResult], code: int) -> None:
    """All stored: 200; some failed or a warning: 202; none stored: 409 (PS3.18 10.5.3)."""
    assert store_response(results)[0] == code


def test_store_response_lists_failures_and_warnings() -> None:
    """Failed parts carry their Failure Reason, warned ones their Warning Reason."""
    _, body = store_response([OK, WARNED, BAD])
    stored = body["00081199"]["Value"]
    assert [item.get("00081196", {}).get("Value") for item in stored] == [None, [0xB006]]
    (failed,) = body["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert warning_header([OK, BAD]) == "299 pacs-ai: \"not a 'DICOM' file\""


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/dicom", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415),
        ('multipart/related; type="application/dicom"', 400),
    ],
)
def test_request_media_type_is_checked(content_type: str, status: int) -> None:
    """Only multipart/related of application/dicom with a boundary is a STOW-RS request."""
    with pytest.raises(StowRequestError) as raised:
        multipart_boundary(content_type)
    assert raised.value.http_status == status


def test_multipart_boundary_defaults_the_part_type() -> None:
    """Without a type parameter the parts are taken as application/dicom."""
    assert multipart_boundary("multipart/related; boundary=abc") == b"abc"


def test_dicomweb_destination_settings_name_what_is_missing(tmp_path: Path) -> None:
    """A dicomweb destination needs url, basic auth a password, a DIMSE one its AE and address;
    the password never shows in the message."""
    config = tmp_path / "settings.yaml"
    config.write_text(
        "destinations:\n"
        "  cloud: {kind: dicomweb, url: 'https://x/dicom-web',"
        " auth: {type: basic, username: u, password: hunter2-secret}}\n"
        "  broken: {kind: dicomweb}\n"
        "  half: {ae_title: PACS}\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    message = str(raised.value)
    assert "destinations.broken" in message and "needs url" in message
    assert "destinations.half" in message and "host, port" in message
    assert "hunter2" not in message
    config.write_text(
        "destinations:\n  cloud: {kind: dicomweb, url: 'https://x', auth: {type: basic}}\n"
    )
    with pytest.raises(ConfigError, match="username and password"):
        load_settings(config)


def test_chest_index_finds_the_latest_earlier_study_of_the_patient(tmp_path: Path) -> None:
    """One indexed query: same patient (issuer matching or absent), an earlier date, a frontal
    image; later studies, other issuers and the current study are not priors."""
    journal = Journal(tmp_path / "journal.sqlite")
    index = ChestIndex(journal.path)
    rows = [
        ("1.1", "20200101", "A", "s/1.dcm"),
        ("1.2", "20220101", "A", "s/2.dcm"),
        ("1.3", "20230101", "A", None),  # no frontal image
        ("1.4", "20230601", "B", "s/4.dcm"),  # another issuer
        ("1.5", "20250101", "A", "s/5.dcm"),  # later than the current one
    ]
    for uid, date, issuer, path in rows:
        index.put(
            StudyToIndex(uid, 1.0, 1.0),
            patient_id="P",
            issuer=issuer,
            study_date=date,
            frontal_path=path,
        )
    found = index.latest_before("P", "A", "20240101", exclude_study="9.9")
    assert found is not None and found.study_uid == "1.2"
    other = index.latest_before("P", "A", "20240101", exclude_study="1.2")
    assert other is not None and other.study_uid == "1.1"
    assert index.latest_before("Q", "A", "20240101", exclude_study="9.9") is None
    journal.close()
