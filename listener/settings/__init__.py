"""Gateway settings, built once at start-up and passed down.

Sources, highest priority first: command-line flags (applied by the CLI as init values),
environment variables (prefix ``PACSAI_``, nested delimiter ``__``, e.g.
``PACSAI_MODELS__CXRREPORTGEN__ENDPOINT``), an optional YAML settings file (``--config FILE`` or
``PACSAI_CONFIG``), then the embedded defaults. ``config/pacs-ai.example.yaml`` documents every
option. A bad value stops start-up with a :class:`~listener.errors.ConfigError` naming the setting.
"""

from __future__ import annotations

import difflib
import os
import socket
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from listener.errors import ConfigError
from listener.security.settings import AdminTlsSettings, AuditSettings, TlsSettings
from listener.settings.database import DatabaseUrl
from listener.settings.sections import (
    ENTRA_MODULE as ENTRA_MODULE,
)
from listener.settings.sections import (
    MODEL_NAMES as MODEL_NAMES,
)
from listener.settings.sections import (
    AETitle as AETitle,
)
from listener.settings.sections import (
    AllowedCaller as AllowedCaller,
)
from listener.settings.sections import (
    Destination as Destination,
)
from listener.settings.sections import (
    DriftSettings as DriftSettings,
)
from listener.settings.sections import (
    EmulatorSettings as EmulatorSettings,
)
from listener.settings.sections import (
    ModelName as ModelName,
)
from listener.settings.sections import (
    ModelSettings as ModelSettings,
)
from listener.settings.sections import (
    ModelsSettings as ModelsSettings,
)
from listener.settings.sections import (
    Port as Port,
)
from listener.settings.sections import (
    PriorsSettings as PriorsSettings,
)
from listener.settings.sections import (
    WebAuth as WebAuth,
)

# PS3.5 §6.2: AE is up to 16 characters of the default repertoire, no backslash, no control
# characters; leading/trailing spaces are not significant, so an all-space title is invalid.
from listener.settings.sections import (
    check_ae_title as check_ae_title,
)
from listener.settings.sections import (
    credential_problem as credential_problem,
)
from listener.settings.sections import (
    module_available as module_available,
)
from listener.settings.storage import S3Settings as S3Settings
from listener.settings.storage import split_spool_url


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
    database_url: SecretStr | None = Field(
        default=None,
        description="the journal's database: unset, the SQLite file journal.sqlite in data_dir;"
        " postgresql://USER:PASSWORD@HOST:PORT/DATABASE puts its tables in that PostgreSQL"
        " database (receivers and workers on several hosts share it); sqlite:///PATH another"
        " SQLite file",
    )
    spool_url: str | None = Field(
        default=None,
        description="s3://bucket/prefix: every instance is also kept in that bucket (see s3);"
        " None: the local folder data_dir/spool only",
    )
    s3: S3Settings = Field(default_factory=S3Settings)
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
    receive_engine: Literal["fast", "stock"] = Field(
        default="fast",
        description="how C-STORE is served: fast (P-DATA read and answered as bytes, streamed to"
        " the spool; relies on pynetdicom 3.0 internals) or stock (pynetdicom's own DIMSE layer"
        " and EVT_C_STORE handler); both feed the same intake",
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
    drift: DriftSettings = Field(default_factory=DriftSettings)
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
    role: Literal["all", "receive", "work"] = Field(
        default="all",
        description="what this host runs: receive (DICOM and DICOMweb intake only), work"
        " (release, jobs, sends), or all of it",
    )
    executor_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
        description="this host's stable name among the gateway's hosts (lease owners are"
        " executor_id:pid); None: the host name",
    )
    executor_timeout_s: float = Field(
        default=30.0,
        ge=3,
        le=3600,
        description="a process whose heartbeat is this old is taken for dead and its jobs"
        " are released for another to run",
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

    @field_validator("spool_url")
    @classmethod
    def _spool_url(cls, value: str | None) -> str | None:
        if value is not None:
            split_spool_url(value)
        return value

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

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            DatabaseUrl.parse(value.get_secret_value())  # ValueError names the setting
        return value

    @property
    def journal_path(self) -> Path:
        """The embedded default journal file (also where ``sqlite:///`` points when given)."""
        database = self.journal_database
        return database.path if database.path is not None else self.data_dir / "journal.sqlite"

    @property
    def journal_database(self) -> DatabaseUrl:
        """Where the journal's tables live (``database_url``, parsed; its ``str`` hides the
        password)."""
        if self.database_url is None:
            return DatabaseUrl.sqlite(self.data_dir / "journal.sqlite")
        return DatabaseUrl.parse(self.database_url.get_secret_value())

    @property
    def executor(self) -> str:
        """The executor id of this host: ``executor_id``, or the host name."""
        return self.executor_id or socket.gethostname()

    @property
    def receives(self) -> bool:
        """Whether this host takes in studies (role ``receive`` or ``all``)."""
        return self.role in ("all", "receive")

    @property
    def works(self) -> bool:
        """Whether this host releases studies, runs jobs and sends (role ``work`` or ``all``)."""
        return self.role in ("all", "work")

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
                str(part).endswith(("key", "key_id", "token", "password", "auth", "database_url"))
                for part in error["loc"]
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
