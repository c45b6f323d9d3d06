"""Calling a set of actors as one: a single deadline, fail-fast, errors grouped by message; and
killing a set of actors so that their resources are free when the call returns."""
from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import ray


class WorkerGroupError(RuntimeError):
    """One or more actors failed; the message groups identical errors.

    ``causes`` holds the original exceptions (unwrapped from Ray's task errors; a timeout has
    none), so a failure policy can tell a lost worker from an error that would only repeat.
    """

    def __init__(self, message: str, causes: list[BaseException] = ()) -> None:
        super().__init__(message)
        self.causes = list(causes)


class PlacementTimeout(WorkerGroupError):
    """The cluster could not give the group its resources in time."""


def gather(refs: list[ray.ObjectRef], timeout_s: float, what: str) -> list[Any]:
    """Results of one call on every actor (``refs[i]`` from rank ``i``), under one deadline.

    Fails fast: once any rank has failed, the others are not waited for — they are likely
    blocked in a collective with the dead rank, and the caller tears the group down anyway.
    """
    deadline = time.monotonic() + timeout_s
    results: dict[ray.ObjectRef, Any] = {}
    errors: dict[str, list[int]] = collections.defaultdict(list)
    causes: list[BaseException] = []
    pending = list(refs)
    while pending and not errors:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            results[ready[0]] = ray.get(ready[0])
        except Exception as err:  # noqa: BLE001 — reported below, grouped
            cause = getattr(err, "cause", None) or err
            causes.append(cause)
            errors[f"{type(cause).__name__}: {cause}".strip()[:2000]].append(refs.index(ready[0]))
    if pending:
        reason = "abandoned after a peer failed" if errors else f"no answer within {timeout_s:.0f}s"
        errors[reason] = sorted(refs.index(r) for r in pending)
    if errors:
        detail = "; ".join(f"ranks {ranks}: {msg}" for msg, ranks in errors.items())
        raise WorkerGroupError(f"{what} failed — {detail}", causes)
    return [results[r] for r in refs]


def gather_next(streams: list[ray.ObjectRefGenerator], timeout_s: float, what: str,
                poll_s: float = 1.0, interrupt: Callable[[], None] = lambda: None) -> list[Any] | None:
    """The next item of every rank's streaming call (``streams[i]`` from rank ``i``), under one
    deadline, failing fast as ``gather`` does; None once every stream has ended. ``interrupt`` runs
    every ``poll_s`` while waiting (a caller's chance to ask the workers to stop)."""
    deadline = time.monotonic() + timeout_s
    items: dict[int, Any] = {}
    ended: list[int] = []
    errors: dict[str, list[int]] = collections.defaultdict(list)
    causes: list[BaseException] = []
    pending = list(range(len(streams)))
    while pending and not errors:
        ready, _ = ray.wait([streams[i] for i in pending], num_returns=1,
                            timeout=max(0.0, min(poll_s, deadline - time.monotonic())))
        if not ready:
            if time.monotonic() >= deadline:
                break
            interrupt()
            continue
        rank = next(i for i in pending if streams[i] is ready[0])
        pending.remove(rank)
        try:
            items[rank] = ray.get(next(streams[rank]))
        except StopIteration:
            ended.append(rank)
        except Exception as err:  # noqa: BLE001 — reported below, grouped
            cause = getattr(err, "cause", None) or err
            causes.append(cause)
            errors[f"{type(cause).__name__}: {cause}".strip()[:2000]].append(rank)
    if pending:
        reason = "abandoned after a peer failed" if errors else f"no answer within {timeout_s:.0f}s"
        errors[reason] = sorted(pending)
    if ended and items:  # the ranks agree on where to stop; one that did not is a bug, not a bad worker
        errors[f"ended while ranks {sorted(items)} went on"] = sorted(ended)
    if errors:
        detail = "; ".join(f"ranks {ranks}: {msg}" for msg, ranks in errors.items())
        raise WorkerGroupError(f"{what} failed — {detail}", causes)
    return None if ended else [items[i] for i in range(len(streams))]


def kill_actors(actors: list[ray.actor.ActorHandle], timeout_s: float = 30.0) -> None:
    """Kill ``actors`` (no restart) and wait until Ray reports each one dead, so that the caller
    can treat their resources as released. Killing needs no answer: a rank stuck in a collective
    would never answer a polite shutdown."""
    for actor in actors:
        ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + timeout_s
    alive = list(actors)
    while alive and time.monotonic() < deadline:
        probes = {actor: actor.__ray_ready__.remote() for actor in alive}
        alive = []
        for actor, probe in probes.items():
            try:
                ray.get(probe, timeout=max(0.1, deadline - time.monotonic()))
                alive.append(actor)  # the kill has not landed yet
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
        if alive:
            time.sleep(0.1)
