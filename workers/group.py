"""A job's group of EncoderWorker actors: gang placement, rendezvous, lock-step calls, teardown.

``create`` builds the whole group or nothing (a half-built group is torn down before the
error propagates); every call goes through ``calls.gather`` (one deadline, fail-fast,
grouped errors).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from internvideo.tasks import TaskRef
from workers.calls import PlacementTimeout, WorkerGroupError, gather, gather_next, kill_actors
from workers.trainer import EncoderWorker


@dataclass
class WorkerGroup:
    workers: list[ray.actor.ActorHandle]
    placement: PlacementGroup
    infos: list[dict[str, Any]]
    placed_at: float  # time.perf_counter() when the placement group was ready: the devices are held
    last_call_joules: float = 0.0  # of the last call (or of the set-up, after create)

    @property
    def world_size(self) -> int:
        return len(self.workers)

    @property
    def metrics_endpoints(self) -> list[str]:
        return [i["metrics_endpoint"] for i in self.infos]

    @classmethod
    def create(cls, *, job_id: str, task: TaskRef, world_size: int, bundle: dict[str, float],
               num_samples: int, decode_actors: list, host: str | None, timeout_s: float,
               placement_timeout_s: float | None = None, load_universal: bool = False) -> "WorkerGroup":
        pg = placement_group([dict(bundle) for _ in range(world_size)], strategy="PACK",
                             name=f"{job_id}-trainers")
        workers: list[ray.actor.ActorHandle] = []
        try:
            placement_timeout_s = placement_timeout_s or timeout_s
            if not pg.wait(timeout_seconds=placement_timeout_s):
                available = ray.available_resources()
                raise PlacementTimeout(f"no room for {world_size} × {bundle} within {placement_timeout_s:.0f}s "
                                       f"(Ray reports {', '.join(f'{k} {available.get(k, 0):g}' for k in bundle)} "
                                       "free)")
            placed_at = time.perf_counter()
            actor_cls = ray.remote(EncoderWorker)
            for rank in range(world_size):
                workers.append(actor_cls.options(
                    num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
                    max_concurrency=2,  # a stop reaches a worker while it streams its steps
                    scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank),
                ).remote(job_id, task, rank, world_size, True, host))
            (addr, port), = gather([workers[0].rendezvous_address.remote()], timeout_s, "rendezvous")
            infos = gather([w.setup.remote(master_addr=addr, master_port=port, num_samples=num_samples,
                                           decode_actors=decode_actors, timeout_s=timeout_s,
                                           load_universal=load_universal)
                            for w in workers], timeout_s, "worker set-up")
        except BaseException:
            _teardown(workers, pg)
            raise
        return cls(workers, pg, infos, placed_at, sum(info["energy_joules"] for info in infos))

    def call(self, method: str, *args: Any, timeout_s: float) -> list[Any]:
        """``method`` on every worker; the joules they used since their previous call are left in
        ``last_call_joules``."""
        answers = gather([w.metered.remote(method, *args) for w in self.workers], timeout_s, method)
        self.last_call_joules = sum(joules for _, joules in answers)
        return [result for result, _ in answers]

    def train_steps(self, start: int, end: int, *, timeout_s: float,
                    stop_wanted: Callable[[], bool]) -> Iterator[tuple[int, list[dict[str, Any]], float]]:
        """Steps ``start`` to ``end - 1`` in one streaming call per worker: yields ``(step, reports,
        joules)`` as every rank finishes a step (each step under ``timeout_s``). Once ``stop_wanted()``
        (asked while waiting for a step and after every step) is true, the workers finish the step in
        flight and stop before the next, all at the same one."""
        streams = [w.train_steps.remote(start, end) for w in self.workers]
        stopping = False

        def stop_if_wanted(in_flight: int) -> None:
            nonlocal stopping
            if not stopping and stop_wanted():
                stopping = True
                for worker in self.workers:
                    worker.stop.remote(start, in_flight + 1)

        for step in range(start, end):
            answers = gather_next(streams, timeout_s, "train_step", poll_s=0.5,
                                  interrupt=lambda: stop_if_wanted(in_flight=step))
            if answers is None:
                return
            reports = [report for report, _ in answers]
            if any(report["step"] != step for report in reports):
                raise WorkerGroupError(f"train_step: ranks reported steps {[r['step'] for r in reports]}, not {step}")
            yield step, reports, sum(joules for _, joules in answers)
            stop_if_wanted(in_flight=step + 1)  # the workers went on with it while this one was recorded
        # Every rank ran the chunk to its end; their streams close with it.
        if gather_next(streams, timeout_s, "train_step") is not None:
            raise WorkerGroupError(f"a worker streamed a step past {end}")

    def shutdown(self) -> None:
        _teardown(self.workers, self.placement)
        self.workers = []


def _teardown(workers: list[ray.actor.ActorHandle], pg: PlacementGroup) -> None:
    kill_actors(workers)
    remove_placement_group(pg)
