"""Pure DICOM <-> model conversions: no I/O, no network, nothing from ``listener``."""
