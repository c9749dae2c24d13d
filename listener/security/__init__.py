"""Security building blocks shared by the stages: the TLS policy (:mod:`.tls`) and the security
sections of the settings (:mod:`.settings`: DICOM TLS, admin HTTPS, audit, egress policy)."""
