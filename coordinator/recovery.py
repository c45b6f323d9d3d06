"""What to do when a job's workers fail: restart from the last checkpoint, or give up."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import ray

from workers.calls import WorkerGroupError
from workers.decode import DataError


class Decision(enum.Enum):
    RESTART = "restart"
    FAIL = "fail"


# Errors a restart would only repeat: the data or the job's own code is at fault, not a worker.
DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (DataError, ValueError, TypeError, KeyError,
                                                         AssertionError)


def failure_cause(error: WorkerGroupError) -> str:
    """What a failure is counted as (``internvideo_worker_failures_total{cause}``)."""
    if any(isinstance(cause, DataError) for cause in error.causes):
        return "data"
    if any(isinstance(cause, ray.exceptions.RayActorError) for cause in error.causes):
        return "worker_lost"
    if not error.causes:  # nobody answered in time
        return "timeout"
    return "error"


@dataclass(frozen=True)
class FailurePolicy:
    max_failures: int

    def decide(self, error: WorkerGroupError, failures: int) -> Decision:
        """``failures``: how many the job has had, this one included."""
        if any(isinstance(cause, DETERMINISTIC_ERRORS) for cause in error.causes):
            return Decision.FAIL
        return Decision.RESTART if failures <= self.max_failures else Decision.FAIL
