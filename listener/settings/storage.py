"""Where the spool lives: the local folder (the default) or an S3 bucket shared by every host.

``spool_url: s3://bucket/prefix`` keeps every received instance as an object under ``prefix``
(key ``<prefix>/<study>/<series>/<sop>.dcm``, the spool's relative path) besides the local
folder, which stays the durable first copy and becomes a cache on hosts that only read.
``s3.ack`` says when a C-STORE or STOW-RS instance is answered: ``local`` once the local write is
durable (the upload follows, a journal state, retried until it succeeds), ``uploaded`` only once
the object is in the bucket.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from listener.security.settings import is_loopback_host

# S3 bucket naming rules (lower case, digits, dots and hyphens, 3 to 63 characters).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class S3Settings(BaseModel):
    """The S3 service of ``spool_url: s3://...`` (any S3 API: AWS, SeaweedFS, Ceph...)."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = Field(
        default=None, description="the S3 API's URL; None: AWS for the region"
    )
    region: str | None = Field(default=None, description="signing region; None: us-east-1")
    access_key_id: SecretStr | None = Field(
        default=None, description="None: boto3's own credential chain (never logged)"
    )
    secret_access_key: SecretStr | None = Field(default=None, description="never logged")
    ack: Literal["local", "uploaded"] = Field(
        default="local",
        description="answer a received instance once it is durable on the local disk (upload"
        " follows, retried) or only once it is in the bucket",
    )
    upload_retry_base_s: float = Field(
        default=2.0, gt=0, le=3600, description="first wait after a failed upload; doubles"
    )
    upload_retry_max_s: float = Field(
        default=300.0, gt=0, le=86400, description="longest wait between upload attempts"
    )

    @model_validator(mode="after")
    def _no_cleartext_key(self) -> S3Settings:
        if self.endpoint_url is None:
            return self
        parts = urlsplit(self.endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("s3.endpoint_url: must be an http:// or https:// URL")
        keyed = self.access_key_id is not None or self.secret_access_key is not None
        if parts.scheme == "http" and keyed and not is_loopback_host(parts.hostname):
            raise ValueError(
                "s3.endpoint_url: an http:// endpoint would send s3.access_key_id and"
                " s3.secret_access_key in cleartext; use https://"
            )
        return self


def split_spool_url(url: str) -> tuple[str, str]:
    """The bucket and key prefix (no leading or trailing slash) of ``s3://bucket/prefix``;
    ValueError naming ``spool_url`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError("spool_url: only s3://bucket/prefix is supported (or none: local)")
    if not _BUCKET_RE.match(parts.netloc):
        raise ValueError(f"spool_url: {parts.netloc!r} is not a valid S3 bucket name")
    if parts.query or parts.fragment:
        raise ValueError("spool_url: no query or fragment")
    return parts.netloc, parts.path.strip("/")
