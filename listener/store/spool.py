"""The spool: received instances on disk, written so that a crash never leaves a partial file.

Layout under the spool root::

    .tmp/<random>.part            being written; removed at start-up (never a visible instance)
    <study>/<series>/<sop>.dcm    complete DICOM files (PS3.10 file format), as received

An instance is streamed into ``.tmp`` as it arrives (:class:`Incoming`, never held whole in
memory), fsynced, then *linked* to its final name: ``link(2)`` fails when the name exists, so of
two senders of the same SOP Instance UID exactly one claims the name and an acknowledged file is
never replaced. The directory is fsynced; only then is the instance recorded in the journal (with
the file's size and SHA-256) and the C-STORE answered. Instances that cannot be stored go to the
quarantine folder with a JSON reason file (no patient data in it).

Where the file system offers it (Linux ``O_TMPFILE``: ext4, XFS, btrfs, tmpfs), the temporary
file has no name at all: it is an open inode in ``.tmp`` that ``linkat(2)`` names, so no
directory entry is created in ``.tmp`` and none removed after the claim, and a crash leaves
nothing there. Elsewhere it is a named ``.part`` file, removed at start-up if a crash left it.

Why an acknowledged instance survives a power cut (the order of the steps above):

1. ``fsync`` of the file makes its data and inode durable, before it has its final name, so a
   name that survives a crash never points to a partial file.
2. ``linkat`` creates the name in the series folder; the ``fsync`` of that folder makes the name
   durable (POSIX leaves a new directory entry volatile until its directory is synced). A series
   or study folder created for the instance is itself an entry in its parent: each new folder's
   parent is fsynced once, when the folder is made, not per instance.
3. Only then is the instance journaled and answered. The journal commit is not synced (WAL,
   ``synchronous=NORMAL``): a commit lost in a power cut is rebuilt from the spool at start-up
   (:func:`reindex`), so the spool file and its name are the only things that must be durable
   before the answer: two ``fsync`` calls per instance, one more per new folder.

Nothing else needs a sync: the temporary file's name (none with ``O_TMPFILE``) is never what
an acknowledgement relies on.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from listener.errors import (
    InvalidDatasetError,
    StorageFullError,
)
from listener.store.header import (
    DEFAULT_MAX_INFLATED,
    FileSender,
    InstanceHeader,
    encode_file_meta,
    file_sender,
    is_uid,
    meta_end,
    read_file_header,
    read_header,
    split_file,
    uid_problem,
    walk_dataset,
)
from listener.store.journal import AssociationRecord, Journal
from listener.timing import utc_text

if TYPE_CHECKING:
    from listener.store.uploads import SharedSpool

__all__ = [
    "DEFAULT_MAX_INFLATED",
    "Incoming",
    "InstanceHeader",
    "Spool",
    "encode_file_meta",
    "file_digest",
    "is_uid",
    "read_file_header",
    "read_header",
    "reindex",
    "split_file",
    "uid_problem",
    "walk_dataset",
]

TMP_DIR = ".tmp"
_WRITE_BUFFER = 1 << 20
_CHUNK = 1 << 20


class Incoming:
    """One instance being received into ``.tmp``, written as it arrives, never held whole.

    The file meta (PS3.10 §7.1) goes first, then the data set's fragments as the DUL reads them
    (PS3.8 Annex E); the SHA-256 of the file is taken on the way. Past ``limit`` bytes nothing
    more is written (the instance will be refused), but ``size`` keeps counting.
    """

    def __init__(
        self, path: Path, meta: bytes, limit: int, *, linker: Linker | None = None
    ) -> None:
        self.meta_length = len(meta)
        self.limit = limit
        self.size = 0
        self._hash = hashlib.sha256()
        self._named = path
        self._linker = linker
        self._fd = _open_unnamed(path.parent) if linker is not None else None
        if self._fd is None:
            self._file: BinaryIO | None = path.open("wb", buffering=_WRITE_BUFFER)
        else:
            self._file = os.fdopen(os.dup(self._fd), "wb", buffering=_WRITE_BUFFER)
        self.write(meta)

    @property
    def path(self) -> Path:
        """Where the file can be opened: its ``.part`` name, or for an unnamed (``O_TMPFILE``)
        file its descriptor's entry under ``/proc/self/fd`` while it is open."""
        if self._fd is not None:
            return Path(f"/proc/self/fd/{self._fd}")
        return self._named

    @property
    def unnamed(self) -> bool:
        """Whether the file is an ``O_TMPFILE`` inode that only a link can name."""
        return self._fd is not None

    def link(self, target: Path) -> None:
        """Give the finished file the name ``target``; FileExistsError when it exists (the
        exclusive claim: ``link(2)``, or ``linkat(2)`` of the unnamed inode)."""
        if self._fd is not None and self._linker is not None:
            self._linker(self._fd, target)
        else:
            os.link(self._named, target)

    @property
    def over_limit(self) -> bool:
        return self.size > self.limit

    @property
    def digest(self) -> str:
        """SHA-256 of what was written, hex (the whole file once it is closed)."""
        return self._hash.hexdigest()

    def write(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self._file is None or self.size > self.limit:
            return
        self._file.write(chunk)
        self._hash.update(chunk)

    def close(self, *, durable: bool = True) -> None:
        """Flush (and fsync, when ``durable``) the file; idempotent."""
        handle, self._file = self._file, None
        if handle is None:
            return
        try:
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        finally:
            handle.close()

    def discard(self) -> None:
        """Close and remove the temporary file (an unnamed one goes with its descriptor)."""
        try:
            self.close(durable=False)
        finally:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)
            else:
                self._named.unlink(missing_ok=True)

    def header(self, transfer_syntax: str, *, max_inflated: int) -> InstanceHeader:
        """The identifying attributes of the data set written so far (see :func:`read_header`)."""
        self.close()
        return read_file_header(
            self.path,
            transfer_syntax,
            start=self.meta_length,
            max_inflated=max_inflated,
            scratch_dir=self._named.parent,
        )


def file_digest(path: Path, *, start: int = 0) -> str:
    """SHA-256 (hex) of the file from ``start`` on, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(start)
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _open_unnamed(folder: Path) -> int | None:
    """A descriptor of a new unnamed file in ``folder`` (``O_TMPFILE``, Linux 3.11+), or None
    where the platform or file system does not offer it (the caller names a file instead)."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag:
        return None
    try:
        return os.open(folder, flag | os.O_RDWR | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None
        raise


Linker = Callable[[int, Path], None]
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000  # linux/fcntl.h


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _link_empty_path(fd: int, target: Path) -> None:
    """``linkat(fd, "", AT_FDCWD, target, AT_EMPTY_PATH)``: name an open inode directly."""
    libc = _libc()
    if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(target), _AT_EMPTY_PATH) != 0:
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), str(target))
        raise OSError(code, os.strerror(code), str(target))


def _link_proc(fd: int, target: Path) -> None:
    """``linkat`` of ``/proc/self/fd/N`` with ``AT_SYMLINK_FOLLOW`` (needs no privilege)."""
    os.link(f"/proc/self/fd/{fd}", target, follow_symlinks=True)


def unnamed_linker(folder: Path) -> Linker | None:
    """How unnamed files in ``folder`` can be given a name, found by trying it once; None where
    ``O_TMPFILE`` or both ways of linking it are unavailable (named ``.part`` files then).

    ``AT_EMPTY_PATH`` needs ``CAP_DAC_READ_SEARCH``; the ``/proc`` way needs ``/proc`` and is
    refused by some sandboxes. Either gives the same exclusive link.
    """
    if not Path("/proc/self/fd").is_dir():  # the open file is read back through it
        return None
    for linker in (_link_empty_path, _link_proc):
        try:
            fd = _open_unnamed(folder)
        except OSError:  # e.g. a read-only spool opened by a command that only reads it
            return None
        if fd is None:
            return None
        probe = folder / f"probe-{uuid.uuid4().hex}"
        try:
            linker(fd, probe)
        except OSError:
            continue
        finally:
            os.close(fd)
        probe.unlink(missing_ok=True)
        return linker
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable writes of received instances under one root folder."""

    def __init__(
        self,
        root: Path,
        quarantine: Path,
        *,
        min_free_mb: int = 0,
        shared: SharedSpool | None = None,
    ) -> None:
        self.root = root
        # The S3 bucket a claimed instance goes to (listener.store.uploads); None: local only.
        self.shared = shared
        self.quarantine_dir = quarantine
        self.min_free_mb = min_free_mb
        self.tmp = root / TMP_DIR
        for folder in (self.root, self.tmp, self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._linker = unnamed_linker(self.tmp)

    def clean_temporary(self) -> int:
        """Remove files a crash left in ``.tmp``; return how many. Call before receiving."""
        removed = 0
        for path in self.tmp.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def free_mb(self) -> float:
        """Free space on the spool's file system, in MiB."""
        return shutil.disk_usage(self.root).free / (1024 * 1024)

    def check_space(self) -> None:
        """Raise StorageFullError when free space is under the watermark."""
        free = self.free_mb()
        if free < self.min_free_mb:
            raise StorageFullError(
                f"free space {free:.0f} MiB is under the watermark of {self.min_free_mb} MiB"
            )

    def relative_path(self, header: InstanceHeader) -> str:
        """Where an instance lives, relative to the root: ``<study>/<series>/<sop>.dcm``."""
        return f"{header.study_uid}/{header.series_uid}/{header.sop_instance_uid}.dcm"

    def open_incoming(self, meta: bytes, limit: int) -> Incoming:
        """A new temporary file for one instance, its file meta already written."""
        return Incoming(self.tmp / f"{uuid.uuid4().hex}.part", meta, limit, linker=self._linker)

    def claim(self, incoming: Incoming, header: InstanceHeader) -> str | None:
        """Give a finished instance its final name unless another file has it; the relative path,
        or None when the name was taken.

        ``link(2)`` creates the name exclusively (as ``O_EXCL``): of two senders of one SOP
        Instance UID exactly one succeeds, and an existing, acknowledged file is never replaced.
        The temporary file stays (``incoming.discard()`` once the claim is journaled).
        """
        incoming.close()
        relative = self.relative_path(header)
        final = self.root / relative
        self._ensure_dir(final.parent)
        try:
            incoming.link(final)
        except FileExistsError:
            return None
        _fsync_dir(final.parent)
        return relative

    def unclaim(self, relative: str) -> None:
        """Remove a name just claimed and never acknowledged (the journal had the UID already)."""
        (self.root / relative).unlink(missing_ok=True)

    def quarantine_incoming(self, incoming: Incoming, reason: Mapping[str, object]) -> Path:
        """Move a refused instance's temporary file to the quarantine with a JSON reason file."""
        incoming.close()
        data_path, reason_path = self._quarantine_paths(reason)
        if incoming.unnamed:
            incoming.link(data_path)
        else:
            os.replace(incoming.path, data_path)
        reason_path.write_text(json.dumps(reason, indent=2, sort_keys=True))
        _fsync_dir(self.quarantine_dir)
        return data_path

    def _quarantine_paths(self, reason: Mapping[str, object]) -> tuple[Path, Path]:
        stem = f"{reason.get('time_utc', '')}-{uuid.uuid4().hex[:12]}".replace(":", "")
        return self.quarantine_dir / f"{stem}.dcm", self.quarantine_dir / f"{stem}.json"

    def write(self, header: InstanceHeader, chunks: list[bytes]) -> tuple[str, int]:
        """Write an instance durably; return its relative path and size in bytes.

        The bytes go to a temporary file that is fsynced and then renamed into place; the
        rename is made durable by fsyncing the directory (and any directory just created).
        """
        relative = self.relative_path(header)
        final = self.root / relative
        self._ensure_dir(final.parent)
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            size = _write_durably(tmp, chunks)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return relative, size

    def _ensure_dir(self, folder: Path) -> None:
        if folder.is_dir():
            return
        missing = [folder, *(p for p in folder.parents if not p.is_dir())]
        folder.mkdir(parents=True, exist_ok=True)
        for created in reversed(missing):
            _fsync_dir(created.parent)

    def quarantine(self, chunks: list[bytes], reason: Mapping[str, object]) -> Path:
        """Keep rejected bytes with a JSON reason file; return the data file's path."""
        data_path, reason_path = self._quarantine_paths(reason)
        _write_durably(data_path, chunks)
        reason_path.write_text(json.dumps(reason, indent=2, sort_keys=True))
        _fsync_dir(self.quarantine_dir)
        return data_path

    def files(self) -> list[str]:
        """Every complete instance file, relative to the root (``.tmp`` excluded)."""
        out = []
        for path in self.root.glob("*/*/*.dcm"):
            relative = path.relative_to(self.root).as_posix()
            if not relative.startswith(TMP_DIR):
                out.append(relative)
        return out


def _write_durably(path: Path, chunks: list[bytes]) -> int:
    size = 0
    with path.open("wb") as handle:
        for chunk in chunks:
            size += handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return size


def reindex(spool: Spool, journal: Journal, *, quiet_period_s: float, now: float) -> int:
    """Record spool files the journal does not know (lost journal commits); return how many.

    The journal commits without fsync (WAL, ``synchronous=NORMAL``); the spool file was fsynced
    before the C-STORE was acknowledged, so after a power failure the spool is the truth. Files
    that no longer parse are moved to the quarantine. Each file's sender (its file meta) becomes
    a ``recovered`` association record, one per sender, so the routing rules still see who sent
    it (:meth:`Journal.senders`).
    """
    known = journal.known_paths()
    added = 0
    recovered: dict[FileSender, AssociationRecord] = {}
    for relative in spool.files():
        if relative in known:
            continue
        path = spool.root / relative
        try:
            start = meta_end(path)
            with path.open("rb") as handle:
                syntax, _ = split_file(handle.read(start))
            header = read_file_header(path, syntax, start=start, scratch_dir=spool.tmp)
        except InvalidDatasetError as exc:
            reason = {
                "reason": str(exc),
                "spool_path": relative,
                "time_utc": utc_text(now, precise=True),
            }
            data_path, reason_path = spool._quarantine_paths(reason)
            os.replace(path, data_path)
            reason_path.write_text(json.dumps(reason, indent=2, sort_keys=True))
            continue
        sender = file_sender(path)
        association = None
        if sender is not None:
            association = recovered.get(sender)
            if association is None:
                association = recovered[sender] = _recovered_association(journal, sender, now)
            association.stored += 1
        record = header.record(
            relative,
            path.stat().st_size,
            now,
            association.id if association else None,
            digest=file_digest(path),
        )
        added += journal.record_instance(
            record,
            quiet_period_s=quiet_period_s,
            calling_ae=sender.calling_ae if sender else None,
            called_ae=sender.called_ae if sender else None,
            patient_id=header.patient_id,
            patient_name=header.patient_name,
        )
    for association in recovered.values():
        journal.end_association(association, ended="recovered", now=now)
    return added


def _recovered_association(journal: Journal, sender: FileSender, now: float) -> AssociationRecord:
    record = AssociationRecord(
        id=f"recovered-{uuid.uuid4().hex[:12]}",
        peer_host=sender.peer_host,
        peer_port=sender.peer_port,
        calling_ae=sender.calling_ae,
        called_ae=sender.called_ae,
        started_at=now,
    )
    journal.start_association(record)
    return record
