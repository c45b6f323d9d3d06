"""Tokens, roles and quotas in the coordinator's database; the schema migration that brought tenants."""
from __future__ import annotations

import sqlite3
import stat

import pytest

from coordinator.store import MIGRATIONS, JobStore, QueueFull
from coordinator.tenancy import Quota, Role, TokenStore, ensure_local_token
from tests.unit.test_store import spec


def test_a_token_authenticates_as_its_tenant_and_role_until_revoked(tmp_path):
    tokens = TokenStore(tmp_path / "jobs.sqlite")
    info, token = tokens.create("vision-lab", Role.MEMBER, "ci")
    principal = tokens.authenticate(token)
    assert (principal.tenant, principal.role, principal.token_id) == ("vision-lab", Role.MEMBER, info.token_id)
    # Only a hash is stored: the secret appears nowhere in the database file.
    secret = token.rsplit("_", 1)[1]
    assert secret.encode() not in (tmp_path / "jobs.sqlite").read_bytes()
    assert secret not in str(tokens.tokens())

    tokens.revoke(info.token_id)
    assert tokens.authenticate(token) is None
    with pytest.raises(KeyError, match="already revoked"):
        tokens.revoke(info.token_id)
    with pytest.raises(KeyError, match="no token"):
        tokens.revoke("000000000000")


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # a wrong secret for a known id
    lambda t: t.replace("ivt_", "xyz_"),
    lambda t: t + "x",
    lambda t: "",
    lambda t: "ivt_" + "0" * 12 + "_" + t.rsplit("_", 1)[1],  # the secret under an unknown id
])
def test_a_wrong_or_malformed_token_authenticates_as_nobody(tmp_path, mangle):
    tokens = TokenStore(tmp_path / "jobs.sqlite")
    _, token = tokens.create("vision-lab", Role.ADMIN)
    assert tokens.authenticate(mangle(token)) is None


def test_tenant_names_are_dns_labels(tmp_path):
    tokens = TokenStore(tmp_path / "jobs.sqlite")
    for bad in ("", "Vision", "-lab", "a" * 64, "a/b", "lab "):
        with pytest.raises(ValueError, match="tenant"):
            tokens.create(bad, Role.MEMBER)


def test_the_local_token_is_written_once_for_this_user_only_and_replaced_if_it_no_longer_works(tmp_path):
    tokens = TokenStore(tmp_path / "jobs.sqlite")
    path = tmp_path / "client-token"
    ensure_local_token(tokens, path)
    first = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    principal = tokens.authenticate(first)
    assert (principal.tenant, principal.role) == ("local", Role.ADMIN)
    ensure_local_token(tokens, path)
    assert path.read_text().strip() == first and len(tokens.tokens()) == 1
    tokens.revoke(principal.token_id)
    ensure_local_token(tokens, path)
    assert tokens.authenticate(path.read_text().strip()) is not None


def test_quotas_default_to_none_and_refuse_negative_limits(tmp_path):
    tokens = TokenStore(tmp_path / "jobs.sqlite")
    assert tokens.quota("vision-lab") == Quota()
    tokens.set_quota("vision-lab", Quota(max_running_gpus=4, max_queued_jobs=10))
    tokens.set_quota("vision-lab", Quota(max_running_gpus=2))
    assert tokens.quota("vision-lab") == Quota(2, None)
    with pytest.raises(ValueError, match="≥ 0"):
        Quota(max_queued_jobs=-1)


def test_the_queued_jobs_quota_is_checked_in_the_same_transaction_and_a_repeat_is_not_counted(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    store.create_job(spec("a"), max_queued=2)
    store.create_jobs([spec("b")], max_queued=2)
    with pytest.raises(QueueFull, match="2 queued jobs"):
        store.create_job(spec("c"), max_queued=2)
    again, created = store.create_job(spec("a"), max_queued=2)  # idempotent: the first job, no quota spent
    assert not created
    assert len(store.list_jobs()[0]) == 2


def test_request_ids_are_each_tenants_own(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    ours, _ = store.create_job(spec("req-1"))
    theirs, created = store.create_job(spec("req-1", tenant="vision-lab"))
    assert created and theirs.job_id != ours.job_id and theirs.tenant == "vision-lab"
    assert [j.job_id for j in store.list_jobs(tenant="vision-lab")[0]] == [theirs.job_id]
    assert len(store.list_jobs()[0]) == 2


def test_a_store_from_before_tenants_migrates_keeping_jobs_events_and_order(tmp_path):
    path = tmp_path / "jobs.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    for version, script in enumerate(MIGRATIONS[:4], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {version}; COMMIT;")
    for i, request_id in enumerate(["r1", None, "r3"]):
        db.execute("INSERT INTO jobs (job_id, request_id, name, kind, state, config_json, min_workers, max_workers,"
                   " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (f"job-{i}", request_id, f"n{i}", "pretrain-mae", "QUEUED", "{}", 1, 1, i, i))
        db.execute("INSERT INTO events VALUES (?,?,?,?,?)", (f"job-{i}", 1, i, "state", "{}"))
    db.close()

    store = JobStore(path)
    assert store.schema_version == len(MIGRATIONS)
    jobs, _ = store.list_jobs()
    assert [(j.job_id, j.tenant, j.request_id) for j in jobs] == [
        ("job-0", "local", "r1"), ("job-1", "local", ""), ("job-2", "local", "r3")]
    assert len(list(store.replay("job-1", 0))) == 1
    _, created = store.create_job(spec("r1"))  # the old request id is the local tenant's
    assert not created
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are on again after the rebuild
        store._db.execute("INSERT INTO events VALUES ('job-none', 1, 0, 'state', '{}')")


def test_the_client_takes_the_first_token_given_flags_before_the_environment(tmp_path, monkeypatch):
    from coordinator.client import find_token
    (tmp_path / "flag").write_text("from-flag-file\n")
    (tmp_path / "env").write_text("from-env-file\n")
    monkeypatch.setenv("INTERNVIDEO_TOKEN", "from-env")
    monkeypatch.setenv("INTERNVIDEO_TOKEN_FILE", str(tmp_path / "env"))
    assert find_token("given", tmp_path / "flag") == "given"
    assert find_token("", tmp_path / "flag") is None  # "": send none
    assert find_token(None, tmp_path / "flag") == "from-flag-file"
    assert find_token() == "from-env"
    monkeypatch.delenv("INTERNVIDEO_TOKEN")
    assert find_token() == "from-env-file"
    with pytest.raises(FileNotFoundError):  # a file named but missing is an error, not "no token"
        find_token(None, tmp_path / "missing")
