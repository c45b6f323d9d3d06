"""Who may use the coordinator and how much: tenants, their bearer tokens and roles, their quotas.

A token is ``ivt_<id>_<secret>``; only the SHA-256 of the secret is stored. The secret is 256
random bits, so a fast hash is as safe as a slow one here (a slow hash defends guessable
passwords, which these are not) and checking a call costs one indexed read. ``internvideo token``
and ``internvideo quota`` change these tables in the coordinator's database directly: whoever may
write the state folder administers the coordinator, the same trust as its checkpoints.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from coordinator.store import LOCAL_TENANT, connect

TOKEN_PREFIX = "ivt_"
TOKEN_PATTERN = re.compile(r"ivt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
TENANT_PATTERN = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")  # a DNS label: fits a k8s namespace


class Role(enum.Enum):
    """What a token may do, within its tenant (an admin: over every tenant)."""

    VIEWER = "viewer"  # read its tenant's jobs and the cluster
    MEMBER = "member"  # and submit and cancel them
    ADMIN = "admin"    # everyone's jobs

    @property
    def writes(self) -> bool:
        return self is not Role.VIEWER


@dataclass(frozen=True)
class Principal:
    """The caller of one request, as its token says."""

    token_id: str
    tenant: str
    role: Role

    def sees(self, tenant: str) -> bool:
        return self.role is Role.ADMIN or tenant == self.tenant

    @property
    def tenant_filter(self) -> str | None:
        """The tenant whose jobs it lists; None: every tenant's (an admin)."""
        return None if self.role is Role.ADMIN else self.tenant


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    tenant: str
    role: Role
    name: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class Quota:
    """A tenant's limits; None: none."""

    max_running_gpus: int | None = None  # trainers of its running jobs (a GPU each; a CPU slot on the CPU default)
    max_queued_jobs: int | None = None
    # The highest priority its members may ask for. Priority preempts other tenants' running jobs, so
    # by default nobody but an admin rises above the common 0.
    max_priority: int = 0

    def __post_init__(self) -> None:
        for name in ("max_running_gpus", "max_queued_jobs"):
            if (value := getattr(self, name)) is not None and value < 0:
                raise ValueError(f"{name}: must be ≥ 0 (or no limit), got {value}")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    if not TENANT_PATTERN.fullmatch(tenant):
        raise ValueError(f"tenant {tenant!r}: lowercase letters, digits and '-', 1 to 63 characters, "
                         "starting and ending with a letter or digit")
    return tenant


class TokenStore:
    """Tokens and quotas, in the coordinator's database (its own connection)."""

    def __init__(self, path: str | Path) -> None:
        self._db = connect(Path(path))
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _write(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    # -- tokens -------------------------------------------------------------------------------
    def create(self, tenant: str, role: Role, name: str = "") -> tuple[TokenInfo, str]:
        """A new token; returns its record and the token itself (shown once, never stored)."""
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = time.time()
        self._write("INSERT INTO tokens VALUES (?,?,?,?,?,?,NULL)",
                    (token_id, check_tenant(tenant), role.value, name, _digest(secret), now))
        return TokenInfo(token_id, tenant, role, name, now, None), f"{TOKEN_PREFIX}{token_id}_{secret}"

    def revoke(self, token_id: str) -> None:
        if not self._write("UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
                           (time.time(), token_id)):
            known = self._read("SELECT revoked_at FROM tokens WHERE token_id = ?", (token_id,))
            raise KeyError(f"token {token_id} was already revoked" if known else f"no token {token_id!r}")

    def tokens(self) -> list[TokenInfo]:
        return [TokenInfo(r["token_id"], r["tenant"], Role(r["role"]), r["name"], r["created_at"], r["revoked_at"])
                for r in self._read("SELECT * FROM tokens ORDER BY created_at")]

    def is_active(self, token_id: str) -> bool:
        """Whether the token exists and is not revoked (a long call checks again while it runs)."""
        return bool(self._read("SELECT 1 FROM tokens WHERE token_id = ? AND revoked_at IS NULL", (token_id,)))

    def authenticate(self, token: str) -> Principal | None:
        """The principal a token stands for; None for a malformed, unknown or revoked one."""
        match = TOKEN_PATTERN.fullmatch(token)
        if match is None:
            return None
        token_id, secret = match.groups()
        rows = self._read("SELECT * FROM tokens WHERE token_id = ? AND revoked_at IS NULL", (token_id,))
        if not rows or not hmac.compare_digest(rows[0]["secret_sha256"], _digest(secret)):
            return None
        return Principal(token_id, rows[0]["tenant"], Role(rows[0]["role"]))

    # -- quotas -------------------------------------------------------------------------------
    def set_quota(self, tenant: str, quota: Quota) -> None:
        self._write("INSERT INTO quotas VALUES (?,?,?,?) ON CONFLICT (tenant) DO UPDATE SET "
                    "max_running_gpus = excluded.max_running_gpus, max_queued_jobs = excluded.max_queued_jobs, "
                    "max_priority = excluded.max_priority",
                    (check_tenant(tenant), quota.max_running_gpus, quota.max_queued_jobs, quota.max_priority))

    def quota(self, tenant: str) -> Quota:
        rows = self._read("SELECT * FROM quotas WHERE tenant = ?", (tenant,))
        return _quota(rows[0]) if rows else Quota()

    def quotas(self) -> dict[str, Quota]:
        return {r["tenant"]: _quota(r) for r in self._read("SELECT * FROM quotas ORDER BY tenant")}


def _quota(row: sqlite3.Row) -> Quota:
    return Quota(row["max_running_gpus"], row["max_queued_jobs"], row["max_priority"])


def ensure_local_token(tokens: TokenStore, token_file: Path) -> None:
    """The embedded default stays one command: on first start an admin token of the ``local`` tenant
    is written where the CLI on this machine looks (readable by this user only)."""
    if token_file.exists() and tokens.authenticate(token_file.read_text().strip()) is not None:
        return
    _, token = tokens.create(LOCAL_TENANT, Role.ADMIN, name="local (written by the coordinator's first start)")
    token_file.parent.mkdir(parents=True, exist_ok=True)
    partial = token_file.with_suffix(".partial")
    partial.touch(mode=0o600)
    partial.chmod(0o600)
    partial.write_text(token + "\n")
    partial.replace(token_file)
