"""Text of the receive header walk (:func:`listener.store.spool.walk_dataset`), decoded right.

The walk reads a handful of values straight from the encoded bytes. UIDs and Modality are in the
default repertoire (PS3.5 §6.1.2.1, §9.1). Patient's Name (PN) and Patient ID (LO) may use the
dataset's Specific Character Set (PS3.5 §6.1.2.5, PS3.3 C.12.1.1.2): single-byte sets, UTF-8, or
ISO 2022 with code extensions; they are decoded with pydicom's character set handling, as the
rest of the gateway reads them.

Why decode rather than stop storing the name in the journal: the operator's study list
(``pacs-ai studies --show-patient``, the admin API) identifies a study by it, and the spool file
on the same host holds the name anyway, so leaving it out of the journal would not remove a copy
from the host; a name stored mis-decoded (a UTF-8 name read as Latin-1, an ISO 2022 name with
its raw escape sequences) points the operator at the wrong patient.
"""

from __future__ import annotations

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.valuerep import PersonName

SPECIFIC_CHARACTER_SET = 0x00080005  # sorts before the patient's (0010,xxxx) elements
PATIENT_NAME, PATIENT_ID = 0x00100010, 0x00100020


def character_sets(raw: bytes) -> list[str]:
    """The defined terms of a Specific Character Set value (backslash-separated, CS)."""
    return [term.strip("\0 ") for term in raw.decode("ascii", "replace").split("\\")]


def decode_header_text(tag: int, raw: bytes, charsets: list[str]) -> str:
    """One value of the header walk as text, in the dataset's character sets ``charsets``."""
    value = raw.rstrip(b"\0 ")
    if tag not in (PATIENT_NAME, PATIENT_ID):
        # only the padding goes: a UID with any other trailing character must stay refusable
        return raw.decode("latin-1").strip("\0 ")
    encodings = convert_encodings(charsets or [""])
    if tag == PATIENT_NAME:
        return str(PersonName(value, encodings)).strip()
    return decode_bytes(value, encodings, set()).strip()
