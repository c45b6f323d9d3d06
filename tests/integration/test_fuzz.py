"""Generated requests against the live server: whatever a client sends, the answer is a status the
client can act on — never INTERNAL or UNKNOWN (a crash) — and the server keeps serving.

Requests are built from the proto's own descriptors (every field, unknown enum values included),
with configs that are sometimes nonsense and sometimes a real preset with generated overrides, so
that validation is reached at every depth; raw bytes go to every method too. The tenant's GPU quota
is 0: whatever validates is stored and waits, nothing trains."""
from __future__ import annotations

import grpc
import pytest
import yaml
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.client import JobClient, read_config
from coordinator.tenancy import Quota, Role, TokenStore
from internvideo.tasks import task_types
from protos.internvideo.v1 import jobs_pb2 as pb
from tests.integration.conftest import running_coordinator

pytestmark = pytest.mark.integration

SERVICE = pb.DESCRIPTOR.services_by_name["JobService"]
CRASHES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
KEYS = ["data.train_list", "data.val_list", "train.steps", "train.global_batch", "train.micro_batch", "train.lr",
        "model.init", "model.encoder.depth", "data.decode_workers", "eval.shard_size", "debug.hold_at_steps", "x.y.z"]


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    with running_coordinator(tmp_path_factory.mktemp("fuzz")) as coord:
        tokens = TokenStore(coord.state_dir / "jobs.sqlite")
        tokens.set_quota("fuzz", Quota(max_running_gpus=0))
        coord.fuzz_token = tokens.create("fuzz", Role.MEMBER)[1]
        tokens.close()
        yield coord


@pytest.fixture(scope="module")
def channel(coordinator):
    with grpc.insecure_channel(coordinator.address) as channel:
        yield channel


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
yaml_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | text,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
                           max_leaves=20)
override = st.builds(lambda key, value: f"{key}={value}", st.sampled_from(KEYS) | text,
                     yaml_values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()) | text)
SEEN: dict[str, set[grpc.StatusCode]] = {}  # method → the codes its generated requests got
config_text = st.one_of(
    text,
    yaml_values.map(yaml.safe_dump),
    st.just(read_config("tiny-cpu")),
    st.sampled_from(["{", "a: [", "a: &x [*x]", "!!python/object:os.system []", "- 1\n- 2", "data: 3"]))


def strategy_for(field: FieldDescriptor, real_list: str):
    if field.name in ("config_yaml", "recipe_yaml"):
        one = config_text
    elif field.name == "overrides":
        one = override | st.just(f"data.train_list={real_list}")  # so that some configs are valid
    elif field.name == "kind" or field.name == "kinds":
        one = st.sampled_from(sorted(task_types())) | text
    elif field.name == "job_id":
        one = st.sampled_from(["job-000000000000", ""]) | text
    elif field.type == FieldDescriptor.TYPE_STRING:
        one = text
    elif field.type == FieldDescriptor.TYPE_BOOL:
        one = st.booleans()
    elif field.type == FieldDescriptor.TYPE_ENUM:
        one = st.integers(-3, 15)  # proto3 enums are open: unknown values arrive as numbers
    elif field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        one = st.integers(-2**31, 2**31 - 1) | st.integers(-2, 10)
    elif field.type == FieldDescriptor.TYPE_INT64:
        one = st.integers(-2**63, 2**63 - 1) | st.integers(-2, 10)
    else:
        raise AssertionError(f"no strategy for {field.full_name}")
    return st.lists(one, max_size=5) if field.is_repeated else one


def requests(method, real_list: str):
    descriptor = method.input_type
    cls = message_factory.GetMessageClass(descriptor)
    generated = st.fixed_dictionaries({}, optional={f.name: strategy_for(f, real_list) for f in descriptor.fields})
    if method.name == "SubmitJob":  # also near-valid jobs: a preset on real data, a few generated changes
        generated |= st.fixed_dictionaries(
            {"kind": st.just("pretrain-mae"), "config_yaml": st.just(read_config("tiny-cpu")),
             "overrides": st.lists(override, max_size=2).map(lambda more: [f"data.train_list={real_list}", *more]),
             "min_workers": st.integers(-1, 3), "max_workers": st.integers(-1, 5)})
    return generated.map(lambda fields: cls(**fields))


def call(channel, method, request, token: str) -> grpc.StatusCode:
    path = f"/{SERVICE.full_name}/{method.name}"
    response_class = message_factory.GetMessageClass(method.output_type)
    kwargs = dict(request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
                  response_deserializer=response_class.FromString)
    metadata = (("authorization", f"Bearer {token}"),)
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path, **kwargs)(request, metadata=metadata, timeout=3):
                pass
        else:
            channel.unary_unary(path, **kwargs)(request, metadata=metadata, timeout=20)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda m: m.name)
def test_generated_requests_never_crash_a_call(coordinator, channel, method, dataset):
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(request=requests(method, str(dataset.train_list)))
    def check(request):
        code = call(channel, method, request, coordinator.fuzz_token)
        SEEN.setdefault(method.name, set()).add(code)
        assert code not in CRASHES, f"{method.name}({request}) → {code}"
        # Only a watch that follows a live job may run into its deadline.
        assert code is not grpc.StatusCode.DEADLINE_EXCEEDED or method.server_streaming

    check()


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda m: m.name)
def test_bytes_that_are_no_request_are_the_clients_error(coordinator, channel, method):
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(data=st.binary(max_size=64), token=st.sampled_from(["fuzz", "none"]))
    def check(data, token):
        code = call(channel, method, data, coordinator.fuzz_token if token == "fuzz" else "nope")
        assert code not in CRASHES, f"{method.name}({data!r}) → {code}"

    check()


def test_the_server_still_serves_after_the_fuzzing(coordinator, channel):
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    with JobClient(coordinator.address, token=coordinator.token) as admin:
        admin.list()
        assert "Traceback" not in coordinator.log_tail(2000)
    # The generator reached past validation: some submissions were stored, some refused.
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= SEEN["SubmitJob"]
