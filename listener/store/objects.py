"""The spool's shared copy in an S3 bucket, and the one way readers get a spool file.

With ``spool_url: s3://bucket/prefix`` every received instance is also an object under
``prefix`` whose key is the spool's relative path (``<study>/<series>/<sop>.dcm``), so a worker
on another host reads what a receiver stored; result objects follow under ``results/``. Readers
never talk to the bucket themselves: they pass the path they want to :meth:`SpoolFiles.local`,
which returns it at once when the file is on this host and otherwise downloads the object into
the local folder first (the local spool is the cache; a download lands under ``.tmp`` and is
renamed into place, so a reader never sees half a file). Only the S3 API's core calls are used
(PutObject and multipart upload, GetObject, HeadObject, ListObjectsV2, DeleteObjects), no vendor
extension, through boto3 (imported only when a bucket is configured: the local default does not
pay for it).

Credentials are ``s3.access_key_id`` and ``s3.secret_access_key`` (or boto3's own chain when
unset); an error the bucket answers about them names the setting and never carries its value.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from listener.errors import ConfigError, ObjectMissingError, ObjectStoreError
from listener.logging import get_logger
from listener.settings import S3Settings, Settings
from listener.settings.storage import split_spool_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

TMP_DIR = ".tmp"
MULTIPART_FROM = 8 * 1024 * 1024  # boto3's own multipart threshold
RESULTS_KEY = "results"  # result objects' keys: <prefix>/results/<study>/<sop>.dcm
_DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes

# Error codes of the S3 API (Amazon S3 API Reference, "Error responses") that mean the
# credentials are wrong, and the setting an operator fixes for each.
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId": "s3.access_key_id",
    "SignatureDoesNotMatch": "s3.secret_access_key",
    "AccessDenied": "s3.access_key_id and s3.secret_access_key (access denied)",
    "InvalidToken": "s3.access_key_id",
}


@dataclass(frozen=True)
class Bucket:
    """Where the objects go: ``name`` and the key prefix (no slashes around it)."""

    name: str
    prefix: str

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative


class ObjectStore:
    """The S3 bucket of ``spool_url``: put, get and delete spool files by their relative path."""

    def __init__(self, spool_url: str, s3: S3Settings) -> None:
        self.bucket = Bucket(*split_spool_url(spool_url))
        self.endpoint = s3.endpoint_url or "AWS S3"
        key_id, secret = s3.access_key_id, s3.secret_access_key
        import boto3
        from boto3.exceptions import S3UploadFailedError
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        self._client_error = ClientError
        self._errors: tuple[type[Exception], ...] = (
            ClientError,
            BotoCoreError,
            S3UploadFailedError,
        )
        self._client: S3Client = boto3.session.Session().client(
            "s3",
            endpoint_url=s3.endpoint_url,
            region_name=s3.region or "us-east-1",
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path"},  # works for every S3 API and bucket name
            ),
        )

    def check(self) -> None:
        """Reach the bucket once (ListObjectsV2 of one key: unlike HeadBucket its error
        answer has a body, so a wrong key and a wrong secret are told apart)."""
        try:
            self._client.list_objects_v2(
                Bucket=self.bucket.name, Prefix=self.bucket.key(""), MaxKeys=1
            )
        except self._errors as exc:
            raise self._error(exc, "reach the bucket", None) from None

    def put(self, relative: str, path: Path) -> None:
        """Upload the file at ``path`` as the object of ``relative``: one PutObject (with a
        checksum the service verifies) or, from :data:`MULTIPART_FROM` bytes, a multipart upload;
        either is visible only once complete."""
        key = self.bucket.key(relative)
        try:
            if path.stat().st_size < MULTIPART_FROM:
                with path.open("rb") as body:
                    self._client.put_object(Bucket=self.bucket.name, Key=key, Body=body)
            else:
                self._client.upload_file(str(path), self.bucket.name, key)
        except OSError as exc:
            raise ObjectStoreError(f"could not read {relative} to upload it: {exc}") from None
        except self._errors as exc:
            raise self._error(exc, "upload", relative) from None

    def get(self, relative: str, destination: Path) -> None:
        """Download the object of ``relative`` to ``destination`` (overwritten)."""
        try:
            self._client.download_file(
                self.bucket.name, self.bucket.key(relative), str(destination)
            )
        except self._errors as exc:
            raise self._error(exc, "download", relative) from None

    def read(self, relative: str) -> bytes:
        """The bytes of the object of ``relative`` (small objects, checks)."""
        try:
            answer = self._client.get_object(Bucket=self.bucket.name, Key=self.bucket.key(relative))
            return answer["Body"].read()
        except self._errors as exc:
            raise self._error(exc, "download", relative) from None

    def exists(self, relative: str) -> bool:
        """Whether the object of ``relative`` is in the bucket."""
        try:
            self._client.head_object(Bucket=self.bucket.name, Key=self.bucket.key(relative))
        except self._errors as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(exc, "look up", relative) from None
        return True

    def keys(self, under: str) -> list[str]:
        """Every key below ``under`` (relative to the prefix, as given to :meth:`put`)."""
        start = self.bucket.key(under)
        found: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket.name, Prefix=start
            )
            for page in pages:
                found += [str(item.get("Key", "")) for item in page.get("Contents", [])]
        except self._errors as exc:
            raise self._error(exc, "list", under) from None
        head = len(self.bucket.key(""))
        return [key[head:] for key in found]

    def delete(self, relatives: Iterable[str]) -> int:
        """Delete the objects of ``relatives`` (absent ones count as deleted); how many."""
        keys = [self.bucket.key(r) for r in relatives]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            try:
                answer = self._client.delete_objects(
                    Bucket=self.bucket.name,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except self._errors as exc:
                raise self._error(exc, "delete", None) from None
            errors = answer.get("Errors", [])
            if errors:
                raise ObjectStoreError(
                    f"spool bucket {self.bucket.name}: {len(errors)} objects not deleted"
                    f" ({errors[0].get('Code')})"
                )
        return len(keys)

    def _error(self, exc: Exception, action: str, relative: str | None) -> ObjectStoreError:
        """The error to raise for ``exc``: the setting at fault for a credential refusal, the
        S3 error code or the connection problem otherwise; never a credential."""
        where = f"spool bucket {self.bucket.name} at {self.endpoint}"
        what = f" ({relative})" if relative else ""
        cause = exc.__cause__ or exc.__context__  # boto3's transfer manager wraps the answer
        if not isinstance(exc, self._client_error) and isinstance(cause, self._client_error):
            exc = cause
        code = _code(exc)
        if code is not None:
            setting = _CREDENTIAL_CODES.get(code)
            if setting is not None:
                return ObjectStoreError(
                    f"{where} refused the credentials ({code}): check {setting}", setting
                )
            if relative is not None and code in ("NoSuchKey", "404", "NotFound"):
                return ObjectMissingError(f"{where}: no object for {relative}")
            if code in ("NoSuchBucket", "404"):
                return ObjectStoreError(
                    f"{where}: the bucket does not exist: check spool_url", "spool_url"
                )
            return ObjectStoreError(f"{where}: could not {action}{what}: {code}")
        return ObjectStoreError(f"{where}: could not {action}{what}: {type(exc).__name__}")


def _code(exc: Exception) -> str | None:
    """The S3 error code of an answer (botocore's ClientError), None for other failures."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    return str(response.get("Error", {}).get("Code", "unknown"))


class SpoolFiles:
    """Spool files and result objects for reading on any host (see the module docstring).

    Result objects (``results_root``, written by a job runner on whatever host ran the job)
    go to the bucket under ``results/<study>/<sop>.dcm`` (:meth:`publish`), so a deliverer on
    another host can send them; no study UID is ``results``, so the keys never meet.
    """

    def __init__(
        self, root: Path, store: ObjectStore | None = None, results_root: Path | None = None
    ) -> None:
        self.root = root
        self.store = store
        self.results_root = results_root

    def key(self, path: Path) -> str | None:
        """The object key (below the prefix) of a spool file or result object; None for any
        other path."""
        for root, head in ((self.root, ""), (self.results_root, f"{RESULTS_KEY}/")):
            if root is not None and path.is_relative_to(root):
                return head + path.relative_to(root).as_posix()
        return None

    def local(self, path: Path) -> Path:
        """``path``, downloaded from the bucket first when it is not on this host (into a
        temporary file under the spool's ``.tmp``, then renamed into place). A path that is
        neither a spool file nor a result object is returned as it is."""
        key = self.key(path) if self.store is not None else None
        if self.store is None or key is None or path.exists():
            return path
        tmp = self.root / TMP_DIR
        tmp.mkdir(parents=True, exist_ok=True)
        part = tmp / f"{uuid.uuid4().hex}.fetch"
        try:
            self.store.get(key, part)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
        return path

    def publish(self, path: Path) -> None:
        """Upload a result object just written, before it is queued for sending (a failure
        is an ObjectStoreError: the job is retried)."""
        key = self.key(path)
        if self.store is not None and key is not None:
            self.store.put(key, path)


def object_store(settings: Settings) -> ObjectStore | None:
    """The spool bucket of ``settings``, or None for the local folder alone."""
    if settings.spool_url is None:
        return None
    return ObjectStore(settings.spool_url, settings.s3)


def spool_files(settings: Settings) -> SpoolFiles:
    """The reader of this host's spool and results, with the bucket when there is one."""
    return SpoolFiles(settings.spool_dir, object_store(settings), settings.data_dir / "results")


def check_spool_bucket(settings: Settings) -> None:
    """Stop start-up with a ConfigError naming the setting when the bucket refuses the
    credentials or does not exist; an unreachable bucket is only logged (``s3.ack: local``
    keeps receiving, the uploads wait)."""
    store = object_store(settings)
    if store is None:
        return
    try:
        store.check()
    except ObjectStoreError as exc:
        if exc.setting is not None:
            raise ConfigError(str(exc)) from None
        get_logger("uploads").warning("spool_bucket_unreachable", error=str(exc))
