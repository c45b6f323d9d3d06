"""Decode pools of real Ray actors and the trainer-side stream: a clip is the same whichever worker
decoded it, after the pool restarts, after it is resized mid-stream, and after the stream resumes
from its saved state."""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
import ray

from internvideo.data.formats import VideoSource
from internvideo.data.order import GlobalBatchPlan
from internvideo.data.pipeline import MaskedClips, PretrainClipSpec
from internvideo.data.synthetic import write_synthetic_dataset
from workers.calls import kill_actors
from workers.decode import ClipStream, Dataset, DecodePool, PoolSpec

SPEC = PretrainClipSpec(num_frames=4, sampling_rate=2, input_size=32, patch_size=16, tubelet_size=2,
                        mask_ratio=0.75, seed=11)
STEPS, GLOBAL_BATCH, MICRO = 4, 8, 2


@pytest.fixture(scope="module")
def pool_spec(tmp_path_factory):
    ds = write_synthetic_dataset(tmp_path_factory.mktemp("pool"), num_videos=20, num_frames=16, size=48, seed=2)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield PoolSpec(job_id="pool-test", data=Dataset(VideoSource("list", str(ds.train_list)), MaskedClips(SPEC)),
                   seed=SPEC.seed, cpus=0.5,
                   threads=2, host="127.0.0.1", restarts=1)
    ray.shutdown()


def stream(actors, num_samples: int, rank: int = 0, world_size: int = 1, timeout_s: float = 60) -> ClipStream:
    plan = GlobalBatchPlan(num_samples, GLOBAL_BATCH, seed=SPEC.seed)
    return ClipStream(actors, plan, rank=rank, world_size=world_size, micro_batch=MICRO, end_step=STEPS,
                      max_in_flight=3, timeout_s=timeout_s)


def is_dead(actor: ray.actor.ActorHandle) -> bool:
    """Ray says the actor is gone for good (killed without restart), not merely slow to answer."""
    try:
        ray.get(actor.__ray_ready__.remote(), timeout=30)
    except ray.exceptions.RayActorError:
        return True
    return False


def targets(s: ClipStream) -> set[ray.actor.ActorHandle]:
    """The actors the stream's outstanding requests wait on."""
    return {request.actor for request in s._in_flight}


def key(batch) -> tuple:
    return batch["step"], batch["micro"], tuple(batch["sample_ids"])


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert [key(b) for b in got] == [key(b) for b in want]
    for a, b in zip(got, want):
        assert np.array_equal(a["video"], b["video"]) and np.array_equal(a["mask"], b["mask"])


@contextlib.contextmanager
def started_pool(pool_spec: PoolSpec, size: int):
    pool = DecodePool.create(pool_spec, size, timeout_s=60)
    try:
        yield pool
    finally:
        pool.shutdown()


@pytest.fixture(scope="module")
def reference(pool_spec):
    """Every micro-batch of rank 0 of 1, decoded by a one-worker pool."""
    with started_pool(pool_spec, 1) as pool:
        num_samples = ray.get(pool.actors[0].info.remote())["num_samples"]
        batches = list(stream(pool.actors, num_samples))
    assert len(batches) == STEPS * GLOBAL_BATCH // MICRO
    return num_samples, batches


def test_any_worker_of_a_pool_decodes_the_same_clips(pool_spec, reference):
    num_samples, want = reference
    with started_pool(pool_spec, 3) as pool:
        assert_same(list(stream(pool.actors, num_samples)), want)


def test_the_stream_resumes_exactly_from_its_state(pool_spec, reference):
    num_samples, want = reference
    with started_pool(pool_spec, 2) as pool:
        first = stream(pool.actors, num_samples)
        head = [next(first) for _ in range(5)]
        state = first.state_dict()
        assert state == {"step": 1, "micro": 1}  # 4 micro-batches a step
        resumed = stream(pool.actors, num_samples)
        resumed.reset(state)
        assert_same(head + list(resumed), want)


def test_a_restarted_pool_and_a_resized_pool_give_the_same_clips(pool_spec, reference):
    num_samples, want = reference
    pool = DecodePool.create(pool_spec, 1, timeout_s=60)
    try:
        s = stream(pool.actors, num_samples)
        got = [next(s) for _ in range(3)]
        # Pool restart: every actor replaced while requests are in flight.
        old = pool.actors
        assert targets(s) == set(old)
        pool.shutdown()
        assert all(is_dead(actor) for actor in old)
        pool = DecodePool.create(pool_spec, 1, timeout_s=60)
        s.set_actors(pool.actors)
        assert targets(s) == set(pool.actors)  # the dead workers' requests were sent again
        got += [next(s) for _ in range(3)]
        # Grow to 3, then shrink to 1 with requests outstanding at the removed workers.
        assert pool.resize(3, timeout_s=60) == [] and len(pool.actors) == 3
        s.set_actors(pool.actors)
        got += [next(s) for _ in range(4)]
        removed = pool.resize(1, timeout_s=60)
        assert len(removed) == 2 and len(pool.metrics_endpoints) == 1
        assert targets(s) & set(removed)  # round robin over 3: the last 3 requests hit every worker
        s.set_actors(pool.actors)
        assert targets(s) == set(pool.actors)
        kill_actors(removed)
        assert all(is_dead(actor) for actor in removed)
        while (batch := next(s, None)) is not None:  # every later request goes to the one worker left
            got.append(batch)
            assert targets(s) <= set(pool.actors)
        assert_same(got, want)
    finally:
        pool.shutdown()


def test_a_request_not_answered_in_time_is_a_clear_error_and_the_stream_can_seek_back(pool_spec, reference):
    num_samples, want = reference
    with started_pool(dataclasses.replace(pool_spec, delay_s=3.0), 1) as pool:
        s = stream(pool.actors, num_samples, timeout_s=0.5)
        with pytest.raises(ray.exceptions.GetTimeoutError, match=r"within 0.5s \(data.decode_timeout_s\)"):
            next(s)
        assert s.state_dict() == {"step": 0, "micro": 0}  # nothing consumed: a redone step starts here
        s.timeout_s = 60
        s.reset(s.state_dict())
        assert_same([next(s) for _ in range(2)], want[:2])


def test_a_pool_grows_only_as_far_as_the_cluster_has_room(pool_spec):
    with started_pool(pool_spec, 1) as pool:
        # 4 CPUs, 0.5 each: at most 8 fit in all; ask for far more.
        pool.resize(20, timeout_s=60)
        assert len(pool.actors) == 8
        assert ray.available_resources().get("CPU", 0.0) < 0.5
