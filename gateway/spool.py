"""The local usage spool: where usage events wait, durably, while the database cannot take them.

When the usage writer's INSERT fails (PostgreSQL away, a network cut, a timeout), the batch is
appended to a per-process SQLite file under GATEWAY_SPOOL_DIR (WAL, synchronous=FULL: the
append is on disk before the request is answered) and the request is answered as usual. A
background task replays the spool into the database with the writer's own
`INSERT ... ON CONFLICT (request_id) DO NOTHING`, then deletes what it replayed: a crash between
the two replays those rows again, which the conflict clause turns into a no-op, so every event
lands exactly once.

Ownership is a `flock` on `<file>.lock`, held by the writing process for its whole life. The
kernel releases it when the process dies (even by kill -9), so any live gateway process that
scans the directory and gets the lock adopts the file, replays it and removes it; two live
processes can never replay one file at once. A file records which database it belongs to and
is only adopted by a process configured for the same one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import orjson
from django.conf import settings

from usage.models import UsageEvent

log = logging.getLogger("gateway")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    spooled_at REAL NOT NULL,
    row BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    request_id TEXT PRIMARY KEY,
    spooled_at REAL NOT NULL,
    row BLOB NOT NULL,
    error TEXT NOT NULL,
    rejected_at REAL NOT NULL
);
"""
SUFFIX = ".spool"


def _default(value):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def encode_row(row: dict) -> bytes:
    return orjson.dumps(row, default=_default)


def row_decoder(columns: list[str]):
    """A function turning a stored row back into the writer's dict (typed by the UsageEvent fields).

    Columns added since the row was spooled take their field default, so a spool written by an
    older version still replays after an upgrade."""
    fields = {f.column: f for f in UsageEvent._meta.concrete_fields}

    def decode(blob: bytes) -> dict:
        stored = orjson.loads(blob)
        row = {}
        for column in columns:
            field = fields[column]
            if column in stored:
                value = stored[column]
                row[column] = field.to_python(value) if value is not None else None
            else:
                row[column] = field.get_default()
        return row

    return decode


@dataclass
class SpoolFile:
    path: Path
    conn: sqlite3.Connection
    lock_fd: int
    own: bool
    depth: int = 0
    oldest: float | None = None  # spooled_at of the oldest waiting event
    rejected: int = 0

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(SUFFIX)


class Spool:
    """The spool files this process holds (its own, plus any adopted from dead processes).

    Every SQLite call runs on one dedicated thread: the files are never touched from the event
    loop, and a slow fsync never stalls other requests."""

    def __init__(self, directory: Path, *, database_identity: str):
        self.directory = Path(directory)
        self.identity = database_identity
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-spool")
        self.own: SpoolFile | None = None
        self.adopted: dict[Path, SpoolFile] = {}
        self.ignored: set[tuple[int, int]] = set()  # (device, inode) of files not ours to replay

    # ---- writing (spool thread) -----------------------------------------------------------------
    def append(self, rows: list[dict]) -> int:
        """Durably store rows (a duplicate request id is kept once); returns how many were new."""
        if self.own is None:
            self.own = self._create()
        now = time.time()
        conn = self.own.conn
        with conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO events (request_id, spooled_at, row) VALUES (?, ?, ?)",
                [(row["request_id"], now, encode_row(row)) for row in rows],
            )
            added = conn.total_changes - before
        self.own.depth += added
        if self.own.oldest is None:
            self.own.oldest = now
        return added

    def _create(self) -> SpoolFile:
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = f"usage-{_safe(socket.gethostname())}-{os.getpid()}-{os.urandom(4).hex()}"
        path = self.directory / (stem + SUFFIX)
        fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh random name: nobody else has it
        conn = _connect(path, create=True)
        with conn:
            conn.executescript(SCHEMA)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('database', ?)", (self.identity,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('pid', ?)", (str(os.getpid()),))
        os.chmod(path, 0o600)
        log.warning("usage events are being spooled to %s until the database takes them again", path)
        return SpoolFile(path, conn, fd, own=True)

    # ---- adopting (spool thread) ----------------------------------------------------------------
    def adopt_orphans(self) -> list[SpoolFile]:
        """Take over spool files whose writer died (its lock is free) and that belong to our database."""
        if not self.directory.is_dir():
            return []
        taken = []
        for path in sorted(self.directory.glob("usage-*" + SUFFIX)):
            if path in self.adopted or (self.own is not None and path == self.own.path):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if (stat.st_dev, stat.st_ino) in self.ignored:
                continue
            spool_file = self._try_adopt(path)
            if spool_file is not None:
                self.adopted[path] = spool_file
                taken.append(spool_file)
        return taken

    def _try_adopt(self, path: Path) -> SpoolFile | None:
        lock_path = str(path) + ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its writer (or another adopter) is alive and holds it
            return None
        try:
            # The previous holder may have finished and removed the files between our open and
            # our lock: then we hold a lock on a deleted inode, and the file is gone.
            if os.stat(lock_path).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(lock_path)
            conn = _connect(path, create=False)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            identity = conn.execute("SELECT value FROM meta WHERE name = 'database'").fetchone() if "meta" in tables else None
            if identity is None or identity[0] != self.identity:
                conn.close()
                stat = path.stat()
                self.ignored.add((stat.st_dev, stat.st_ino))
                log.warning("spool file %s belongs to another database; left for a gateway configured for it", path.name)
                os.close(fd)
                return None
        except (FileNotFoundError, sqlite3.Error) as exc:
            log.warning("spool file %s could not be adopted: %s", path.name, exc)
            os.close(fd)
            return None
        spool_file = SpoolFile(path, conn, fd, own=False)
        self._measure(spool_file)
        if spool_file.depth:
            log.warning("adopted %s with %d usage events left by a stopped gateway process", path.name, spool_file.depth)
        return spool_file

    # ---- replaying (spool thread) ---------------------------------------------------------------
    def files(self) -> list[SpoolFile]:
        return ([self.own] if self.own is not None else []) + list(self.adopted.values())

    def batch(self, spool_file: SpoolFile, limit: int) -> list[tuple[int, bytes]]:
        return spool_file.conn.execute("SELECT seq, row FROM events ORDER BY seq LIMIT ?", (limit,)).fetchall()

    def forget(self, spool_file: SpoolFile, seqs: Iterable[int]) -> None:
        """Delete replayed rows (the database has them)."""
        with spool_file.conn:
            spool_file.conn.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs])
        self._measure(spool_file)

    def reject(self, spool_file: SpoolFile, seq: int, error: str) -> None:
        """Move a row the database refuses for good (not a connection problem) aside, kept on disk."""
        with spool_file.conn:
            spool_file.conn.execute(
                "INSERT OR IGNORE INTO rejected SELECT request_id, spooled_at, row, ?, ? FROM events WHERE seq = ?",
                (error[:500], time.time(), seq),
            )
            spool_file.conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
        self._measure(spool_file)

    def release_if_done(self, spool_file: SpoolFile) -> bool:
        """An adopted file with nothing left is removed; one that only holds rejected rows is kept and let go."""
        if spool_file.own or spool_file.depth:
            return False
        self.adopted.pop(spool_file.path, None)
        if spool_file.rejected:
            stat = spool_file.path.stat()
            self.ignored.add((stat.st_dev, stat.st_ino))
            spool_file.conn.close()
            os.close(spool_file.lock_fd)
            return True
        self._remove(spool_file)
        return True

    def _remove(self, spool_file: SpoolFile) -> None:
        spool_file.conn.close()
        # Data files first, lock file last, all while holding the lock: a process that opened the
        # lock file before it was unlinked finds the inode changed and backs off.
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(str(spool_file.path) + suffix)
            except FileNotFoundError:
                pass
        try:
            os.unlink(str(spool_file.path) + ".lock")
        except FileNotFoundError:
            pass
        os.close(spool_file.lock_fd)

    def _measure(self, spool_file: SpoolFile) -> None:
        depth, oldest = spool_file.conn.execute("SELECT count(*), min(spooled_at) FROM events").fetchone()
        spool_file.depth, spool_file.oldest = depth, oldest
        spool_file.rejected = spool_file.conn.execute("SELECT count(*) FROM rejected").fetchone()[0]

    def close(self) -> None:
        """At shutdown: an empty own file is removed; one with events stays for the next process."""
        for spool_file in self.files():
            try:
                self._measure(spool_file)
                if spool_file.depth == 0 and spool_file.rejected == 0:
                    self._remove(spool_file)
                else:
                    spool_file.conn.close()
                    os.close(spool_file.lock_fd)
            except Exception:
                log.exception("closing spool file %s failed", spool_file.path.name)
        self.own = None
        self.adopted.clear()

    # ---- totals (any thread: plain attribute reads) ---------------------------------------------
    def depth(self) -> int:
        return sum(f.depth for f in self.files())

    def oldest(self) -> float | None:
        times = [f.oldest for f in self.files() if f.oldest is not None and f.depth]
        return min(times) if times else None

    def rejected(self) -> int:
        return sum(f.rejected for f in self.files())


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    # `with conn:` is one transaction; check_same_thread is off because the file is adopted on
    # one spool thread call and used on later ones (always the same single thread).
    conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # the WAL is fsynced at every commit: an answered request's event is on disk
    return conn


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text)[:60] or "host"


def database_identity() -> str:
    """Which database a spool's events belong to (never includes a password)."""
    db = settings.DATABASES["default"]
    return f"{db['ENGINE']}|{db.get('HOST') or ''}|{db.get('PORT') or ''}|{db['NAME']}"
