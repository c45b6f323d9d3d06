"""The decode pool sizing policy: grow by the measured shortfall, shrink one at a time when idle,
never flap back to a size it had to grow out of, and give CPUs back at once when told to."""
import pytest

from coordinator.autoscale import DecodePoolSizer


def sizer(**overrides) -> DecodePoolSizer:
    return DecodePoolSizer(**{"minimum": 1, "maximum": 8, "target": 0.05, "window": 4, **overrides})


def feed(s: DecodePoolSizer, wait: float, steps: int) -> None:
    for _ in range(steps):
        s.observe(wait)


def test_one_decision_per_full_window():
    s = sizer()
    assert [s.observe(0.5) for _ in range(4)] == [False, False, False, True]
    assert s.decide(2, limit=8).size == 4  # waited half of each step: twice the pool
    feed(s, 0.02, 3)
    assert s.decide(4, limit=8) is None  # not a full window
    assert [s.observe(0.5) for _ in range(4)] == [False, False, False, True]  # that decision began a new one
    assert s.decide(4, limit=8).size == 8


def test_a_fixed_pool_never_asks_for_a_decision():
    s = sizer(minimum=3, maximum=3)
    assert not any(s.observe(0.9) for _ in range(20))


def test_growth_follows_the_shortfall_and_stays_within_limits():
    s = sizer()
    feed(s, 0.75, 4)
    assert s.decide(1, limit=8).size == 4  # 1 / (1 - 0.75)
    feed(s, 0.10, 4)
    assert s.decide(4, limit=8).size == 5  # a small shortfall still adds one
    feed(s, 0.9, 4)
    decision = s.decide(5, limit=6)
    assert decision.size == 6 and "waited 90%" in decision.reason
    feed(s, 0.9, 4)
    assert s.decide(6, limit=6) is None  # at the limit


def test_each_decision_starts_a_new_window():
    s = sizer()
    feed(s, 0.5, 4)
    assert s.decide(1, limit=8).size == 2
    assert s.decide(2, limit=8) is None  # the old steps measured the old pool
    feed(s, 0.0, 4)
    assert s.decide(2, limit=8).size == 1


def test_shrinks_when_idle_but_not_back_to_a_size_that_was_too_small():
    s = sizer()
    feed(s, 0.0, 4)
    assert s.decide(3, limit=8).size == 2
    feed(s, 0.2, 4)
    assert s.decide(2, limit=8).size == 3  # the shrink was one too many
    feed(s, 0.0, 40)
    assert s.decide(3, limit=8) is None  # 3 is the floor now
    feed(s, 0.02, 4)  # under the target but not idle: keep
    assert s.decide(3, limit=8) is None


def test_the_cluster_limit_shrinks_at_once_but_never_below_the_minimum():
    s = sizer(minimum=2)
    decision = s.decide(6, limit=3)
    assert decision.size == 3 and "CPUs back" in decision.reason
    assert s.decide(3, limit=0).size == 2
    assert s.decide(2, limit=0) is None


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        DecodePoolSizer(minimum=3, maximum=2, target=0.05, window=4)
    with pytest.raises(ValueError):
        DecodePoolSizer(minimum=1, maximum=2, target=0.0, window=4)
