"""The security sections of the settings: DICOM TLS on receive, HTTPS for the admin API, the
audit trail's syslog shipping and the per-model egress policy (what may leave the hospital).

Kept apart from :mod:`listener.settings`, which nests them (``tls``, ``admin_tls``, ``audit``,
``models.<name>.egress``); a bad value names its setting like every other.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Port = Annotated[int, Field(ge=1, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_files(section: BaseModel, *names: str) -> None:
    """ValueError naming the first of ``names`` that is set to a file that does not exist."""
    for name in names:
        path = getattr(section, name)
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{name}: {path} is not a readable file")


class TlsSettings(_Section):
    """DICOM TLS on receive (PS3.15 Annex B.1 and B.9, BCP 195): with a certificate the gateway
    also listens for TLS associations on ``port`` (2762, PS3.15 B.1 / IANA dicom-tls)."""

    cert_file: Path | None = Field(default=None, description="our certificate (PEM, chain)")
    key_file: Path | None = Field(default=None, description="its private key (PEM)")
    ca_file: Path | None = Field(
        default=None, description="CA that signs the client certificates we accept"
    )
    require_client_cert: bool = Field(
        default=False, description="refuse, during the handshake, a client without a certificate"
    )
    port: Port = 2762

    @model_validator(mode="after")
    def _consistent(self) -> TlsSettings:
        check_files(self, "cert_file", "key_file", "ca_file")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file: set both or neither")
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("ca_file: required with require_client_cert")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class AdminTlsSettings(_Section):
    """HTTPS for the admin API: with a certificate it serves only HTTPS."""

    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> AdminTlsSettings:
        check_files(self, "cert_file", "key_file")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file: set both or neither")
        return self


class AuditSettings(_Section):
    """The audit trail (PS3.15 A.5, IHE ATNA): always written to the journal; shipped to a
    syslog collector over TLS (RFC 5424 messages, RFC 5425 transport) when a host is set."""

    syslog_host: str | None = None
    syslog_port: Port = 6514
    syslog_ca_file: Path | None = Field(
        default=None, description="CA the collector's certificate is verified with"
    )
    syslog_cert_file: Path | None = Field(default=None, description="our client certificate")
    syslog_key_file: Path | None = None
    syslog_check_hostname: bool = True
    source_id: str = Field(
        default="PACSAI", description="AuditSourceID of every message (PS3.15 A.5.1)"
    )
    enterprise_site_id: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> AuditSettings:
        check_files(self, "syslog_ca_file", "syslog_cert_file", "syslog_key_file")
        return self


EgressField = Literal["indication", "technique", "comparison"]
EGRESS_FIELDS: tuple[EgressField, ...] = ("indication", "technique", "comparison")


class EgressPolicy(_Section):
    """What of a study may leave the hospital for one model (enforced before every call).

    The default is the safe choice: the text fields are sent with person names, dates and
    ID-like tokens scrubbed out, and images that may carry burned-in patient data (Burned In
    Annotation YES, or an ultrasound or secondary capture that does not say NO) are not sent.
    """

    text_fields: list[EgressField] = Field(
        default_factory=lambda: list(EGRESS_FIELDS),
        description="which CXRReportGen text inputs may be sent; the others go as empty",
    )
    scrub_text: bool = Field(
        default=True, description="replace names, dates and ID-like tokens in the text first"
    )
    allow_burned_in: bool = Field(
        default=False,
        description="send images with Burned In Annotation YES (or US/SC without the attribute)",
    )


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
