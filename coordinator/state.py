"""The job state machine: the states, which are terminal, and the one place transitions are checked."""
from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    RESCALING = "RESCALING"
    RECOVERING = "RECOVERING"
    PREEMPTED = "PREEMPTED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def active(self) -> bool:
        """Holds (or is acquiring) cluster resources."""
        return self in _ACTIVE


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
_ACTIVE = frozenset({JobState.STARTING, JobState.RUNNING, JobState.RESCALING, JobState.RECOVERING})

# A job goes back to QUEUED from any active state: preempted (through PREEMPTED, once its
# checkpoint is written), fewer than min_workers left after a failure, or a coordinator restart.
# Requeued, it resumes from its last committed checkpoint.
_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.STARTING, JobState.CANCELLED, JobState.FAILED}),
    JobState.STARTING: frozenset({JobState.RUNNING, JobState.RECOVERING, JobState.PREEMPTED, JobState.FAILED,
                                  JobState.CANCELLED, JobState.QUEUED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.RESCALING,
                                 JobState.RECOVERING, JobState.PREEMPTED, JobState.QUEUED}),
    JobState.RESCALING: frozenset({JobState.RUNNING, JobState.RECOVERING, JobState.PREEMPTED, JobState.FAILED,
                                   JobState.CANCELLED, JobState.QUEUED}),
    JobState.RECOVERING: frozenset({JobState.RUNNING, JobState.PREEMPTED, JobState.FAILED, JobState.CANCELLED,
                                    JobState.QUEUED}),
    JobState.PREEMPTED: frozenset({JobState.QUEUED, JobState.CANCELLED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class InvalidTransition(Exception):
    """A state change the machine does not allow (gRPC: FAILED_PRECONDITION)."""


def check_transition(current: JobState, new: JobState) -> None:
    if new not in _ALLOWED[current]:
        raise InvalidTransition(f"job is {current.value}; it cannot become {new.value}")
