"""A shared coordinator lets in only those it should: tokens, tenants, roles, quotas, roots and limits,
each refusal with its status code and nothing stored. One live coordinator (gRPC on loopback, Ray,
SQLite); the tenants' GPU quotas are 0, so their jobs stay queued and nothing trains."""
from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.client import JobClient, read_config
from coordinator.tenancy import Quota, Role, TokenStore
from protos.internvideo.v1 import jobs_pb2 as pb
from tests.integration.conftest import REPO, running_coordinator

pytestmark = pytest.mark.integration

WATCHES_PER_TOKEN = 2


@pytest.fixture(scope="module")
def roots(tmp_path_factory, dataset):
    """A second data root holding a symlink to a folder outside every root, which holds a train list."""
    data, outside = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("outside")
    (outside / "train.txt").write_text(dataset.train_list.read_text())
    (data / "escape").symlink_to(outside)
    return data, outside


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory, dataset, roots):
    root = tmp_path_factory.mktemp("security")
    # The state folder inside a storage root, as deployed on shared storage: still no config may name it.
    args = ("--data-root", str(dataset.root), "--data-root", str(roots[0]), "--storage-root", str(root),
            "--max-watches-per-token", str(WATCHES_PER_TOKEN))
    with running_coordinator(root, args=args) as coord:
        yield coord


@pytest.fixture(scope="module")
def tokens(coordinator):
    """Tokens made beside the live coordinator, in its database (as `internvideo token create` does)."""
    store = TokenStore(coordinator.state_dir / "jobs.sqlite")
    for tenant in ("team-a", "team-b"):
        store.set_quota(tenant, Quota(max_running_gpus=0, max_queued_jobs=5))
    made = {name: store.create(tenant, role)[1] for name, tenant, role in (
        ("a", "team-a", Role.MEMBER), ("a_viewer", "team-a", Role.VIEWER), ("b", "team-b", Role.MEMBER))}
    yield made
    store.close()


def client_for(coordinator, token: str) -> JobClient:
    return JobClient(coordinator.address, token=token, timeout_s=60)


def submit(client: JobClient, dataset, *overrides: str, **kwargs) -> pb.Job:
    return client.submit("pretrain-mae", read_config("tiny-cpu"), [f"data.train_list={dataset.train_list}",
                                                                   *overrides], **kwargs)


def refused(call, code: grpc.StatusCode, match: str = "") -> str:
    with pytest.raises(grpc.RpcError) as err:
        result = call()
        if hasattr(result, "__next__"):
            list(result)
    assert err.value.code() is code, err.value.details()
    assert match in err.value.details()
    return err.value.details()


def all_job_ids(coordinator) -> set[str]:
    with JobClient(coordinator.address, token=coordinator.token) as admin:
        return {j.job_id for j in admin.list(page_size=1000).jobs}


def every_call(client: JobClient, job_id: str, dataset) -> dict[str, object]:
    return {"submit": lambda: submit(client, dataset), "get": lambda: client.get(job_id),
            "list": lambda: client.list(), "cancel": lambda: client.cancel(job_id),
            "watch": lambda: client.watch(job_id, follow=False), "efficiency": lambda: client.efficiency(job_id),
            "cluster": lambda: client.cluster(),
            "recipe": lambda: client.submit_recipe("stages: [{name: a, kind: pretrain-mae}]")}


@pytest.mark.parametrize("token", ["", "not-a-token", "ivt_000000000000_" + "A" * 43, "revoked"])
def test_no_wrong_or_revoked_token_is_refused_on_every_call_and_stores_nothing(coordinator, dataset, token):
    if token == "revoked":  # through the CLI, as an operator would
        created = subprocess.run([sys.executable, "-m", "coordinator.cli", "token", "create", "--tenant", "team-c",
                                  "--state-dir", str(coordinator.state_dir)], capture_output=True, text=True,
                                 check=True, cwd=REPO)
        token = created.stdout.strip()
        with client_for(coordinator, token) as client:
            client.list()  # it worked until revoked
        token_id = token.split("_")[1]
        subprocess.run([sys.executable, "-m", "coordinator.cli", "token", "revoke", token_id, "--state-dir",
                        str(coordinator.state_dir)], check=True, capture_output=True, cwd=REPO)
    before = all_job_ids(coordinator)
    with client_for(coordinator, token) as client:
        for name, call in every_call(client, "job-anything", dataset).items():
            details = refused(call, grpc.StatusCode.UNAUTHENTICATED)
            assert ("no bearer token" if not token else "unknown, malformed or revoked") in details, name
        # Probes need no token.
        health = health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert all_job_ids(coordinator) == before


def test_a_tenant_sees_only_its_own_jobs_and_another_tenants_job_is_not_found(coordinator, dataset, tokens):
    with client_for(coordinator, tokens["a"]) as a, client_for(coordinator, tokens["b"]) as b, \
            JobClient(coordinator.address, token=coordinator.token) as admin:
        job = submit(a, dataset, request_id="same-key")
        assert job.state == pb.JOB_STATE_QUEUED
        assert a.get(job.job_id).job_id == job.job_id
        for name, call in every_call(b, job.job_id, dataset).items():
            if name in ("get", "cancel", "watch", "efficiency"):
                refused(call, grpc.StatusCode.NOT_FOUND, f"no job {job.job_id!r}")
        assert job.job_id not in {j.job_id for j in b.list().jobs}
        assert job.job_id in {j.job_id for j in a.list().jobs}
        # The same request id is each tenant's own key: team-b gets its own job, not team-a's.
        theirs = submit(b, dataset, request_id="same-key")
        assert theirs.job_id != job.job_id and submit(a, dataset, request_id="same-key").job_id == job.job_id
        # Of the coordinator's state a tenant may name only its own jobs' folders (to resume from, say).
        folder = coordinator.state_dir / "jobs" / job.job_id / "train.txt"
        refused(lambda: submit(b, dataset, f"data.train_list={folder}"), grpc.StatusCode.PERMISSION_DENIED,
                "may read only its own jobs' folders")
        refused(lambda: submit(a, dataset, f"data.train_list={folder}"), grpc.StatusCode.INVALID_ARGUMENT,
                "config.data.train_list")  # allowed, but the job wrote no such file
        # A config may start from the tenant's own jobs only: another's is "no job".
        refused(lambda: submit(b, dataset, f"train.resume_from=job:{job.job_id}"), grpc.StatusCode.INVALID_ARGUMENT,
                f"config.train.resume_from: no job {job.job_id!r}")
        # The quota of 0 GPUs holds the job, saying so; an admin sees and cancels any tenant's job.
        assert "waiting for tenant team-a's GPU quota: 0 of 0 in use" in admin.get(job.job_id).message
        assert {job.job_id, theirs.job_id} <= {j.job_id for j in admin.list(page_size=1000).jobs}
        assert admin.cancel(theirs.job_id).state == pb.JOB_STATE_CANCELLED
        assert a.cancel(job.job_id).state == pb.JOB_STATE_CANCELLED


def test_a_viewer_reads_but_may_not_submit_or_cancel(coordinator, dataset, tokens):
    with client_for(coordinator, tokens["a"]) as member, client_for(coordinator, tokens["a_viewer"]) as viewer:
        job = submit(member, dataset)
        before = all_job_ids(coordinator)
        assert viewer.get(job.job_id).job_id == job.job_id
        refused(lambda: submit(viewer, dataset), grpc.StatusCode.PERMISSION_DENIED, "viewer, may only read")
        refused(lambda: viewer.cancel(job.job_id), grpc.StatusCode.PERMISSION_DENIED, "viewer, may only read")
        assert member.get(job.job_id).state == pb.JOB_STATE_QUEUED and all_job_ids(coordinator) == before
        member.cancel(job.job_id)


def test_paths_outside_the_roots_are_denied_directly_and_through_a_symlink(coordinator, dataset, tokens, roots):
    data, outside = roots
    before = all_job_ids(coordinator)
    with client_for(coordinator, tokens["a"]) as a:
        for path in (outside / "train.txt", data / "escape" / "train.txt", f"{dataset.root}/../x/train.txt"):
            details = refused(lambda: submit(a, dataset, f"data.train_list={path}"),
                              grpc.StatusCode.PERMISSION_DENIED, "config.data.train_list")
            assert "outside the data roots or this tenant's storage folders" in details
        # The coordinator's own state (its admin token, its database) is private even inside a root.
        for path in (coordinator.state_dir / "client-token", coordinator.state_dir / "jobs.sqlite"):
            details = refused(lambda: submit(a, dataset, f"data.train_list={path}"),
                              grpc.StatusCode.PERMISSION_DENIED, "inside the coordinator's own state")
            assert coordinator.token not in details
        refused(lambda: a.submit_recipe(f"stages: [{{name: s, kind: pretrain-mae, config: {{}}, set: "
                                        f"[data.train_list={outside}/train.txt]}}]"),
                grpc.StatusCode.PERMISSION_DENIED, "recipe.s.config.data.train_list")
    assert all_job_ids(coordinator) == before


def test_oversized_requests_and_a_full_queue_are_refused(coordinator, dataset, tokens):
    before = all_job_ids(coordinator)
    with client_for(coordinator, tokens["b"]) as b:
        refused(lambda: b.submit("pretrain-mae", "x: " + "y" * (2 << 20)), grpc.StatusCode.RESOURCE_EXHAUSTED)
        refused(lambda: b.submit("pretrain-mae", "x: " + "y" * (300 << 10)), grpc.StatusCode.INVALID_ARGUMENT,
                "config_yaml: ")
        refused(lambda: submit(b, dataset, name="n" * 1000), grpc.StatusCode.INVALID_ARGUMENT, "name: 1000 characters")
        assert all_job_ids(coordinator) == before
        queued = [submit(b, dataset) for _ in range(5 - len(b.list(states=[pb.JOB_STATE_QUEUED]).jobs))]
        refused(lambda: submit(b, dataset), grpc.StatusCode.RESOURCE_EXHAUSTED, "its quota of 5")
        assert all_job_ids(coordinator) == before | {j.job_id for j in queued}
        for job in queued:
            b.cancel(job.job_id)


def test_a_token_may_hold_only_so_many_watch_streams(coordinator, dataset, tokens):
    with client_for(coordinator, tokens["a"]) as a, client_for(coordinator, tokens["a_viewer"]) as viewer:
        job = submit(a, dataset)
        streams = [a.watch(job.job_id) for _ in range(WATCHES_PER_TOKEN)]
        for stream in streams:
            assert next(stream).seq == 1  # open, following the queued job
        refused(lambda: a.watch(job.job_id), grpc.StatusCode.RESOURCE_EXHAUSTED, "2 watch streams open")
        assert next(viewer.watch(job.job_id)).seq == 1  # another token's budget is its own
        streams[0].cancel()
        for _ in range(50):  # the server notices the cancelled stream within its poll interval
            try:
                assert next(a.watch(job.job_id)).seq == 1
                break
            except grpc.RpcError as err:
                assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                time.sleep(0.2)
        else:
            pytest.fail("a closed watch stream was never given back")
        a.cancel(job.job_id)


# -- TLS ---------------------------------------------------------------------------------------------------
def _certificate(name: str, key, issuer_name, issuer_key, ca: bool = False, server: bool = False):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA; a server certificate for 127.0.0.1 and a client certificate it signed; and a
    client certificate from another CA."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = tmp_path_factory.mktemp("pki")

    def write(name: str, cert, key) -> None:
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca, other = (_certificate(n, k, None, None, ca=True) for n, k in (("test CA", ca_key), ("other CA", other_key)))
    write("ca", ca, ca_key)
    for name, issuer, issuer_key, server in (("server", ca, ca_key, True), ("client", ca, ca_key, False),
                                             ("stranger", other, other_key, False)):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, _certificate(name, key, issuer.subject, issuer_key, server=server), key)
    return folder


def test_mutual_tls_admits_only_clients_with_a_certificate_of_its_ca(tmp_path, pki, dataset):
    from coordinator.client import ClientTls
    ours = ClientTls(pki / "ca.pem", pki / "client.pem", pki / "client.key")
    args = ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
            "--tls-client-ca", str(pki / "ca.pem"))
    with running_coordinator(tmp_path, args=args, tls=ours) as coord:
        with JobClient(coord.address, token=coord.token, tls=ours) as client:
            assert client.list().jobs == []
        # A token is not enough: without a certificate of the CA, or in plaintext, no call gets through.
        for tls in (ClientTls(pki / "ca.pem"), ClientTls(pki / "ca.pem", pki / "stranger.pem", pki / "stranger.key"),
                    None):
            with JobClient(coord.address, token=coord.token, tls=tls, timeout_s=10) as client:
                refused(lambda: client.list(), grpc.StatusCode.UNAVAILABLE)
        # And the certificate is not enough either: the token is still checked.
        with JobClient(coord.address, token="", tls=ours) as client:
            refused(lambda: client.list(), grpc.StatusCode.UNAUTHENTICATED)


def test_priority_above_the_tenants_maximum_is_for_admins_only(coordinator, dataset, tokens):
    """Priority preempts other tenants' running jobs: a member may not outrank everyone at will."""
    before = all_job_ids(coordinator)
    with client_for(coordinator, tokens["a"]) as a, JobClient(coordinator.address, token=coordinator.token) as admin:
        refused(lambda: submit(a, dataset, priority=5), grpc.StatusCode.PERMISSION_DENIED,
                "priority: 5 is above tenant team-a's maximum of 0")
        assert all_job_ids(coordinator) == before
        admin.cancel(submit(admin, dataset, priority=5).job_id)


def test_a_revoked_token_loses_its_open_watch_streams(coordinator, dataset, tokens):
    store = TokenStore(coordinator.state_dir / "jobs.sqlite")
    info, token = store.create("team-a", Role.VIEWER, "revoked while watching")
    with client_for(coordinator, tokens["a"]) as a, client_for(coordinator, token) as watcher:
        job = submit(a, dataset)
        stream = watcher.watch(job.job_id)
        assert next(stream).seq == 1
        store.revoke(info.token_id)
        with pytest.raises(grpc.RpcError) as ended:
            next(stream)  # within the server's poll interval (5 s)
        assert ended.value.code() is grpc.StatusCode.UNAUTHENTICATED and "revoked" in ended.value.details()
        a.cancel(job.job_id)
    store.close()
