"""A throwaway PostgreSQL server for tests: Debian's ``initdb`` and ``pg_ctl`` in a temporary
folder, listening on a free loopback port, with a password so the URL carries one (and tests can
check that it never shows)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from peers import free_port

from listener.settings.database import DatabaseUrl

PASSWORD = "s3cret-pw-do-not-log"


def _bin(tool: str) -> str:
    """A PostgreSQL server tool: on PATH, else the newest under /usr/lib/postgresql."""
    found = shutil.which(tool)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not versions:
        raise RuntimeError("PostgreSQL server missing: run scripts/install-system-deps")
    return str(versions[-1] / tool)


@dataclass
class PostgresServer:
    """A running cluster: a superuser ``pacsai`` with :data:`PASSWORD` on 127.0.0.1:``port``."""

    port: int
    folder: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://pacsai:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> DatabaseUrl:
        """A fresh, empty database on this server."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return DatabaseUrl.parse(self.url(name))


def _as_owner() -> list[str]:
    """The command prefix that runs a server tool as a user it accepts: PostgreSQL refuses to
    run as root, so under root (a container) it runs as the Debian package's ``postgres``."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@contextmanager
def run_postgres(*, durable: bool = False) -> Iterator[PostgresServer]:
    """Start a cluster in a new temporary folder (initdb, then pg_ctl start); stop it and remove
    the folder on exit. Tests run it without fsync; ``durable`` (benchmarks) keeps fsync and
    leaves only the commit flush asynchronous, as the SQLite journal's ``synchronous=NORMAL``
    does (a commit survives a crash of the process, a power cut may lose the last ones)."""
    folder = Path(tempfile.mkdtemp(prefix="pacsai-pg-"))
    data = folder / "data"
    pwfile = folder / "pw"
    pwfile.write_text(PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(pwfile, "postgres")
    env = dict(os.environ, LC_ALL="C.UTF-8")
    try:
        yield from _serve(folder, data, pwfile, env, durable)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _serve(
    folder: Path, data: Path, pwfile: Path, env: dict[str, str], durable: bool
) -> Iterator[PostgresServer]:
    subprocess.run(
        [*_as_owner(), _bin("initdb"), "-D", str(data), "-U", "pacsai", "--pwfile", str(pwfile),
         "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    port = free_port()
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
    options += " -c synchronous_commit=off"
    if not durable:
        options += " -c fsync=off -c full_page_writes=off"
    subprocess.run(
        [*_as_owner(), _bin("pg_ctl"), "-D", str(data), "-o", options,
         "-l", str(folder / "log"), "-w", "start"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    try:
        yield PostgresServer(port, folder)
    finally:
        subprocess.run(
            [*_as_owner(), _bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True, env=env,
        )  # fmt: skip


def database_setting(journal_db: Path | DatabaseUrl) -> dict[str, str]:
    """The ``database_url`` setting that puts a gateway's journal where ``journal_db`` is (none
    for SQLite: the embedded default in the data folder)."""
    return {"database_url": journal_db.secret()} if isinstance(journal_db, DatabaseUrl) else {}
