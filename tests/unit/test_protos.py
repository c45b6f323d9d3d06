from coordinator.convert import state_from_proto, state_to_proto
from coordinator.state import JobState
from protos.generate import main as generate_main
from protos.internvideo.v1 import jobs_pb2 as pb


def test_committed_generated_code_is_fresh():
    assert generate_main(["--check"]) == 0, "run `make proto` and commit the result"


def test_every_job_state_has_a_proto_value_and_back():
    for state in JobState:
        assert state_from_proto(state_to_proto(state)) is state
    assert len(pb.JobState.keys()) == len(JobState) + 1  # + UNSPECIFIED
