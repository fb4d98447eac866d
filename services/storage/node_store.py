"""`NodeLatentStore`: the handle store without Redis, shared by every serving process of one node.

Without Redis, handles used to live in each serving process's own LRU, so a node could run only one serving
process (a second would answer another's handle NOT_FOUND) and its death failed calls. This store keeps them in
one SQLite file on the node (`node_store_path`: /dev/shm when writable, else the temp directory, named by the
user and the gRPC port), which every serving process (and every replica on the node sharing the port) opens:
any of them resolves a handle another issued, and handles survive a serving process's death and the restart
of the replica. They do not survive the node (tmpfs), and other nodes do not see them: `describe` says so.

Contract as `InProcessLatentStore`: about `max_entries` most recently used latents (eviction runs every
`trim_every` puts, so the bound is overshot by at most that many per process between trims), `ttl_s` expiry
from the last put (wall clock: shared by processes). SQLite's WAL lets readers run beside one writer; writes
are single small transactions (microseconds on tmpfs), done inline: they never wait on the network. The file
is checked by inode on every call: if something deleted it, the process reopens (creates) it, so two
processes never keep answering from two different files.
"""
from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
import time

import numpy as np

from latentserve.errors import UnavailableError
from latentserve.services.storage.handles import SyncLatentStore, check_size_ttl, pack_latent, unpack_latent

BUSY_TIMEOUT_MS = 2000  # another process's write holds the file this long at most before UNAVAILABLE
_SCHEMA = ("CREATE TABLE IF NOT EXISTS handles (handle TEXT PRIMARY KEY, data BLOB NOT NULL, "
           "deadline REAL NOT NULL, used REAL NOT NULL)",
           "CREATE INDEX IF NOT EXISTS handles_used ON handles (used)")


def node_store_path(port: int, directory: str | None = None) -> str:
    """The node's handle file for serving processes on gRPC `port`: in `directory`, else /dev/shm (tmpfs: no
    disk writes) when writable, else the temp directory; named by user id and port, so servers of other users
    or on other ports never share it."""
    if directory is None:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return os.path.join(directory, f"latentserve-handles-{os.getuid()}-{int(port)}.sqlite3")


class NodeLatentStore(SyncLatentStore):
    """Handles in a SQLite file shared by the node's serving processes (module docstring)."""

    kind = "node"

    def __init__(self, path: str, max_entries: int = 100_000, ttl_s: float | None = None,
                 trim_every: int | None = None) -> None:
        check_size_ttl(max_entries, ttl_s)
        self.path, self.max_entries = path, max_entries
        self.ttl_s = float(ttl_s) if ttl_s is not None else None
        self.trim_every = trim_every or max(16, min(1024, max_entries // 64))
        self._lock = threading.Lock()  # one connection, used from any thread of this process
        self._db: sqlite3.Connection | None = None
        self._ino = -1
        self._since_trim = 0
        self.counters = {"puts": 0, "hits": 0, "misses": 0, "reopened": 0}
        with self._lock:
            self._connection()

    # -- the file -------------------------------------------------------------------------------------------
    def _open(self) -> None:
        if self._db is not None:
            self._db.close()
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")  # readers beside a writer, across processes
        db.execute("PRAGMA synchronous=OFF")  # tmpfs / a cache: an OS crash may lose it, a process crash cannot
        for stmt in _SCHEMA:
            db.execute(stmt)
        self._db, self._ino = db, os.stat(self.path).st_ino

    def _connection(self) -> sqlite3.Connection:
        """The open connection, reopened when the file was deleted or replaced (caller holds the lock)."""
        try:
            same = os.stat(self.path).st_ino == self._ino
        except FileNotFoundError:
            same = False
        if not same or self._db is None:
            if self._db is not None:
                self.counters["reopened"] += 1
            self._open()
        return self._db  # type: ignore[return-value]

    def _run(self, fn, write: bool = False):
        """fn(connection) under the lock, in one transaction when it writes (one commit per call, not per row);
        a locked or broken file is UNAVAILABLE (a retryable, never an internal error), naming no path."""
        with self._lock:
            try:
                db = self._connection()
                if not write:
                    return fn(db)
                db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return out
            except sqlite3.OperationalError as exc:
                raise UnavailableError(f"the node's handle store is busy or unreadable ({exc}); retry") from None

    # -- the store ------------------------------------------------------------------------------------------
    def put_many(self, items: list[tuple[str, np.ndarray, int]]) -> None:
        now = time.time()
        deadline = now + self.ttl_s if self.ttl_s else float("inf")
        rows = [(h, pack_latent(z, label), deadline, now) for h, z, label in items]

        def put(db: sqlite3.Connection) -> None:
            db.executemany("INSERT INTO handles (handle, data, deadline, used) VALUES (?, ?, ?, ?) ON CONFLICT"
                           "(handle) DO UPDATE SET deadline = excluded.deadline, used = excluded.used", rows)
            self._since_trim += len(rows)
            if self._since_trim >= self.trim_every:
                self._since_trim = 0
                self._trim(db, now)

        self._run(put, write=True)
        self.counters["puts"] += len(rows)

    def _trim(self, db: sqlite3.Connection, now: float) -> None:
        """Drop expired entries, then the least recently used beyond max_entries."""
        db.execute("DELETE FROM handles WHERE deadline <= ?", (now,))
        excess = db.execute("SELECT count(*) FROM handles").fetchone()[0] - self.max_entries
        if excess > 0:
            db.execute("DELETE FROM handles WHERE handle IN (SELECT handle FROM handles ORDER BY used LIMIT ?)",
                       (excess,))

    def lookup(self, handles: list[str]) -> list[tuple[np.ndarray, int] | None]:
        """(latent, label) per handle, None for unknown or expired ones; a hit counts as a use (LRU)."""
        if not handles:
            return []
        now = time.time()

        def get(db: sqlite3.Connection) -> dict[str, bytes]:
            marks = ",".join("?" * len(set(handles)))
            found = {h: d for h, d, deadline in db.execute(
                f"SELECT handle, data, deadline FROM handles WHERE handle IN ({marks})", tuple(set(handles)))
                if deadline > now}
            if found:
                db.executemany("UPDATE handles SET used = ? WHERE handle = ?", [(now, h) for h in found])
            return found

        found = self._run(get, write=True)  # a hit updates its `used`
        out = [unpack_latent(found[h]) if h in found else None for h in handles]
        self._count(out)
        return out

    def missing_because(self) -> str:
        ttl = f", expire {self.ttl_s:g} s after they were last issued" if self.ttl_s else ""
        return (f"not issued on this node, expired or evicted (the node's store keeps about the {self.max_entries} "
                f"most recently used latents{ttl}, and is not shared with other nodes: set LATENTSERVE_REDIS_URL "
                f"for that)")

    def describe(self) -> dict:
        return {"backend": self.kind, "durable": False,
                "detail": "handles live in a file shared by this node's serving processes (no redis_url): they "
                          "survive a serving process's restart, not the node's, and other nodes do not know them"}

    def stats(self) -> dict:
        n = self._run(lambda db: db.execute("SELECT count(*) FROM handles").fetchone()[0])
        return {"backend": self.kind, "entries": n, **self.counters}

    def __len__(self) -> int:
        return self._run(lambda db: db.execute("SELECT count(*) FROM handles").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
