"""Served translations ("episodes") and the feedback on them, kept durably in SQLite (WAL mode).

Every translated text is one episode with an integer id from an AUTOINCREMENT column: ids only grow
and are never reused, so "everything after id N" is a safe export watermark. Feedback gets its own
growing sequence number (`feedback_seq`), the watermark of exports that only carry rated episodes;
feedback that arrives long after the episode is served is therefore still exported.

Each episode names the client that requested it (`client`) and the client whose feedback it holds
(`feedback_client`): the service's API key names, or `anonymous`. Databases from before those columns
are migrated in place when opened; their old rows keep NULL there (nobody recorded who it was).
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

ExportMode = Literal["all", "feedback"]

# The largest id SQLite stores; a bigger one from a client is simply unknown.
MAX_EPISODE_ID = 2**63 - 1

# Who requested an episode or gave feedback when the service knows no name: no key, on a service without auth.
ANONYMOUS_CLIENT = "anonymous"


def _when_unlocked(statement: Callable[[], object], timeout_s: float) -> None:
    """Run `statement`, again while another connection holds the database. Switching a rollback-journal database
    to WAL takes an exclusive lock, and SQLite answers "database is locked" at once, without its busy handler,
    when two connections opening an old database both try."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS episodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    direction TEXT NOT NULL,
    src_lang TEXT NOT NULL,
    tgt_lang TEXT NOT NULL,
    adapter_version TEXT NOT NULL,
    base_model TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    script_valid INTEGER NOT NULL,
    reward REAL,
    correction TEXT,
    feedback_at TEXT,
    feedback_seq INTEGER,
    client TEXT,
    feedback_client TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS episodes_feedback_seq ON episodes (feedback_seq);
-- latest_episode: a suggestion names its text, not an episode id
CREATE INDEX IF NOT EXISTS episodes_input ON episodes (input);
CREATE TABLE IF NOT EXISTS export_watermarks (
    target TEXT NOT NULL,
    mode TEXT NOT NULL,
    last_key INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (target, mode)
);
CREATE TABLE IF NOT EXISTS export_parts (
    target TEXT NOT NULL,
    mode TEXT NOT NULL,
    first_key INTEGER NOT NULL,
    last_key INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    started_at TEXT NOT NULL,
    done_at TEXT,
    PRIMARY KEY (target, mode, first_key)
);
"""

_COLUMNS = (
    "id, created_at, direction, src_lang, tgt_lang, adapter_version, base_model, input, output, "
    "latency_ms, script_valid, reward, correction, feedback_at, feedback_seq, client, feedback_client"
)
# Columns added after the first schema: (name, SQL type). Older databases get them when opened, NULL in old rows.
_ADDED_COLUMNS = (("client", "TEXT"), ("feedback_client", "TEXT"))


class UnknownEpisode(KeyError):
    """No episode has the given id."""


class ForeignEpisode(PermissionError):
    """The episode was requested by another client than the one that may rate it."""


class ExportBusy(RuntimeError):
    """Another export from this database to the same target (and mode) kept running past the wait."""


def utc_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. 2025-01-31T12:00:00.123Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class NewEpisode:
    """A translation just served, before it has an id."""

    direction: str
    src_lang: str
    tgt_lang: str
    adapter_version: str
    base_model: str
    input: str
    output: str
    latency_ms: float
    script_valid: bool
    client: str = ANONYMOUS_CLIENT  # who requested it: an API client's name, or anonymous


@dataclass(frozen=True, slots=True)
class Episode:
    """A stored episode with its feedback, if any."""

    id: int
    created_at: str
    direction: str
    src_lang: str
    tgt_lang: str
    adapter_version: str
    base_model: str
    input: str
    output: str
    latency_ms: float
    script_valid: bool
    reward: float | None
    correction: str | None
    feedback_at: str | None
    feedback_seq: int | None
    client: str | None  # who requested it; None only in rows from before clients were recorded
    feedback_client: str | None  # who gave the (latest) feedback; None without feedback (or from before)

    @classmethod
    def _from_row(cls, row: tuple) -> Episode:
        values = list(row)
        values[10] = bool(values[10])
        return cls(*values)


@dataclass(frozen=True, slots=True)
class ExportPart:
    """One part of an export: the episodes whose key (id or feedback_seq) lies in [first_key, last_key]."""

    target: str
    mode: ExportMode
    first_key: int
    last_key: int
    name: str
    state: Literal["pending", "done"]


class EpisodeStore:
    """The episodes database; safe to share between threads, and between processes through SQLite's locks.

    Args:
        path: SQLite file; its parent directories are created.
    """

    _TIMEOUT_S = 30.0

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection behind a lock: writes are serialised by SQLite anyway, and reads are short.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=self._TIMEOUT_S)
        self._lock = threading.Lock()
        with self._lock:
            _when_unlocked(lambda: self._conn.execute("PRAGMA journal_mode=WAL"), self._TIMEOUT_S)
            # FULL: a committed episode survives a power cut, not only a crash of the process.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns a database from an older version lacks (checked inside the write lock, so two
        processes opening one old database at once add each column once)."""
        with self._write() as conn:
            present = {row[1] for row in conn.execute("PRAGMA table_info(episodes)")}
            for name, sql_type in _ADDED_COLUMNS:
                if name not in present:
                    conn.execute(f"ALTER TABLE episodes ADD COLUMN {name} {sql_type}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def record(self, episodes: Sequence[NewEpisode]) -> list[int]:
        """Store served translations in one transaction and return their ids, in order."""
        now = utc_now()
        ids: list[int] = []
        with self._write() as conn:
            for ep in episodes:
                cur = conn.execute(
                    "INSERT INTO episodes (created_at, direction, src_lang, tgt_lang, adapter_version, base_model, "
                    "input, output, latency_ms, script_valid, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        now,
                        ep.direction,
                        ep.src_lang,
                        ep.tgt_lang,
                        ep.adapter_version,
                        ep.base_model,
                        ep.input,
                        ep.output,
                        float(ep.latency_ms),
                        int(ep.script_valid),
                        ep.client,
                    ),
                )
                assert cur.lastrowid is not None
                ids.append(cur.lastrowid)
        return ids

    def get(self, episode_id: int) -> Episode:
        """The episode with this id; raises UnknownEpisode."""
        if not 0 < episode_id <= MAX_EPISODE_ID:
            raise UnknownEpisode(episode_id)
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM episodes WHERE id = ?", (episode_id,)).fetchone()
        if row is None:
            raise UnknownEpisode(episode_id)
        return Episode._from_row(row)

    def latest_episode(self, client: str, direction: str, text: str) -> Episode | None:
        """The newest episode in which `client` had `text` translated in `direction`, or None."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM episodes WHERE input = ? AND client = ? AND direction = ? "
                "ORDER BY id DESC LIMIT 1",
                (text, client, direction),
            ).fetchone()
        return Episode._from_row(row) if row else None

    def attach_feedback(
        self,
        episode_id: int,
        reward: float,
        correction: str | None = None,
        *,
        client: str = ANONYMOUS_CLIENT,
        requested_by: str | None = None,
    ) -> Episode:
        """Attach a reward in [-1, 1] and an optional correction, replacing earlier feedback.

        Args:
            episode_id: the episode's id; raises UnknownEpisode when there is none.
            reward: how good the translation was, from -1 (wrong) to 1 (right).
            correction: a better translation, if the client has one.
            client: who gives the feedback (recorded as `feedback_client`).
            requested_by: when set, only an episode requested by this client may be rated; another
                raises ForeignEpisode and nothing changes (None: any episode, as for an admin).
        """
        if not (math.isfinite(reward) and -1.0 <= reward <= 1.0):
            raise ValueError(f"reward must be a number in [-1, 1], got {reward!r}")
        if not 0 < episode_id <= MAX_EPISODE_ID:
            raise UnknownEpisode(episode_id)
        with self._write() as conn:
            # The owner check and the update in one transaction: what is checked is what is changed.
            found = conn.execute("SELECT client FROM episodes WHERE id = ?", (episode_id,)).fetchone()
            if found is None:
                raise UnknownEpisode(episode_id)
            if requested_by is not None and found[0] != requested_by:
                raise ForeignEpisode(episode_id)
            # A fresh sequence number per feedback, taken inside the write lock so numbers commit in order.
            conn.execute(
                "UPDATE episodes SET reward = ?, correction = ?, feedback_at = ?, feedback_client = ?, "
                "feedback_seq = (SELECT COALESCE(MAX(feedback_seq), 0) + 1 FROM episodes) WHERE id = ?",
                (float(reward), correction, utc_now(), client, episode_id),
            )
            row = conn.execute(f"SELECT {_COLUMNS} FROM episodes WHERE id = ?", (episode_id,)).fetchone()
        return Episode._from_row(row)

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0])

    # --- export bookkeeping -------------------------------------------------------------------------

    @staticmethod
    def _key_column(mode: ExportMode) -> str:
        return "id" if mode == "all" else "feedback_seq"

    def export_watermark(self, target: str, mode: ExportMode) -> int:
        """The last key (episode id, or feedback_seq in mode 'feedback') exported to `target`; 0 when none."""
        with self._lock:
            row = self._conn.execute(
                "SELECT last_key FROM export_watermarks WHERE target = ? AND mode = ?", (target, mode)
            ).fetchone()
        return int(row[0]) if row else 0

    def last_key(self, mode: ExportMode) -> int:
        """The highest key (episode id, or feedback_seq in mode 'feedback') so far; 0 when none."""
        with self._lock:
            row = self._conn.execute(f"SELECT MAX({self._key_column(mode)}) FROM episodes").fetchone()
        return int(row[0] or 0)

    def episodes_after(
        self, mode: ExportMode, after_key: int, limit: int, until_key: int = MAX_EPISODE_ID
    ) -> list[Episode]:
        """Up to `limit` episodes whose key is above `after_key` and at most `until_key`, by key (mode
        'feedback': only rated ones)."""
        key = self._key_column(mode)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM episodes WHERE {key} > ? AND {key} <= ? ORDER BY {key} LIMIT ?",
                (after_key, until_key, limit),
            ).fetchall()
        return [Episode._from_row(r) for r in rows]

    def episodes_between(self, mode: ExportMode, first_key: int, last_key: int) -> list[Episode]:
        """The episodes whose key lies in [first_key, last_key], by key."""
        key = self._key_column(mode)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM episodes WHERE {key} BETWEEN ? AND ? ORDER BY {key}", (first_key, last_key)
            ).fetchall()
        return [Episode._from_row(r) for r in rows]

    @contextmanager
    def export_lock(self, target: str, mode: ExportMode, wait_s: float = 60.0) -> Iterator[None]:
        """Be the one export from this database to `target` in `mode` while inside; wait up to `wait_s` for it.

        Two exports at once would cut the same episodes into differently named parts: duplicates at the
        sink. The lock is an flock on a file beside the database, which the kernel drops when its holder
        dies (SIGKILL included), so a crashed export never blocks the next one.
        """
        digest = hashlib.sha256(f"{mode}\n{target}".encode()).hexdigest()[:16]
        path = self.path.with_name(f"{self.path.name}.export-{digest}.lock")
        deadline = time.monotonic() + wait_s
        with open(path, "a+b") as fh:
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        # No target in the message: an http(s) target may carry credentials.
                        raise ExportBusy(
                            f"another export to this target still holds {path} after {wait_s:g} s"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def pending_export_part(self, target: str, mode: ExportMode) -> ExportPart | None:
        """A part that was started but not confirmed (the export stopped between upload and watermark)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT target, mode, first_key, last_key, name, state FROM export_parts "
                "WHERE target = ? AND mode = ? AND state = 'pending' ORDER BY first_key LIMIT 1",
                (target, mode),
            ).fetchone()
        return ExportPart(*row) if row else None

    def begin_export_part(self, target: str, mode: ExportMode, first_key: int, last_key: int, name: str) -> ExportPart:
        """Record the intent to upload a part, so a re-run after a crash rewrites exactly this part."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO export_parts (target, mode, first_key, last_key, name, state, started_at) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                (target, mode, first_key, last_key, name, utc_now()),
            )
        return ExportPart(target, mode, first_key, last_key, name, "pending")

    def finish_export_part(self, part: ExportPart) -> None:
        """Mark a verified part done and advance the watermark past it, in one transaction."""
        now = utc_now()
        with self._write() as conn:
            conn.execute(
                "UPDATE export_parts SET state = 'done', done_at = ? WHERE target = ? AND mode = ? AND first_key = ?",
                (now, part.target, part.mode, part.first_key),
            )
            conn.execute(
                "INSERT INTO export_watermarks (target, mode, last_key, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (target, mode) DO UPDATE SET last_key = MAX(last_key, excluded.last_key), "
                "updated_at = excluded.updated_at",
                (part.target, part.mode, part.last_key, now),
            )
