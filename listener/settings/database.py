"""Where the journal database lives: the ``database_url`` setting, parsed once and never shown
with its password.

Two engines: a SQLite file (the embedded default, ``journal.sqlite`` in the data folder, or
``sqlite:///PATH``) and PostgreSQL (``postgresql://USER:PASSWORD@HOST:PORT/DATABASE?OPTIONS``,
libpq's URI form, https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING-URIS;
``postgres://`` and SQLAlchemy's ``postgresql+psycopg://`` are read as the same). Everything that
needs a database (the journal, later the job engine's own tables) takes a :class:`DatabaseUrl`,
so the one setting says it for all of them; :meth:`DatabaseUrl.sibling` names a second SQLite
file beside the journal for a store that must not share the journal's file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


class Engine(StrEnum):
    """The database engines the journal runs on."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed ``database_url``. ``str()`` and ``repr()`` hide the password; only
    :meth:`secret` returns the whole connection string, for the driver."""

    engine: Engine
    path: Path | None = None  # the SQLite file
    _secret: str = field(default="", repr=False)  # the libpq URI, password included
    shown: str = ""  # the URL with its password replaced by ***

    @classmethod
    def sqlite(cls, path: Path) -> DatabaseUrl:
        """The SQLite file at ``path``."""
        return cls(Engine.SQLITE, path, "", f"sqlite:///{path}")

    @classmethod
    def parse(cls, value: str, *, setting: str = "database_url") -> DatabaseUrl:
        """Read ``value``; ValueError naming ``setting`` (never the password) when it is not a
        SQLite or PostgreSQL URL."""
        text = value.strip()
        try:
            parts = urlsplit(text)
            port = parts.port  # raises on a port that is not a number
        except ValueError:
            raise ValueError(f"{setting}: not a URL ({_redacted_text(text)})") from None
        scheme = parts.scheme.lower()
        if scheme == "sqlite":
            where = unquote(parts.path)
            if parts.netloc or not where.startswith("/") or where == "/":
                raise ValueError(f"{setting}: a SQLite URL is sqlite:///PATH (got {text})")
            # sqlite:////abs/path is absolute, sqlite:///rel/path relative (SQLAlchemy's reading)
            return cls.sqlite(Path(where[1:]))
        if scheme in _POSTGRES_SCHEMES:
            if not parts.hostname and "host=" not in parts.query:
                raise ValueError(
                    f"{setting}: a PostgreSQL URL names a host, as in"
                    f" postgresql://USER:PASSWORD@HOST:5432/DATABASE (got {_redact(text)})"
                )
            del port
            secret = urlunsplit(("postgresql", *parts[1:]))
            return cls(Engine.POSTGRESQL, None, secret, _redact(secret))
        raise ValueError(
            f"{setting}: use sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
            f" (got a {scheme or 'scheme-less'} URL)"
        )

    def secret(self) -> str:
        """The connection string with its password: for the driver only, never for output."""
        return self._secret

    def sibling(self, name: str) -> DatabaseUrl:
        """For SQLite, the file ``name`` in the journal's folder; for PostgreSQL, the same
        database (one server holds every table)."""
        if self.engine is Engine.SQLITE and self.path is not None:
            return DatabaseUrl.sqlite(self.path.parent / name)
        return self

    def __str__(self) -> str:
        return self.shown

    def __repr__(self) -> str:
        return f"DatabaseUrl({self.shown!r})"


def _redact(url: str) -> str:
    """``url`` with the password of its user part, and any ``password=`` option, as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        netloc = f"{user}@{host}"
    query = "&".join(
        f"{key}=***" if key.lower() == "password" else item
        for item in parts.query.split("&")
        if item
        for key in [item.split("=", 1)[0]]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redacted_text(text: str) -> str:
    """A string that failed to parse as a URL, with anything between ``:`` and ``@`` hidden."""
    head, at, tail = text.rpartition("@")
    if not at:
        return text
    scheme, sep, user = head.partition("://")
    return f"{scheme}{sep}{user.split(':', 1)[0]}:***@{tail}" if sep else f"***@{tail}"
