"""An evaluation's shards: a cut that does not depend on the world size, atomic commits, and ranks'
outputs merged into sample-id order with every sample accounted for exactly once."""
from __future__ import annotations

import numpy as np
import pytest

from coordinator.predictions import CommittedShards, ShardPlan, merge_rank_outputs


def test_shards_cover_every_sample_once_and_the_last_is_short():
    plan = ShardPlan(num_samples=10, shard_size=4)
    assert plan.num_shards == 3
    assert [plan.sample_ids(i) for i in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(IndexError):
        plan.sample_ids(3)
    with pytest.raises(ValueError):
        ShardPlan(num_samples=0, shard_size=4)


def report(ids: list[int], skipped: list[int] = ()) -> dict:
    outputs = {"scores": np.asarray(ids, np.float32)[:, None] * [1.0, -1.0], "sample_ids": np.asarray(ids, np.int64)}
    return {"outputs": outputs if ids else {}, "skipped": [{"sample_id": s, "path": f"{s}.mp4"} for s in skipped]}


def test_ranks_outputs_are_merged_in_sample_order_with_the_skipped_ones_accounted_for():
    # Micro-batches of 1 dealt to 3 ranks: rank 0 has 4 and 7, rank 1 has 5 (6 could not be decoded), rank 2 none.
    merged, skipped = merge_rank_outputs([report([4, 7]), report([5], skipped=[6]), report([])], [4, 5, 6, 7])
    assert merged["sample_ids"].tolist() == [4, 5, 7]
    assert merged["scores"][:, 0].tolist() == [4.0, 5.0, 7.0]
    assert [s["sample_id"] for s in skipped] == [6]


@pytest.mark.parametrize("reports", [
    [report([4, 5]), report([5, 6, 7])],  # 5 twice
    [report([4, 5]), report([7])],  # 6 nowhere
    [report([4, 5, 6]), report([], skipped=[6, 7])],  # 6 predicted and skipped
])
def test_a_shard_whose_samples_are_not_each_covered_once_is_refused(reports):
    with pytest.raises(RuntimeError, match="not each of 4…7 once"):
        merge_rank_outputs(reports, [4, 5, 6, 7])


def test_commits_are_atomic_and_loading_needs_every_shard(tmp_path):
    shards, plan = CommittedShards(tmp_path / "predictions"), ShardPlan(num_samples=6, shard_size=3)
    assert shards.done() == set()
    shards.commit(1, merge_rank_outputs([report([3, 4, 5])], [3, 4, 5])[0])
    (tmp_path / "predictions" / ".shard-00000.npz.x1y2.partial").write_bytes(b"half written")  # a crash mid-write
    assert shards.done() == {1}
    with pytest.raises(RuntimeError, match=r"shards \[0\] of 2 are not committed"):
        shards.load(plan)
    shards.commit(0, merge_rank_outputs([report([0, 2], skipped=[1])], [0, 1, 2])[0])
    loaded = shards.load(plan)
    assert loaded["sample_ids"].tolist() == [0, 2, 3, 4, 5] and loaded["scores"].shape == (5, 2)


def test_shards_made_under_another_plan_do_not_count(tmp_path):
    shards, plan = CommittedShards(tmp_path / "predictions"), ShardPlan(num_samples=6, shard_size=3)
    shards.bind(plan, key="list v1")
    shards.commit(0, merge_rank_outputs([report([0, 1, 2])], [0, 1, 2])[0])
    shards.bind(plan, key="list v1")  # the same plan again (a restarted coordinator): kept
    assert shards.done() == {0}
    shards.bind(plan, key="list v2")  # the list was edited: sample 0 may be another video now
    assert shards.done() == set()
    shards.commit(0, merge_rank_outputs([report([0, 1, 2])], [0, 1, 2])[0])
    shards.bind(ShardPlan(num_samples=6, shard_size=2), key="list v2")  # another cut
    assert shards.done() == set() and not list((tmp_path / "predictions").glob(".*partial"))
