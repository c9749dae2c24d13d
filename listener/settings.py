"""Gateway settings, built once at start-up and passed down.

Sources, highest priority first: command-line flags (applied by the CLI as init values),
environment variables (prefix ``PACSAI_``, nested delimiter ``__``, e.g.
``PACSAI_MODELS__CXRREPORTGEN__ENDPOINT``), an optional YAML settings file (``--config FILE`` or
``PACSAI_CONFIG``), then the embedded defaults. ``config/pacs-ai.example.yaml`` documents every
option. A bad value stops start-up with a :class:`~listener.errors.ConfigError` naming the setting.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from listener.errors import ConfigError
from listener.security.settings import (
    AdminTlsSettings,
    AuditSettings,
    EgressPolicy,
    TlsSettings,
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


class Settings(BaseSettings):
    """Everything the gateway needs; see ``config/pacs-ai.example.yaml`` for each option."""

    model_config = SettingsConfigDict(
        env_prefix="PACSAI_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    host: str = Field(default="0.0.0.0", description="address the DICOM listener binds to")
    port: int = Field(
        default=11112, ge=0, le=65535, description="plain DICOM port; 0: only the TLS listener"
    )
    tls: TlsSettings = Field(default_factory=TlsSettings)
    ae_titles: list[AETitle] = Field(default_factory=lambda: ["PACSAI"], min_length=1)
    data_dir: Path = Path("var")
    quiet_period_s: float = Field(default=10.0, gt=0, le=86400)
    max_study_wait_s: float | None = Field(
        default=3600.0,
        gt=0,
        description="a study is released at the latest this long after its first instance,"
        " however it keeps trickling in (None: no ceiling)",
    )
    allowed_callers: list[AllowedCaller] = Field(
        default_factory=list, description="empty: any calling AE is accepted"
    )
    max_associations: int = Field(default=64, ge=1, le=1000)
    receive_processes: int = Field(
        default=2,
        ge=1,
        le=64,
        description="receive processes sharing the one listening socket the supervisor opens",
    )
    max_pdu_size: int = Field(
        default=262144,
        ge=4096,
        le=16 * 1024 * 1024,
        description="largest P-DATA-TF PDU we announce and accept (bytes); a larger one aborts",
    )
    max_instance_mb: int = Field(
        default=2048,
        ge=1,
        description="largest instance accepted (MiB); a larger one is refused (Out of Resources)",
    )
    max_inflated_mb: int = Field(
        default=256,
        ge=1,
        description="largest inflated size of a deflated data set (MiB); larger is refused",
    )
    duplicate_conflict: Literal["success", "warning"] = Field(
        default="success",
        description="answer to a known SOP Instance UID with different content (kept aside)",
    )
    acse_timeout_s: float = Field(default=30.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    network_timeout_s: float = Field(default=120.0, gt=0)
    disk_min_free_mb: int = Field(
        default=1024, ge=0, description="below this much free space new work is refused"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    poll_interval_s: float = Field(default=0.5, gt=0, le=60)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    emulator: EmulatorSettings = Field(default_factory=EmulatorSettings)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=8080, ge=0, le=65535)
    admin_token: SecretStr | None = None
    admin_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="host names the admin API answers to besides loopback names and admin_host"
        " (the Host header; DNS rebinding defence); '*' answers any",
    )
    admin_tls: AdminTlsSettings = Field(default_factory=AdminTlsSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    rules_file: Path | None = None
    destinations: dict[str, Destination] = Field(
        default_factory=dict,
        description="named DICOM peers; the rules' results and forwards refer to them by name",
    )
    dicomweb_ae_title: AETitle = Field(
        default="DICOMWEB",
        description="the calling AE title STOW-RS uploads are admitted (allowed_callers) and"
        " recorded under",
    )
    priors: PriorsSettings = Field(default_factory=PriorsSettings)
    send_retry_base_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="first backoff of a failed send; doubles, max 15 min",
    )
    send_max_attempts: int | None = Field(
        default=None, ge=1, description="transient send failures before dead-letter (None: never)"
    )
    send_max_age_s: float | None = Field(
        default=86400.0,
        gt=0,
        description="a send failing transiently this long after it was queued is dead-lettered"
        " (None: never)",
    )
    retention_originals_s: float | None = Field(
        default=7 * 86400.0,
        gt=0,
        description="received instances are deleted this long after their study settled"
        " (no job or send needs them); None: kept forever",
    )
    retention_results_s: float | None = Field(
        default=30 * 86400.0, gt=0, description="result objects, the same way; None: forever"
    )
    retention_quarantine_s: float | None = Field(
        default=30 * 86400.0,
        gt=0,
        description="quarantined data files this long after they were set aside; None: forever",
    )
    retention_interval_s: float = Field(
        default=300.0, gt=0, le=86400, description="how often retention looks for what may go"
    )
    job_runners: int = Field(default=2, ge=1, le=64, description="job-runner processes")
    jobs_per_runner: int = Field(
        default=4, ge=1, le=64, description="concurrent jobs per job runner"
    )
    job_lease_s: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="a running job's lease; its runner renews it every third of this",
    )
    job_max_age_s: float = Field(
        default=86400.0,
        gt=0,
        description="a job still waiting for a model at this age is canceled with its last cause",
    )
    job_retry_base_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="first wait after a transient job failure; doubles, max 10 min; a later"
        " Retry-After or circuit-breaker probe time wins",
    )

    @model_validator(mode="after")
    def _some_listener(self) -> Settings:
        if self.port == 0 and not self.tls.enabled:
            raise ValueError("port: 0 turns the plain listener off, which needs tls.cert_file")
        return self

    @field_validator("ae_titles")
    @classmethod
    def _unique_titles(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("AE titles must be unique")
        return value

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def journal_path(self) -> Path:
        return self.data_dir / "journal.sqlite"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("PACSAI_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


ENV_PREFIX = "PACSAI_"
ENV_DELIMITER = "__"
ENV_NOT_SETTINGS = frozenset({"PACSAI_CONFIG"})  # read by load_settings itself


def _model_of(annotation: Any) -> Any:
    """The settings model an annotation holds (``X``, ``X | None``), or None."""
    if get_origin(annotation) in (Union, types.UnionType):
        found = [_model_of(arg) for arg in get_args(annotation)]
        return next((model for model in found if model is not None), None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _env_problem(name: str) -> str | None:
    """Why ``name`` (a PACSAI_* variable) names no setting, with the nearest valid name; None when
    it names one. Walks the nested delimiter through sections and named maps (destinations)."""
    parts = name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER)
    model: Any = Settings
    done: list[str] = []
    index = 0
    while index < len(parts):
        part = parts[index]
        fields: Mapping[str, Any] = model.model_fields
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.6)
            if not close:
                return f"{name}: unknown setting (see config/pacs-ai.example.yaml)"
            fixed = ENV_DELIMITER.join([*done, close[0], *parts[index + 1 :]]).upper()
            return f"{name}: unknown setting, did you mean {ENV_PREFIX}{fixed}?"
        done.append(part)
        annotation = fields[part].annotation
        index += 1
        if get_origin(annotation) is dict:
            if index < len(parts):  # the key of a named map (a destination's name): any name
                done.append(parts[index])
                index += 1
            annotation = get_args(annotation)[1]
        model = _model_of(annotation)
        if model is None and index < len(parts):
            return f"{name}: {'.'.join(done)} is set as a whole, not part by part"
    return None


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """A message per ``PACSAI_*`` variable that names no setting (a typo would otherwise be
    ignored silently: ``PACSAI_PROT`` leaves the port at its default)."""
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in ENV_NOT_SETTINGS:
            problem = _env_problem(upper)
            if problem is not None:
                problems.append(problem)
    return problems


def _setting_name(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(settings)"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, raising ConfigError whose message names every bad setting, every
    ``PACSAI_*`` environment variable that names none, and every optional extra a setting needs
    but is not installed: all found here, at start-up, never later in a child process.

    ``overrides`` are command-line values; ``None`` means "not given" and is dropped.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = unknown_environment(os.environ)
    if unknown:
        raise ConfigError("; ".join(unknown))
    previous = os.environ.get("PACSAI_CONFIG")
    try:
        if config_file is not None:
            if not config_file.is_file():
                raise ConfigError(f"config: settings file {config_file} does not exist")
            os.environ["PACSAI_CONFIG"] = str(config_file)
        return Settings(**given)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = _setting_name(error["loc"])
            secret = any(
                str(part).endswith(("key", "token", "password", "auth")) for part in error["loc"]
            ) or isinstance(error.get("input"), dict)  # a section's values may hold secrets
            shown = "" if secret else f" (got {error.get('input')!r})"
            problems.append(f"{name}: {error['msg']}{shown}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
    finally:
        if config_file is not None:
            if previous is None:
                os.environ.pop("PACSAI_CONFIG", None)
            else:
                os.environ["PACSAI_CONFIG"] = previous
