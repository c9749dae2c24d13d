"""The sections of the gateway settings (destinations, models, the emulator, callers) and
the value types they share; :mod:`listener.settings` assembles them into :class:`Settings`.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from listener.security.settings import (
    EgressPolicy,
    check_files,
    is_loopback_host,
)

# PS3.5 §6.2: AE is up to 16 characters of the default repertoire, no backslash, no control
# characters; leading/trailing spaces are not significant, so an all-space title is invalid.
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def check_ae_title(value: str) -> str:
    """Return the AE title stripped of padding, or raise ValueError saying what is wrong."""
    stripped = value.strip()
    if not stripped:
        raise ValueError("an AE title must not be empty")
    if len(stripped) > 16:
        raise ValueError(f"an AE title has at most 16 characters, got {len(stripped)}")
    if not _AE_RE.match(stripped):
        raise ValueError("an AE title may hold printable ASCII characters other than backslash")
    return stripped


AETitle = Annotated[str, AfterValidator(check_ae_title)]
Port = Annotated[int, Field(ge=1, le=65535)]
ModelName = Literal["medimageinsight", "cxrreportgen", "medimageparse", "medimageparse3d"]
MODEL_NAMES: tuple[ModelName, ...] = (
    "medimageinsight",
    "cxrreportgen",
    "medimageparse",
    "medimageparse3d",
)


ENTRA_MODULE = "azure.identity"  # the optional 'entra' extra (azure-identity)


def module_available(name: str) -> bool:
    """Whether ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AllowedCaller(_Section):
    """A peer allowed to open associations: its calling AE title and, optionally, its address."""

    ae_title: AETitle
    host: str | None = None
    tls_subject: str | None = Field(
        default=None,
        description="common name (CN) the peer's verified client certificate must carry;"
        " such an entry admits only DICOM TLS associations",
    )

    @field_validator("host")
    @classmethod
    def _host_is_address_or_network(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_network(value, strict=False)
        return value


class WebAuth(_Section):
    """How the gateway authenticates to a DICOMweb service (PS3.18 §8.9 leaves it to HTTP).

    ``basic``: ``username`` and ``password``; ``bearer``: a fixed ``token``; ``entra``: a token
    from azure-identity's default credential for ``scope`` (the ``entra`` extra), e.g. the Azure
    Health Data Services DICOM service's.
    """

    type: Literal["none", "basic", "bearer", "entra"] = "none"
    username: str | None = None
    password: SecretStr | None = Field(default=None, description="basic auth (never logged)")
    token: SecretStr | None = Field(default=None, description="bearer token (never logged)")
    scope: str = "https://dicom.healthcareapis.azure.com/.default"

    @model_validator(mode="after")
    def _complete(self) -> WebAuth:
        if self.type == "basic" and (not self.username or self.password is None):
            raise ValueError("auth type basic needs username and password")
        if self.type == "bearer" and self.token is None:
            raise ValueError("auth type bearer needs token")
        return self


class Destination(_Section):
    """A peer results or originals go to: a DICOM AE (PS3.8 association parameters, ``kind:
    dimse``, the default) or a DICOMweb service (``kind: dicomweb``, STOW-RS to ``url``)."""

    ae_title: AETitle = ""
    host: str = ""
    port: Port = 104
    max_associations: int = Field(default=2, ge=1, le=64)
    calling_ae: AETitle | None = Field(
        default=None, description="our AE title towards this peer; default: the service's first"
    )
    tls: bool = Field(default=False, description="DICOM TLS (PS3.15 Annex B) to this peer")
    tls_ca_file: Path | None = Field(
        default=None, description="CA the peer's certificate is verified with; default: system"
    )
    tls_cert_file: Path | None = Field(
        default=None, description="our client certificate, for a peer that asks for one"
    )
    tls_key_file: Path | None = None
    tls_check_hostname: bool = Field(
        default=True, description="the peer's certificate must name ``host``"
    )

    kind: Literal["dimse", "dicomweb"] = "dimse"
    url: str | None = Field(
        default=None, description="DICOMweb service root (kind dicomweb), e.g. .../dicom-web"
    )
    auth: WebAuth = Field(default_factory=WebAuth)
    timeout_s: float = Field(default=60.0, gt=0, le=3600, description="DICOMweb request timeout")

    @model_validator(mode="after")
    def _tls_files(self) -> Destination:
        check_files(self, "tls_ca_file", "tls_cert_file", "tls_key_file")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file: set both or neither")
        return self

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Destination:
        if self.kind == "dicomweb":
            if not self.url or not self.url.startswith(("https://", "http://")):
                raise ValueError("a dicomweb destination needs url, an http(s) URL")
            if "@" in self.url.partition("://")[2].partition("/")[0]:
                raise ValueError("url must not carry credentials: use auth")
            return self
        given = self.model_fields_set
        missing = [name for name in ("ae_title", "host", "port") if name not in given]
        if missing:
            raise ValueError(f"a DIMSE destination needs {', '.join(missing)}")
        return self

    def describe(self) -> str:
        if self.kind == "dicomweb":
            return str(self.url)
        return f"{self.ae_title}@{self.host}:{self.port}"


class PriorsSettings(_Section):
    """Where CXRReportGen's prior image and report come from.

    ``source`` names a destination: a DIMSE one is queried with C-FIND (Study Root) and retrieved
    with C-GET (PS3.4 C.4.3), a DICOMweb one with QIDO-RS and WADO-RS. Unset, only
    studies the gateway itself received are looked at. A rule's CXRReportGen task can name
    another source with its ``priors_source`` parameter.
    """

    source: str | None = None
    timeout_s: float = Field(
        default=20.0, gt=0, le=600, description="longest a job waits for its prior"
    )
    cache_s: float = Field(default=3600.0, ge=0, description="how long a looked-up prior is kept")
    max_studies: int = Field(default=10, ge=1, le=200, description="earlier studies examined")


DriftGroupKey = Literal["calling_ae", "modality", "body_part"]
DRIFT_GROUP_DEFAULT: tuple[DriftGroupKey, ...] = ("calling_ae", "modality")


class DriftSettings(_Section):
    """Embedding drift monitoring per group of studies (listener.store.drift).

    A group's reference is its first ``reference_size`` embedded studies; its window is the
    latest ``window_size`` after them. Once the window holds ``min_window`` studies, every new
    study tests the window against the reference (MMD, listener.store.mmd); a p-value under
    ``alpha`` marks the group as drifted.
    """

    enabled: bool = True
    group_by: list[DriftGroupKey] = Field(default_factory=lambda: list(DRIFT_GROUP_DEFAULT))
    reference_size: int = Field(default=50, ge=5, le=5000)
    window_size: int = Field(default=30, ge=5, le=5000)
    min_window: int = Field(default=10, ge=3, le=5000)
    alpha: float = Field(
        default=0.01, gt=0, lt=1, description="p-value under which a group drifted"
    )
    permutations: int = Field(default=200, ge=20, le=10000)
    projection_dim: int = Field(default=32, ge=2, le=1024)


class ModelSettings(_Section):
    """One hosted model endpoint. With no endpoint the built-in emulator serves the model."""

    endpoint: str | None = Field(
        default=None, description="scoring URI, e.g. https://x.region.inference.ml.azure.com/score"
    )
    key: SecretStr | None = Field(default=None, description="endpoint key (never logged)")
    auth: Literal["key", "entra"] = "key"
    deployment: str | None = Field(default=None, description="azureml-model-deployment header")
    model_version: str | None = Field(
        default=None, description="recorded in result objects as the algorithm version"
    )
    timeout_s: float = Field(
        default=90.0, gt=0, le=600, description="total deadline of one request, answer included"
    )
    concurrency: int = Field(default=4, ge=1, le=256)
    retries: int = Field(default=6, ge=0, le=50)
    batch_size: int = Field(default=8, ge=1, le=1024)
    circuit_failures: int = Field(default=5, ge=1, le=1000)
    circuit_reset_s: float = Field(default=30.0, gt=0)
    egress: EgressPolicy = Field(default_factory=EgressPolicy)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("the endpoint must be an http(s) URL")
        return value


class ModelsSettings(_Section):
    """The four model endpoints, one section each."""

    medimageinsight: ModelSettings = Field(default_factory=lambda: ModelSettings(batch_size=16))
    cxrreportgen: ModelSettings = Field(
        default_factory=lambda: ModelSettings(batch_size=1, concurrency=2)
    )
    medimageparse: ModelSettings = Field(default_factory=lambda: ModelSettings(batch_size=4))
    medimageparse3d: ModelSettings = Field(
        default_factory=lambda: ModelSettings(batch_size=1, concurrency=1, timeout_s=180.0)
    )

    def get(self, name: ModelName) -> ModelSettings:
        value: ModelSettings = getattr(self, name)
        return value

    @model_validator(mode="after")
    def _credentials_safe(self) -> ModelsSettings:
        for name in MODEL_NAMES:
            problem = credential_problem(name, self.get(name))
            if problem is not None:
                raise ValueError(problem)
        for name in MODEL_NAMES:  # after the cleartext check: a leak outranks a missing extra
            if self.get(name).auth == "entra" and not module_available(ENTRA_MODULE):
                raise ValueError(
                    f"models.{name}.auth: 'entra' needs {ENTRA_MODULE}, which is not installed:"
                    " install the 'entra' extra (pip install 'pacs-ai-listener[entra]')"
                )
        return self


def credential_problem(name: str, model: ModelSettings) -> str | None:
    """Why the endpoint settings of model ``name`` would leak or lack a credential, naming the
    setting; None when they are sound.

    A key or an Entra token is never sent over cleartext: an ``http://`` endpoint with key or
    Entra auth is refused unless it is on loopback (the emulator). A real (non-loopback) endpoint
    with ``auth: key`` and no key would be answered 401 on every call, so it stops start-up.
    """
    if model.endpoint is None:
        return None
    parts = urlsplit(model.endpoint)
    local = is_loopback_host(parts.hostname or "")
    if parts.scheme == "http" and not local and (model.key is not None or model.auth == "entra"):
        what = "key" if model.auth == "key" else "Entra token"
        return (
            f"models.{name}.endpoint: an http:// endpoint would send the {what} in cleartext;"
            " use https://"
        )
    if model.auth == "key" and model.key is None and not local:
        return f"models.{name}.key: required for endpoint {model.endpoint} with auth: key"
    return None


class EmulatorSettings(_Section):
    """The built-in model emulator (never a clinical model) and its fault injection."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free loopback port")
    key: SecretStr | None = None
    accepted_keys: list[SecretStr] = Field(
        default_factory=list,
        description="further bearer values it accepts (e.g. Entra tokens); any key set: one must",
    )
    latency_ms: float = Field(default=0.0, ge=0)
    fault_rate: float = Field(default=0.0, ge=0, le=1, description="share of calls that fail")
    fault_statuses: list[int] = Field(default_factory=lambda: [408, 429, 503])
    retry_after_s: float | None = Field(default=None, ge=0)
    fault_for_s: float | None = Field(
        default=None, gt=0, description="inject faults only this long after start (an outage)"
    )
    trickle_interval_s: float | None = Field(
        default=None,
        gt=0,
        description="a fault trickles a 200 answer one byte per interval instead of an error",
    )
    max_in_flight: int = Field(default=64, ge=1)
    deployments: list[str] = Field(
        default_factory=list,
        description="deployment names it answers to (azureml-model-deployment); empty: any",
    )
    seed: int = 0
