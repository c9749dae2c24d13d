"""Which body part and which side a result describes: Body Part Examined and Laterality.

Both sit in the General Series module (PS3.3 C.7.3.1), which every result series has. Body Part
Examined (Type 3) is copied from the source when it is a well-formed CS value. Laterality is
Type 2C, required for paired structures: it is R or L from the source's Laterality, else from its
Image Laterality (DX, MG and other projection images state the side there); when the source says
neither, it is left out for a body part known to be unpaired (chest, abdomen, head...) and written
empty, meaning unknown, otherwise (PS3.3 C.7.3.1: "empty when actually unknown").

The Segmentation is the exception. dciodvfy treats it as an enhanced multi-frame object, where
the side belongs to each frame, and rejects General Series Laterality on it in every case (even
R for a knee), while PixelMed's IOD validator asks for it in every case (even for a chest);
neither reading follows the condition. A SEG therefore states its side where the SEG module
itself has room for it: each segment's Segmented Property Type Modifier (C.8.20.2) is Right or
Left (SNOMED CT 24028007, 7771000), and General Series Laterality is left out.
"""

from __future__ import annotations

import re

from pydicom import Dataset
from pydicom.sr.coding import Code

LATERALITIES = frozenset({"R", "L"})  # enumerated values of Laterality
# Body Part Examined terms (PS3.16 CID 4031 as modalities write them) for unpaired parts.
UNPAIRED_BODY_PARTS = frozenset(
    {
        "ABDOMEN",
        "ABDOMENPELVIS",
        "ABDOMEN_PELVIS",
        "BRAIN",
        "CHEST",
        "CHESTABDOMEN",
        "CHESTABDPELVIS",
        "CSPINE",
        "HEAD",
        "HEADNECK",
        "HEART",
        "LSPINE",
        "NECK",
        "PELVIS",
        "SKULL",
        "SPINE",
        "THORAX",
        "TSPINE",
        "WHOLEBODY",
    }
)
SIDES = {"R": Code("24028007", "SCT", "Right"), "L": Code("7771000", "SCT", "Left")}
_CS = re.compile(r"^[A-Z0-9 _]{1,16}$")


def laterality_of(source: Dataset) -> str:
    """R or L from the source's Laterality, else its Image Laterality; "" when neither says."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword, "") or "").strip().upper()
        if value in LATERALITIES:
            return value
    return ""


def body_part_of(source: Dataset) -> str:
    """The source's Body Part Examined when it is a valid CS value, else ""."""
    value = str(source.get("BodyPartExamined", "") or "").strip()
    return value if _CS.match(value) else ""


def side_modifier(source: Dataset) -> Code | None:
    """Right or Left as a code, for a segment of a source whose side is known."""
    return SIDES.get(laterality_of(source))


def set_body_part_and_laterality(obj: Dataset, source: Dataset, *, laterality: bool = True) -> None:
    """Body Part Examined and (unless ``laterality`` is False) Laterality of ``source`` on the
    result ``obj``, as the module says."""
    for keyword in ("BodyPartExamined", "Laterality"):
        if keyword in obj:
            delattr(obj, keyword)  # a new element: highdicom may share the source's
    body_part = body_part_of(source)
    if body_part:
        obj.BodyPartExamined = body_part
    side = laterality_of(source)
    if laterality and (side or body_part not in UNPAIRED_BODY_PARTS):
        obj.Laterality = side
