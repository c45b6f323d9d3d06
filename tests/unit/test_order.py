import numpy as np
import pytest

from internvideo.data.order import GlobalBatchPlan, gradient_accumulation


def test_each_epoch_uses_every_sample_once_and_epochs_differ():
    plan = GlobalBatchPlan(num_samples=40, global_batch=8, seed=3)
    assert plan.steps_per_epoch == 5
    epoch0 = np.concatenate([plan.step_samples(s) for s in range(5)])
    epoch1 = np.concatenate([plan.step_samples(s) for s in range(5, 10)])
    assert sorted(epoch0) == list(range(40)) == sorted(epoch1)
    assert not np.array_equal(epoch0, epoch1)
    assert plan.epoch_of(4) == 0 and plan.epoch_of(5) == 1


@pytest.mark.parametrize("world_size, micro_batch", [(1, 8), (2, 2), (4, 1), (8, 1)])
def test_the_global_batch_is_the_same_at_any_world_size(world_size, micro_batch):
    plan = GlobalBatchPlan(num_samples=50, global_batch=8, seed=0)
    for step in (0, 3, 7):
        parts = [mb for rank in range(world_size) for mb in plan.micro_batches(step, rank, world_size, micro_batch)]
        assert all(len(mb) == micro_batch for mb in parts)
        assert np.array_equal(np.concatenate(parts), plan.step_samples(step))


def test_batch_that_does_not_split_is_refused():
    assert gradient_accumulation(16, 4, 2) == 2
    with pytest.raises(ValueError, match="not a multiple"):
        gradient_accumulation(16, 4, 3)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchPlan(num_samples=4, global_batch=8, seed=0)
