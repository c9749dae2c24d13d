"""Helpers of the DICOMweb tests: multipart bodies, curl uploads, Orthanc look-ups."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

from peers import Orthanc
from peers import wait_for as wait_for  # re-exported
from pydicom.data import get_testdata_file

BOUNDARY = "pacs-ai-test-boundary-3f1c"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
# PS3.18 Table 10.5.3-3 tags in DICOM JSON.
FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE = "00081198", "00081199"
FAILURE_REASON, REFERENCED_SOP_INSTANCE = "00081197", "00081155"
CANNOT_UNDERSTAND = 0xC000


def multipart_body(target: Path, parts: list[tuple[str, bytes | Path]]) -> Path:
    """Write a multipart/related body of ``(media type, bytes or file)`` parts to ``target``."""
    with target.open("wb") as out:
        for media, content in parts:
            out.write(f"--{BOUNDARY}\r\nContent-Type: {media}\r\n\r\n".encode())
            out.write(content.read_bytes() if isinstance(content, Path) else content)
            out.write(b"\r\n")
        out.write(f"--{BOUNDARY}--\r\n".encode())
    return target


def curl_stow(url: str, body: Path, *extra: str) -> tuple[int, dict[str, str], Any]:
    """POST ``body`` with curl; (status, headers, parsed JSON body)."""
    headers = body.with_suffix(".headers")
    result = subprocess.run(
        [
            *("curl", "-sS", "-X", "POST", "-H", f"Content-Type: {CONTENT_TYPE}", *extra),
            *("--data-binary", f"@{body}", "-D", str(headers), "-w", "%{http_code}", url),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    text, code = result.stdout[:-3], int(result.stdout[-3:])
    parsed = {}
    for line in headers.read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return code, parsed, json.loads(text) if text else None


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta group of a PS3.10 file."""
    data = path.read_bytes()
    (meta_length,) = struct.unpack_from("<I", data, 140)
    return data[144 + meta_length :]


def series_modalities(orthanc: Orthanc, study_uid: str) -> list[str]:
    """The modalities of a study's series in Orthanc, sorted (empty while it has none)."""
    studies = orthanc.find("Study", {"StudyInstanceUID": study_uid})
    if not studies:
        return []
    series = orthanc.get(f"/studies/{studies[0]['ID']}/series")
    return sorted(s["MainDicomTags"].get("Modality", "") for s in series)


def chest_cr() -> Path:
    """The chest CR of pydicom-data (CR, PA, MONOCHROME1)."""
    source = get_testdata_file("RG1_UNCR.dcm")
    assert source is not None
    return Path(source)


def dimse_destination(name: str, orthanc: Orthanc) -> dict[str, str]:
    """Settings (environment) of a DIMSE destination ``name`` that is ``orthanc``."""
    prefix = f"PACSAI_DESTINATIONS__{name.upper()}__"
    return {
        f"{prefix}AE_TITLE": orthanc.aet,
        f"{prefix}HOST": "127.0.0.1",
        f"{prefix}PORT": str(orthanc.dicom_port),
    }
