"""Goodput accounting: the ledger charges every held GPU-second to one use; the store sums attempts."""
from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.efficiency import job_efficiency
from coordinator.history import HistoryTotals
from coordinator.store import JobEvent, JobStore
from coordinator.usage import LOST_USES, JobUsage, Usage, UsageLedger
from tests.unit.test_store import spec


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_ledger_keeps_checkpointed_steps_and_loses_the_rest() -> None:
    clock = FakeClock()
    ledger = UsageLedger(clock=clock)
    ledger.hold(2)
    clock.advance(3)
    ledger.charge("startup", joules=30)  # 2 workers x 3 s
    for step in range(3):
        clock.advance(1)
        ledger.step(step, data_wait_seconds=[0.25, 0.25], joules=10)  # half a GPU-second of waiting each
        if step == 1:
            clock.advance(0.5)
            ledger.charge("checkpoint")
            ledger.kept(2)
    clock.advance(2)
    ledger.charge("recovery")  # the call that failed
    ledger.lost()  # step 2 was never checkpointed
    clock.advance(1)
    ledger.release()
    charged, held = ledger.flush()
    assert held == pytest.approx(2 * (3 + 3 + 0.5 + 2 + 1))
    assert charged["startup"] == Usage(6, 30)
    assert charged["kept"] == Usage(pytest.approx(2 * 1.5), pytest.approx(2 * 7.5))
    assert charged["redone"] == Usage(pytest.approx(1.5), pytest.approx(7.5))
    assert charged["data_wait"] == Usage(pytest.approx(1.5), pytest.approx(7.5))
    assert charged["checkpoint"].gpu_seconds == pytest.approx(1)
    assert charged["recovery"].gpu_seconds == pytest.approx(4)
    assert charged["teardown"].gpu_seconds == pytest.approx(2)
    assert sum(u.gpu_seconds for u in charged.values()) == pytest.approx(held)
    assert ledger.flush() == ({}, 0.0)


def test_flush_while_holding_counts_the_time_so_far_once() -> None:
    clock = FakeClock()
    ledger = UsageLedger(clock=clock)
    ledger.hold(4, since=clock.now - 1)  # placed a second ago
    ledger.charge("startup")
    first = ledger.flush()
    clock.advance(2)
    ledger.charge("idle")
    ledger.release()
    second = ledger.flush()
    assert first[1] == pytest.approx(4) and second[1] == pytest.approx(8)
    assert first[0]["startup"].gpu_seconds + second[0]["idle"].gpu_seconds == pytest.approx(12)
    with pytest.raises(ValueError, match="unknown use"):
        ledger.charge("lunch")


def test_store_adds_usage_across_attempts(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job, _ = store.create_job(spec())
    store.add_usage(job.job_id, {"kept": Usage(10, 100), "startup": Usage(2, 5)}, 12)
    store.add_usage(job.job_id, {"kept": Usage(5, 50), "redone": Usage(3, 30)}, 8)
    kind, usage = store.usage([job.job_id])[job.job_id]
    assert kind == job.kind
    assert usage.of("kept") == Usage(15, 150) and usage.of("redone") == Usage(3, 30)
    assert usage.held_gpu_seconds == 20 and usage.goodput == pytest.approx(0.75)
    assert usage.lost_gpu_seconds == pytest.approx(5) and usage.joules == pytest.approx(185)
    assert "redone" in LOST_USES and "kept" not in LOST_USES
    assert store.usage(updated_since=job.updated_at + 3600) == {}


def test_held_time_no_use_accounts_for_is_unaccounted() -> None:
    usage = JobUsage({"kept": Usage(10, 100)}, 15)  # a coordinator died holding 5 s of uncheckpointed steps
    assert usage.unaccounted == pytest.approx(5)
    after = usage.plus({"redone": Usage(5, 0)}, 0)
    assert after.unaccounted == pytest.approx(0) and after.lost_gpu_seconds == 5 and usage.of("redone") == Usage()


def test_efficiency_from_events_and_usage() -> None:
    workers = [{"device_name": "NVIDIA H100 80GB HBM3", "peak_flops": 989e12, "peak": "H100 SXM",
                "energy_sources": ["nvml"]}] * 2
    progress = [{"step": s, "step_seconds": 2.0, "step_samples": 16, "model_flops": 1e15, "world_size": 2,
                 "data_wait_fraction": 0.25} for s in (1, 2, 2)]  # step 2 ran twice
    events = [JobEvent("j", 1, 0.0, "workers", {"workers": workers}),
              *[JobEvent("j", i + 2, 0.0, "progress", p) for i, p in enumerate(progress)],
              JobEvent("j", 9, 0.0, "checkpoint", {"step": 2, "path": "/ckpt/step-2", "world_size": 2})]
    usage = JobUsage({"kept": Usage(8, 4000), "redone": Usage(4, 2000), "startup": Usage(4, 1000)}, 16)
    e = job_efficiency(HistoryTotals.of(events), usage, global_batch=16)
    assert e.goodput == pytest.approx(0.5) and e.gpu_hours == pytest.approx(16 / 3600)
    assert e.mfu == pytest.approx(3e15 / (6.0 * 2 * 989e12)) and e.peak == "H100 SXM"
    assert e.joules == 7000 and e.joules_per_clip == pytest.approx(7000 / 32)  # 2 kept steps of 16 clips
    assert e.flop_per_joule == pytest.approx(3e15 / 7000) and e.watts_per_device == pytest.approx(7000 / 16)
    assert e.energy_sources == ("nvml",) and e.data_wait_fraction == pytest.approx(0.25)
    assert e.lost_gpu_seconds["redone"] == 4 and e.step_seconds_p95 == pytest.approx(2.0)
    metrics = e.as_metrics()
    assert metrics["lost_gpu_seconds_redone"] == 4 and "energy_sources" not in metrics

    unknown = [{**w, "peak_flops": None, "peak": "unknown"} for w in workers]
    events[0] = JobEvent("j", 1, 0.0, "workers", {"workers": unknown})
    e = job_efficiency(HistoryTotals.of(events), usage, global_batch=16)
    assert e.mfu is None and e.peak == "unknown" and "mfu" not in e.as_metrics()
