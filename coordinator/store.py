"""Job records, their event history and checkpoints, in SQLite (the embedded default).

One connection guarded by a lock: the coordinator's writes are small and few (a
progress row per step at most), and WAL mode keeps readers from blocking. A watcher waits
for its own job's next event (``wait_for_events``): a write wakes only the watchers of the
jobs it touched, and a watcher's wait reads nothing from the database.

A long job's history stays bounded (``coordinator.history``): each event is added to the job's
running totals as it is appended, old progress events are thinned, and a replay reads a page at
a time.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from coordinator.history import COUNTED, RECENT_STEPS, HistoryTotals, kept_progress
from coordinator.state import JobState, check_transition
from coordinator.usage import JobUsage, Usage

# Each entry moves the schema one version up; PRAGMA user_version records how far a file is.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        job_id       TEXT PRIMARY KEY,
        request_id   TEXT UNIQUE,
        name         TEXT NOT NULL,
        kind         TEXT NOT NULL,
        state        TEXT NOT NULL,
        message      TEXT NOT NULL DEFAULT '',
        config_json  TEXT NOT NULL,
        min_workers  INTEGER NOT NULL,
        max_workers  INTEGER NOT NULL,
        world_size   INTEGER NOT NULL DEFAULT 0,
        priority     INTEGER NOT NULL DEFAULT 0,
        progress_json TEXT NOT NULL DEFAULT '{}',
        result_json  TEXT NOT NULL DEFAULT '{}',
        created_at   REAL NOT NULL,
        updated_at   REAL NOT NULL
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE TABLE events (
        job_id  TEXT NOT NULL REFERENCES jobs(job_id),
        seq     INTEGER NOT NULL,
        time    REAL NOT NULL,
        type    TEXT NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE checkpoints (
        job_id     TEXT NOT NULL REFERENCES jobs(job_id),
        step       INTEGER NOT NULL,
        path       TEXT NOT NULL,
        world_size INTEGER NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (job_id, step)
    );
    CREATE TABLE skipped_videos (
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        path   TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        count  INTEGER NOT NULL,
        PRIMARY KEY (job_id, path)
    );
    """,
    # Failures survived so far: bounds train.max_failures across requeues and coordinator restarts.
    "ALTER TABLE jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0",
    # What the scheduler needs of a job, derived once at submit ('{}' for jobs stored before).
    "ALTER TABLE jobs ADD COLUMN needs_json TEXT NOT NULL DEFAULT '{}'",
    # Goodput: each job's GPU-time and energy by use, and the GPU-time its trainers were held.
    """
    CREATE TABLE job_usage (
        job_id      TEXT NOT NULL REFERENCES jobs(job_id),
        use         TEXT NOT NULL,
        gpu_seconds REAL NOT NULL,
        joules      REAL NOT NULL,
        PRIMARY KEY (job_id, use)
    );
    ALTER TABLE jobs ADD COLUMN held_gpu_seconds REAL NOT NULL DEFAULT 0;
    """,
    # Tenants: every job belongs to one (jobs stored before belong to the embedded default's,
    # "local"), and a request_id is one tenant's idempotency key, not everyone's. SQLite cannot drop
    # a column's UNIQUE: the table is rebuilt (its documented procedure, foreign keys off meanwhile).
    """
    CREATE TABLE jobs_v5 (
        job_id       TEXT PRIMARY KEY,
        tenant       TEXT NOT NULL,
        request_id   TEXT,
        name         TEXT NOT NULL,
        kind         TEXT NOT NULL,
        state        TEXT NOT NULL,
        message      TEXT NOT NULL DEFAULT '',
        config_json  TEXT NOT NULL,
        min_workers  INTEGER NOT NULL,
        max_workers  INTEGER NOT NULL,
        world_size   INTEGER NOT NULL DEFAULT 0,
        priority     INTEGER NOT NULL DEFAULT 0,
        progress_json TEXT NOT NULL DEFAULT '{}',
        result_json  TEXT NOT NULL DEFAULT '{}',
        created_at   REAL NOT NULL,
        updated_at   REAL NOT NULL,
        failures     INTEGER NOT NULL DEFAULT 0,
        needs_json   TEXT NOT NULL DEFAULT '{}',
        held_gpu_seconds REAL NOT NULL DEFAULT 0,
        UNIQUE (tenant, request_id)
    );
    INSERT INTO jobs_v5 SELECT job_id, 'local', request_id, name, kind, state, message, config_json,
        min_workers, max_workers, world_size, priority, progress_json, result_json, created_at, updated_at,
        failures, needs_json, held_gpu_seconds FROM jobs ORDER BY rowid;
    DROP TABLE jobs;
    ALTER TABLE jobs_v5 RENAME TO jobs;
    CREATE INDEX jobs_state ON jobs(state);
    CREATE INDEX jobs_tenant ON jobs(tenant, state);
    CREATE INDEX jobs_queue ON jobs(state, priority DESC);  -- rowid, the tiebreak, is in every index
    -- Bearer tokens: only a hash of the secret is kept (see coordinator.tenancy).
    CREATE TABLE tokens (
        token_id      TEXT PRIMARY KEY,
        tenant        TEXT NOT NULL,
        role          TEXT NOT NULL,
        name          TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        created_at    REAL NOT NULL,
        revoked_at    REAL
    );
    -- Per-tenant quotas; a tenant without a row, or a NULL, has no limit.
    CREATE TABLE quotas (
        tenant           TEXT PRIMARY KEY,
        max_running_gpus INTEGER,
        max_queued_jobs  INTEGER,
        max_priority     INTEGER NOT NULL DEFAULT 0
    );
    """,
    # Each job's history summed as it is written (coordinator.history): its result and efficiency report
    # read this row, not every event. A job stored before has none: its events are summed when it is needed.
    """
    CREATE TABLE job_totals (
        job_id TEXT PRIMARY KEY REFERENCES jobs(job_id),
        totals TEXT NOT NULL
    );
    """,
)


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the coordinator's database at ``path``, migrated to this code's schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several connections share the file (the job store, the token store, `internvideo token` from a
    # shell): a writer waits for another's transaction instead of failing at once.
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    try:
        _migrate(db, path)
    except BaseException:
        db.close()
        raise
    db.execute("PRAGMA foreign_keys=ON")
    return db


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the file to this code's schema, one version per transaction. The version is read inside
    the transaction that moves it: of two processes opening an old file at once, the second finds the
    first's work done. Foreign keys are off meanwhile (a table rebuild drops the table others reference)."""
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{path} has schema version {version}, newer than this code "
                                   f"({len(MIGRATIONS)}); upgrade internvideo-on-ray")
            if version == len(MIGRATIONS):
                db.execute("COMMIT")
                return
            for statement in _statements(MIGRATIONS[version]):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _statements(script: str) -> Iterator[str]:
    """The SQL statements of a script, one at a time (``executescript`` would commit first)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending


LOCAL_TENANT = "local"  # the embedded default's tenant, and every job's stored before tenants were
QUEUE_PAGE = 64  # queued jobs read at a time
EVENTS_PAGE = 256  # events read at a time by a replay
T = TypeVar("T")


@dataclass
class _Watchers:
    woken: threading.Condition
    newest_seq: int  # of the job's events, kept current by every write while anyone waits
    count: int = 0


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:12]}"


class JobNotFound(KeyError):
    pass


class QueueFull(Exception):
    """A tenant's queued-jobs quota would be exceeded."""


@dataclass(frozen=True)
class JobNeeds:
    """What the scheduler needs of a job, derived from its config once, at submit: the world sizes
    that split its global batch, its decode pool's starting size and CPUs per worker, and the jobs
    whose checkpoints it starts from (it runs once they have succeeded)."""

    world_sizes: tuple[int, ...]
    decode_workers: int
    decode_cpus: float
    depends_on: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"world_sizes": list(self.world_sizes), "decode_workers": self.decode_workers,
                "decode_cpus": self.decode_cpus, "depends_on": list(self.depends_on)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "JobNeeds | None":
        if not data:
            return None  # stored before needs were: the scheduler derives them once
        return cls(tuple(data["world_sizes"]), int(data["decode_workers"]), float(data["decode_cpus"]),
                   tuple(data.get("depends_on", ())))


@dataclass(frozen=True)
class JobSpec:
    """What a client asked for, after validation."""

    kind: str
    config: dict[str, Any]
    min_workers: int
    max_workers: int
    needs: JobNeeds
    priority: int = 0
    name: str = ""
    request_id: str = ""  # the tenant's idempotency key
    tenant: str = LOCAL_TENANT  # whose job it is: only they (and admins) see it
    job_id: str = ""  # assigned by the caller (a recipe's jobs name each other); "": the store picks one


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    request_id: str
    name: str
    kind: str
    state: JobState
    message: str
    config: dict[str, Any]
    min_workers: int
    max_workers: int
    world_size: int
    priority: int
    progress: dict[str, Any]
    result: dict[str, Any]
    created_at: float
    updated_at: float
    failures: int = 0
    needs: JobNeeds | None = None
    tenant: str = LOCAL_TENANT


@dataclass(frozen=True)
class QueuedJob:
    """What the scheduler reads of a queued job on every tick: everything but its config (which is
    read, with the whole record, once the job is admitted)."""

    job_id: str
    tenant: str
    priority: int
    min_workers: int
    max_workers: int
    message: str
    needs: JobNeeds | None


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    seq: int
    time: float
    type: str  # state | progress | checkpoint | skipped_video | result | decode_pool | validation | workers
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointRecord:
    job_id: str
    step: int
    path: str
    world_size: int
    created_at: float


@dataclass(frozen=True)
class SkippedVideoRecord:
    path: str
    reason: str
    detail: str
    count: int


class JobStore:
    def __init__(self, path: str | Path, recent_steps: int = RECENT_STEPS) -> None:
        """``recent_steps``: the newest steps whose progress events are all kept (see ``coordinator.history``)."""
        self.path = Path(path)
        self.recent_steps = recent_steps
        self._db = connect(self.path)
        self._db.create_function("kept_progress", 3, kept_progress, deterministic=True)
        self._lock = threading.RLock()
        self._appended: dict[str, int] = {}  # job id → its newest event's seq, in the open transaction
        self._watchers: dict[str, _Watchers] = {}  # job id → those waiting for its next event

    # -- schema -------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes -------------------------------------------------------------------------
    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(db)`` in one transaction and wake the watchers of the jobs it added events to."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._appended.clear()
                raise
            for job_id, seq in self._appended.items():
                if job_id in self._watchers:
                    self._watchers[job_id].newest_seq = seq
                    self._watchers[job_id].woken.notify_all()
            self._appended.clear()
            return out

    def wait_for_events(self, job_id: str, after_seq: int, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the job to have an event after ``after_seq``; whether it has.
        While it waits the job's newest seq is kept in memory: a wake-up reads nothing."""
        with self._lock:
            watchers = self._watchers.get(job_id) or _Watchers(threading.Condition(self._lock), self.newest_seq(job_id))
            if watchers.newest_seq > after_seq:
                return True
            self._watchers[job_id] = watchers
            watchers.count += 1
            try:
                watchers.woken.wait(timeout_s)
            finally:
                watchers.count -= 1
                if not watchers.count:
                    del self._watchers[job_id]
            return watchers.newest_seq > after_seq

    def newest_seq(self, job_id: str) -> int:
        """The seq of the job's newest event (0: none)."""
        with self._lock:
            return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?",
                                    (job_id,)).fetchone()[0]

    def create_job(self, spec: JobSpec, max_queued: int | None = None) -> tuple[JobRecord, bool]:
        """Store a QUEUED job; returns ``(job, created)``. A known request_id returns its job."""
        jobs, created = self.create_jobs([spec], max_queued)
        return jobs[0], created

    def create_jobs(self, specs: list[JobSpec], max_queued: int | None = None) -> tuple[list[JobRecord], bool]:
        """Store QUEUED jobs of one tenant all together or none (a recipe's stages); returns ``(jobs,
        created)``. If the first one's request_id is known, the jobs first made with these request_ids
        return; otherwise ``QueueFull`` if the tenant would have more than ``max_queued`` queued."""
        tenant = specs[0].tenant

        def create(db: sqlite3.Connection) -> tuple[list[str], bool]:
            known = [db.execute("SELECT job_id FROM jobs WHERE tenant = ? AND request_id = ?",
                                (tenant, spec.request_id)).fetchone()
                     if spec.request_id else None for spec in specs]
            if known[0] is not None:
                return [row["job_id"] for row in known if row is not None], False
            if max_queued is not None:
                queued = db.execute("SELECT COUNT(*) FROM jobs WHERE tenant = ? AND state = ?",
                                    (tenant, JobState.QUEUED.value)).fetchone()[0]
                if queued + len(specs) > max_queued:
                    raise QueueFull(f"tenant {tenant} has {queued} queued jobs; {len(specs)} more would pass its "
                                    f"quota of {max_queued}")
            return [self._insert(db, spec) for spec in specs], True

        job_ids, created = self._write(create)
        return [self.get_job(job_id) for job_id in job_ids], created

    def _insert(self, db: sqlite3.Connection, spec: JobSpec) -> str:
        job_id = spec.job_id or new_job_id()
        now = time.time()
        db.execute(
            "INSERT INTO jobs (job_id, tenant, request_id, name, kind, state, config_json, min_workers,"
            " max_workers, priority, created_at, updated_at, needs_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (job_id, spec.tenant, spec.request_id or None, spec.name or job_id, spec.kind, JobState.QUEUED.value,
             json.dumps(spec.config), spec.min_workers, spec.max_workers, spec.priority, now, now,
             json.dumps(spec.needs.to_json())))
        db.execute("INSERT INTO job_totals VALUES (?,?)", (job_id, HistoryTotals().to_json()))
        self._append(db, job_id, "state", {"from": "", "to": JobState.QUEUED.value, "message": "submitted"})
        return job_id

    def transition(self, job_id: str, new: JobState, message: str = "", **columns: Any) -> JobRecord:
        """Change a job's state (checked by the state machine) and record the event atomically."""
        def change(db: sqlite3.Connection) -> None:
            current = self._row(db, job_id)["state"]
            check_transition(JobState(current), new)
            self._update(db, job_id, state=new.value, message=message, **columns)
            self._append(db, job_id, "state", {"from": current, "to": new.value, "message": message})

        self._write(change)
        return self.get_job(job_id)

    def update_job(self, job_id: str, **columns: Any) -> None:
        self._write(lambda db: self._update(db, job_id, **columns))

    def record_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """The job's latest progress, and an event of it; ``progress["step"]``: the step it completed."""
        def write(db: sqlite3.Connection) -> None:
            self._update(db, job_id, progress=progress)
            self._append(db, job_id, "progress", progress)
            if progress["step"] % self.recent_steps == 0:
                self._thin(db, job_id, progress["step"])

        self._write(write)

    def _thin(self, db: sqlite3.Connection, job_id: str, newest_step: int) -> None:
        """Delete the job's progress events that ``kept_progress`` no longer keeps. Run once per
        ``recent_steps`` steps, it reads the events kept so far: a number that grows with the log of the
        job's length. The totals counted every one of them already."""
        db.execute("DELETE FROM events WHERE job_id = ? AND type = 'progress'"
                   " AND NOT kept_progress(json_extract(payload, '$.step'), ?, ?)",
                   (job_id, newest_step, self.recent_steps))

    def record_decode_pool(self, job_id: str, change: dict[str, Any]) -> None:
        """The job's decode pool was resized: ``{"from", "to", "data_wait_fraction", "reason"}``."""
        self._write(lambda db: self._append(db, job_id, "decode_pool", change))

    def record_validation(self, job_id: str, validation: dict[str, Any]) -> None:
        """The kind's metrics on held-out data at a step: ``{"step", "metrics"}``."""
        self._write(lambda db: self._append(db, job_id, "validation", validation))

    def record_shard(self, job_id: str, shard: dict[str, Any]) -> None:
        """An evaluation committed a shard of predictions: ``{"shard", "num_shards", "samples", "path",
        "world_size"}`` (the files are the record of what is done; this is the history)."""
        self._write(lambda db: self._append(db, job_id, "shard", shard))

    def record_checkpoint(self, job_id: str, step: int, path: str, world_size: int) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?)",
                       (job_id, step, path, world_size, time.time()))
            self._append(db, job_id, "checkpoint", {"step": step, "path": path, "world_size": world_size})

        self._write(write)

    def delete_checkpoint(self, job_id: str, step: int) -> None:
        self._write(lambda db: db.execute("DELETE FROM checkpoints WHERE job_id = ? AND step = ?", (job_id, step)))

    def record_skipped(self, job_id: str, path: str, reason: str, detail: str) -> None:
        """Count a skipped video; the first skip of a path is also an event."""
        def write(db: sqlite3.Connection) -> None:
            cur = db.execute("UPDATE skipped_videos SET count = count + 1 WHERE job_id = ? AND path = ?",
                             (job_id, path))
            if cur.rowcount == 0:
                db.execute("INSERT INTO skipped_videos VALUES (?,?,?,?,1)", (job_id, path, reason, detail))
                self._append(db, job_id, "skipped_video", {"path": path, "reason": reason, "detail": detail})

        self._write(write)

    def record_workers(self, job_id: str, workers: list[dict[str, Any]]) -> None:
        """An attempt's workers started: what each one runs on (device, peak FLOP/s, energy source)."""
        self._write(lambda db: self._append(db, job_id, "workers", {"workers": workers}))

    def add_usage(self, job_id: str, charged: dict[str, Usage], held_gpu_seconds: float) -> None:
        """Add GPU-time and energy by use (see ``coordinator.usage``) to the job's totals."""
        def write(db: sqlite3.Connection) -> None:
            self._row(db, job_id)
            for use, usage in charged.items():
                db.execute("INSERT INTO job_usage VALUES (?,?,?,?) ON CONFLICT (job_id, use) DO UPDATE SET"
                           " gpu_seconds = gpu_seconds + excluded.gpu_seconds, joules = joules + excluded.joules",
                           (job_id, use, usage.gpu_seconds, usage.joules))
            db.execute("UPDATE jobs SET held_gpu_seconds = held_gpu_seconds + ? WHERE job_id = ?",
                       (held_gpu_seconds, job_id))

        self._write(write)

    def usage(self, job_ids: Iterable[str] = (), updated_since: float = 0.0) -> dict[str, tuple[str, JobUsage]]:
        """job id → (kind, GPU-time and energy by use) of the jobs in ``job_ids`` (all, if empty)
        updated since ``updated_since`` that have used anything."""
        job_ids = list(job_ids)
        where = "updated_at >= ?" + (f" AND job_id IN ({','.join('?' * len(job_ids))})" if job_ids else "")
        with self._lock:
            jobs = self._db.execute(f"SELECT job_id, kind, held_gpu_seconds FROM jobs WHERE {where}",
                                    [updated_since, *job_ids]).fetchall()
            rows = self._db.execute(f"SELECT u.* FROM job_usage u JOIN jobs USING (job_id) WHERE {where}",
                                    [updated_since, *job_ids]).fetchall()
        uses: dict[str, dict[str, Usage]] = {}
        for r in rows:
            uses.setdefault(r["job_id"], {})[r["use"]] = Usage(r["gpu_seconds"], r["joules"])
        return {r["job_id"]: (r["kind"], JobUsage(uses.get(r["job_id"], {}), r["held_gpu_seconds"]))
                for r in jobs if r["job_id"] in uses or r["held_gpu_seconds"]}

    def record_result(self, job_id: str, result: dict[str, Any]) -> None:
        def write(db: sqlite3.Connection) -> None:
            self._update(db, job_id, result=result)
            self._append(db, job_id, "result", result)

        self._write(write)

    _JSON_COLUMNS = {"progress": "progress_json", "result": "result_json", "needs": "needs_json"}

    def _update(self, db: sqlite3.Connection, job_id: str, **columns: Any) -> None:
        self._row(db, job_id)
        sets = {self._JSON_COLUMNS.get(k, k): (json.dumps(v) if k in self._JSON_COLUMNS else v)
                for k, v in columns.items()}
        sets["updated_at"] = time.time()
        db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} WHERE job_id = ?",
                   (*sets.values(), job_id))

    def _append(self, db: sqlite3.Connection, job_id: str, type_: str, payload: dict[str, Any]) -> None:
        """Append an event, and add it to the job's totals in the same transaction."""
        if type_ in COUNTED:
            totals = self._totals(db, job_id)
            totals.add(type_, payload)
            db.execute("INSERT OR REPLACE INTO job_totals VALUES (?,?)", (job_id, totals.to_json()))
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)).fetchone()[0]
        db.execute("INSERT INTO events VALUES (?,?,?,?,?)", (job_id, seq, time.time(), type_, json.dumps(payload)))
        self._appended[job_id] = seq

    def _totals(self, db: sqlite3.Connection, job_id: str) -> HistoryTotals:
        row = db.execute("SELECT totals FROM job_totals WHERE job_id = ?", (job_id,)).fetchone()
        if row is not None:
            return HistoryTotals.from_json(row["totals"])
        # Stored before totals were: its history was never thinned, so summing it (a page at a time) is
        # exact. Its first counted event after the upgrade stores the sum; until then each read sums it.
        return HistoryTotals.of(self.replay(job_id, 0))

    # -- reads --------------------------------------------------------------------------
    @staticmethod
    def _row(db: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return row

    @staticmethod
    def _to_record(row: sqlite3.Row) -> JobRecord:
        return JobRecord(
            job_id=row["job_id"], request_id=row["request_id"] or "", name=row["name"], kind=row["kind"],
            state=JobState(row["state"]), message=row["message"], config=json.loads(row["config_json"]),
            min_workers=row["min_workers"], max_workers=row["max_workers"], world_size=row["world_size"],
            priority=row["priority"], progress=json.loads(row["progress_json"]),
            result=json.loads(row["result_json"]), created_at=row["created_at"], updated_at=row["updated_at"],
            failures=row["failures"], needs=JobNeeds.from_json(json.loads(row["needs_json"])), tenant=row["tenant"])

    def get_job(self, job_id: str) -> JobRecord:
        with self._lock:
            return self._to_record(self._row(self._db, job_id))

    def list_jobs(self, states: Iterable[JobState] = (), kinds: Iterable[str] = (),
                  after_rowid: int = 0, limit: int = 50, tenant: str | None = None) -> tuple[list[JobRecord], int]:
        """Jobs in submission order after ``after_rowid`` (of ``tenant``; None: everyone's); returns
        them and the last rowid read."""
        states, kinds = [s.value for s in states], list(kinds)
        sql, args = "SELECT rowid, * FROM jobs WHERE rowid > ?", [after_rowid]
        if tenant is not None:
            sql += " AND tenant = ?"
            args.append(tenant)
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += states
        if kinds:
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += kinds
        sql += " ORDER BY rowid LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [self._to_record(r) for r in rows], (rows[-1]["rowid"] if rows else after_rowid)

    def queue(self) -> Iterator[QueuedJob]:
        """QUEUED jobs in admission order: higher priority first, then first submitted first (a
        requeued job keeps its place). Read a page at a time, as the caller goes: a scheduler that
        stops at the head of a deep queue reads the head, not the queue."""
        after: tuple[int, int] = (2**63 - 1, 0)  # (priority, rowid) of the last job read
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT rowid, job_id, tenant, priority, min_workers, max_workers, message, needs_json FROM jobs"
                    " WHERE state = ? AND (priority < ? OR (priority = ? AND rowid > ?))"
                    " ORDER BY priority DESC, rowid LIMIT ?",
                    (JobState.QUEUED.value, after[0], after[0], after[1], QUEUE_PAGE)).fetchall()
            for r in rows:
                yield QueuedJob(r["job_id"], r["tenant"], r["priority"], r["min_workers"], r["max_workers"],
                                r["message"], JobNeeds.from_json(json.loads(r["needs_json"])))
            if len(rows) < QUEUE_PAGE:
                return
            after = (rows[-1]["priority"], rows[-1]["rowid"])

    def replay(self, job_id: str, after_seq: int) -> Iterator[JobEvent]:
        """The job's events after ``after_seq`` in order, read a page at a time as the caller goes: a
        replay holds one page, whatever the history's length, and its first event comes after one
        page's read. Events appended meanwhile come too; seqs rise but may have gaps (thinned progress)."""
        while True:
            with self._lock:
                self._row(self._db, job_id)
                rows = self._db.execute("SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                                        (job_id, after_seq, EVENTS_PAGE)).fetchall()
            for r in rows:
                yield JobEvent(r["job_id"], r["seq"], r["time"], r["type"], json.loads(r["payload"]))
            if len(rows) < EVENTS_PAGE:
                return
            after_seq = rows[-1]["seq"]

    def totals(self, job_id: str) -> HistoryTotals:
        """The job's history summed: what its result and efficiency report need (``coordinator.history``)."""
        with self._lock:
            self._row(self._db, job_id)
            return self._totals(self._db, job_id)

    def checkpoints(self, job_id: str) -> list[CheckpointRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM checkpoints WHERE job_id = ? ORDER BY step", (job_id,)).fetchall()
        return [CheckpointRecord(r["job_id"], r["step"], r["path"], r["world_size"], r["created_at"]) for r in rows]

    def skipped_videos(self, job_id: str) -> list[SkippedVideoRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM skipped_videos WHERE job_id = ? ORDER BY path", (job_id,)).fetchall()
        return [SkippedVideoRecord(r["path"], r["reason"], r["detail"], r["count"]) for r in rows]

    def queued_since(self, job_id: str) -> float:
        """When the job last entered the queue (submitted or requeued)."""
        with self._lock:
            row = self._db.execute("SELECT time FROM events WHERE job_id = ? AND type = 'state' AND "
                                   "json_extract(payload, '$.to') = ? ORDER BY seq DESC LIMIT 1",
                                   (job_id, JobState.QUEUED.value)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return row["time"]

    def count_by_state(self) -> dict[JobState, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {JobState(r["state"]): r["n"] for r in rows}
