"""pacs-ai-listener: the DICOM gateway service (receive, spool, assemble, route, infer, send)."""

__version__ = "0.1.0"
