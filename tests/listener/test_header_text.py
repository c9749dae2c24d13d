"""The receive header walk decodes Patient's Name and ID in the dataset's character set."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files

from listener.store.spool import read_header, split_file

# pydicom's character set samples: UTF-8, ISO 2022 (Japanese, Korean), single-byte Latin-1,
# Cyrillic, Arabic, Greek, Hebrew, and multi-valued sets.
CHARSET_FILES = [
    "chrX1.dcm",
    "chrX2.dcm",
    "chrH31.dcm",
    "chrH32.dcm",
    "chrI2.dcm",
    "chrFren.dcm",
    "chrGerm.dcm",
    "chrRuss.dcm",
    "chrArab.dcm",
    "chrGreek.dcm",
    "chrHbrw.dcm",
    "chrJapMulti.dcm",
    "chrKoreanMulti.dcm",
]


def _path(name: str) -> Path:
    (path,) = get_charset_files(name)
    return Path(path)


@pytest.mark.parametrize("name", CHARSET_FILES)
def test_patient_name_is_decoded_like_pydicom(name: str) -> None:
    """The walk's Patient's Name and ID equal pydicom's decoding of the whole file."""
    syntax, dataset = split_file(_path(name).read_bytes())
    header = read_header(dataset, syntax)
    ds = dcmread(_path(name))
    assert header.patient_name == str(ds.PatientName)
    assert header.patient_id == str(ds.PatientID)


def test_utf8_and_iso2022_names_read_as_written() -> None:
    """chrX1 (ISO_IR 192) and chrH31 (ISO 2022 IR 87) give their ideographic names."""
    names = {}
    for name in ("chrX1.dcm", "chrH31.dcm"):
        syntax, dataset = split_file(_path(name).read_bytes())
        names[name] = read_header(dataset, syntax).patient_name
    assert names == {
        "chrX1.dcm": "Wang^XiaoDong=王^小東",
        "chrH31.dcm": "Yamada^Tarou=山田^太郎=やまだ^たろう",
    }
