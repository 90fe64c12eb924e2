"""The results registry: one SQLite row per ladder run (config, losses, tokens, FLOPs, speed, memory, status).

Safe for concurrent writers (several ladders, or a ladder and ``isoflop report``, on one file): the
database runs in WAL mode with a busy timeout, and every state change is one ``BEGIN IMMEDIATE``
transaction, so a run is claimed by exactly one process. A run is identified by the hash of its
training config, which makes a ladder resumable: ``finished`` runs are never run again, while
``failed`` runs and ``running`` runs whose process is gone (a crash or an interrupt) are retried.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isoflop import structured
from isoflop.errors import IsoflopError, first_line

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    ladder TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'ladder',
    budget REAL,
    n_params INTEGER,
    n_params_non_embedding INTEGER,
    tokens INTEGER,
    flops REAL,
    config TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    final_loss REAL,
    val_loss REAL,
    step_time_s REAL,
    memory_gib REAL,
    wall_s REAL,
    threads INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    out_dir TEXT,
    host TEXT,
    pid INTEGER,
    summary TEXT,
    created_at REAL,
    updated_at REAL
);
CREATE INDEX IF NOT EXISTS runs_ladder ON runs (ladder, status);
"""


def config_hash(config: dict[str, Any]) -> str:
    """A stable id for a training config: the SHA-256 of its canonical JSON, first 16 hex digits."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class RunRecord:
    """One row of the registry (``config`` and ``summary`` decoded from JSON)."""

    run_id: str
    ladder: str
    role: str
    config: dict[str, Any]
    status: str
    budget: float | None = None
    n_params: int | None = None
    n_params_non_embedding: int | None = None
    tokens: int | None = None
    flops: float | None = None
    final_loss: float | None = None
    val_loss: float | None = None
    step_time_s: float | None = None
    memory_gib: float | None = None
    wall_s: float | None = None
    threads: int | None = None
    attempts: int = 0
    error: str | None = None
    out_dir: str | None = None
    host: str | None = None
    pid: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Registry:
    """A SQLite results registry at ``path`` (created on first use)."""

    def __init__(self, path: str | os.PathLike[str], timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise IsoflopError(f"cannot open registry {self.path}: {exc}; check the path and its permissions") from None
        con.row_factory = sqlite3.Row
        try:
            con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            yield con
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise IsoflopError(
                f"registry {self.path} is corrupt ({first_line(str(exc))}); move it aside; the runs' folders are intact"
            ) from None
        finally:
            con.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: it takes the write lock up front, so two writers serialise."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # Writing ------------------------------------------------------------------------------------
    def add(self, ladder: str, config: dict[str, Any], role: str = "ladder", **meta: Any) -> str:
        """Register a run (idempotent: an existing run keeps its status and results). Returns its id."""
        run_id = config_hash(config)
        now = time.time()
        columns = ("budget", "n_params", "n_params_non_embedding", "tokens", "flops")
        values = [meta.get(c) for c in columns]
        with self._transaction() as con:
            con.execute(
                "INSERT OR IGNORE INTO runs (run_id, ladder, role, config, status, created_at, updated_at, "
                + ", ".join(columns)
                + ") VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
                (run_id, ladder, role, json.dumps(config, sort_keys=True), now, now, *values),
            )
        return run_id

    def claim(self, run_id: str, out_dir: str, threads: int | None = None, stale_after_s: float | None = None) -> bool:
        """Mark a run ``running`` for this process. False if it is finished, or running in a live process.

        A ``running`` row whose process is gone (same host, dead pid), or older than ``stale_after_s``
        on another host, was interrupted: it is taken over and retried.
        """
        host, now = socket.gethostname(), time.time()
        with self._transaction() as con:
            row = con.execute("SELECT status, host, pid, updated_at FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                raise IsoflopError(f"run {run_id} is not in the registry {self.path}; add it first")
            if row["status"] == "finished":
                return False
            if row["status"] == "running":
                same_host = row["host"] == host
                if same_host and row["pid"] != os.getpid() and _pid_alive(row["pid"]):
                    return False
                if not same_host and (stale_after_s is None or now - (row["updated_at"] or 0) < stale_after_s):
                    return False
            con.execute(
                "UPDATE runs SET status='running', attempts=attempts+1, error=NULL, out_dir=?, host=?, pid=?, "
                "threads=?, updated_at=? WHERE run_id=?",
                (out_dir, host, os.getpid(), threads, now, run_id),
            )
        return True

    def finish(self, run_id: str, result: dict[str, Any]) -> None:
        """Record a finished run's measurements (keys: final_loss, val_loss, step_time_s, memory_gib, wall_s,
        tokens, flops, summary)."""
        with self._transaction() as con:
            con.execute(
                "UPDATE runs SET status='finished', final_loss=?, val_loss=?, step_time_s=?, memory_gib=?, wall_s=?, "
                "tokens=COALESCE(?, tokens), flops=COALESCE(?, flops), summary=?, error=NULL, updated_at=? "
                "WHERE run_id=?",
                (
                    result.get("final_loss"),
                    result.get("val_loss"),
                    result.get("step_time_s"),
                    result.get("memory_gib"),
                    result.get("wall_s"),
                    result.get("tokens"),
                    result.get("flops"),
                    json.dumps(result.get("summary") or {}, default=str),
                    time.time(),
                    run_id,
                ),
            )

    def fail(self, run_id: str, error: str, wall_s: float | None = None) -> None:
        """Record a failed run with its error (the last lines of its output)."""
        with self._transaction() as con:
            con.execute(
                "UPDATE runs SET status='failed', error=?, wall_s=?, updated_at=? WHERE run_id=?",
                (error[-4000:], wall_s, time.time(), run_id),
            )

    # Reading ------------------------------------------------------------------------------------
    def get(self, run_id: str) -> RunRecord | None:
        with self._connect() as con:
            row = con.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return _record(row) if row else None

    def runs(self, ladder: str | None = None, status: str | None = None, role: str | None = None) -> list[RunRecord]:
        """Rows filtered by ladder name, status and role, in insertion order."""
        clauses, args = [], []
        for column, value in (("ladder", ladder), ("status", status), ("role", role)):
            if value is not None:
                clauses.append(f"{column}=?")
                args.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as con:
            rows = con.execute(f"SELECT * FROM runs{where} ORDER BY created_at, rowid", args).fetchall()
        return [_record(r) for r in rows]


def _record(row: sqlite3.Row) -> RunRecord:
    data = dict(row)
    origin = f"registry row {data.get('run_id')}"
    fix = "move registry.sqlite aside; the runs' folders are intact"
    data["config"] = structured.loads(data["config"], "json", origin, "run config", fix)
    data["summary"] = structured.loads(data["summary"], "json", origin, "summary", fix) if data.get("summary") else {}
    for key in ("created_at", "updated_at"):
        data.pop(key, None)
    return RunRecord(**data)
