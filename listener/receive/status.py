"""Named DIMSE status values (PS3.4 Annex B.2.3 for C-STORE, PS3.7 Annex C for general codes).

Handlers return these names, never hex literals, so each branch says what it means.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class StoreStatus(IntEnum):
    """C-STORE response statuses used by the receiver."""

    SUCCESS = 0x0000
    # PS3.4 B.2.3: "Refused: Out of Resources" (A7xx); A700 is the general form.
    OUT_OF_RESOURCES = 0xA700
    # PS3.7 C.5.8: the SOP Class in the command is not the one the context was negotiated for.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    # PS3.4 B.2.3: "Error: Data Set does not match SOP Class" (A9xx).
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # PS3.4 B.2.3: "Error: Cannot understand" (Cxxx).
    CANNOT_UNDERSTAND = 0xC000
    # PS3.7 C.5.7: general processing failure.
    PROCESSING_FAILURE = 0x0110
    # PS3.4 B.2.3 warnings: the instance was stored, with a remark.
    WARNING_COERCION_OF_DATA_ELEMENTS = 0xB000
    WARNING_ELEMENTS_DISCARDED = 0xB006
    WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xB007


# The answer to a C-STORE whose handling failed inside the receiver (an exception: the spool
# cannot be written, the journal is unavailable), the same on both receive engines. PS3.4 Annex
# B.2.3 (Table B.2-1) lets a C-STORE SCP answer the general statuses of PS3.7 Annex C besides its
# own; among them 0110H Processing Failure says that the SCP failed while processing the
# operation. The service-specific "Error: Cannot understand" (Cxxx), whose sub-code C211H
# pynetdicom uses for an exception in its handler, says the SCP did not understand the data set:
# the wrong cause to give a sender for a full or failing disk, and C211H itself is a pynetdicom
# convention, not a DICOM code.
HANDLER_FAILURE: Final = StoreStatus.PROCESSING_FAILURE

STORED_STATUSES = frozenset(
    {
        StoreStatus.SUCCESS,
        StoreStatus.WARNING_COERCION_OF_DATA_ELEMENTS,
        StoreStatus.WARNING_ELEMENTS_DISCARDED,
        StoreStatus.WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    }
)


class EchoStatus(IntEnum):
    """C-ECHO response statuses (PS3.7 Annex C)."""

    SUCCESS = 0x0000
