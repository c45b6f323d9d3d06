from coordinator.recovery import Decision, FailurePolicy
from workers.calls import WorkerGroupError
from workers.decode import DataError


def test_lost_workers_are_restarted_until_the_budget_is_spent():
    policy = FailurePolicy(max_failures=2)
    lost = WorkerGroupError("train_step failed — ranks [1]: ActorDiedError", [RuntimeError("actor died")])
    timeout = WorkerGroupError("train_step failed — ranks [0, 1]: no answer within 600s")
    assert policy.decide(lost, 1) is Decision.RESTART
    assert policy.decide(timeout, 2) is Decision.RESTART
    assert policy.decide(lost, 3) is Decision.FAIL


def test_errors_a_restart_would_repeat_fail_at_once():
    policy = FailurePolicy(max_failures=10)
    assert policy.decide(WorkerGroupError("bad data", [DataError("16 videos in a row")]), 1) is Decision.FAIL
    assert policy.decide(WorkerGroupError("bug", [ValueError("shape")]), 1) is Decision.FAIL
