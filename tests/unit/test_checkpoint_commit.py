"""Which checkpoints an engine loads as saved, and which through the universal layout."""
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from workers.checkpoint import UNIVERSAL, commit, loads_as_saved, read_commit, to_universal
from workers.engine import resolve_precision, trained_weights
from workers.zero0_universal import PARAM_NAMES


def committed(folder: Path, *files: str, **meta) -> Path:
    folder.mkdir()
    for name in files:
        (folder / name).touch()
    commit(folder, meta)
    return folder


def test_a_zero_checkpoint_loads_as_saved_only_at_its_world_size_stage_and_weights(tmp_path: Path) -> None:
    folder = committed(tmp_path / "step-1", "zero_pp_rank_0_mp_rank_00_optim_states.pt", world_size=2,
                       weights="torch.float32")
    assert loads_as_saved(folder, world_size=2, weights="torch.float32", zero_stage=2)
    assert not loads_as_saved(folder, world_size=1, weights="torch.float32", zero_stage=2)
    assert not loads_as_saved(folder, world_size=2, weights="torch.bfloat16", zero_stage=2)
    assert not loads_as_saved(folder, world_size=2, weights="torch.float32", zero_stage=0)


def test_a_checkpoint_committed_before_its_weights_were_recorded_is_told_by_its_file_names(tmp_path: Path) -> None:
    bf16 = committed(tmp_path / "bf16", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", world_size=1)
    fp32 = committed(tmp_path / "fp32", "zero_pp_rank_0_mp_rank_00_optim_states.pt", world_size=1)
    assert loads_as_saved(bf16, world_size=1, weights="torch.bfloat16", zero_stage=2)
    assert not loads_as_saved(bf16, world_size=1, weights="torch.float32", zero_stage=2)
    assert loads_as_saved(fp32, world_size=1, weights="torch.float32", zero_stage=1)
    # ZeRO-0 writes no ZeRO files: every rank of a ZeRO-0 engine reads the one file, at any world size.
    zero_0 = committed(tmp_path / "zero-0", "mp_rank_00_model_states.pt", world_size=1)
    assert loads_as_saved(zero_0, world_size=1, weights="torch.float32", zero_stage=0)
    assert loads_as_saved(zero_0, world_size=2, weights="torch.float32", zero_stage=0)


def test_a_zero_0_checkpoint_loads_at_any_world_size_in_its_own_weights_and_stage_only(tmp_path: Path) -> None:
    folder = committed(tmp_path / "zero-0", "mp_rank_00_model_states.pt", world_size=2, weights="torch.bfloat16")
    assert loads_as_saved(folder, world_size=3, weights="torch.bfloat16", zero_stage=0)
    assert not loads_as_saved(folder, world_size=2, weights="torch.float32", zero_stage=0)
    assert not loads_as_saved(folder, world_size=2, weights="torch.bfloat16", zero_stage=2)


def test_where_the_device_decides_the_weights_the_world_size_alone_does(tmp_path: Path) -> None:
    folder = committed(tmp_path / "step-1", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", world_size=1,
                       weights="torch.bfloat16")
    assert loads_as_saved(folder, world_size=1, weights=None, zero_stage=3)
    assert not loads_as_saved(folder, world_size=2, weights=None, zero_stage=3)


def test_a_universal_checkpoint_loads_at_any_world_size_and_precision(tmp_path: Path) -> None:
    folder = committed(tmp_path / "universal", world_size=2, weights="torch.bfloat16", universal=True)
    assert loads_as_saved(folder, world_size=3, weights="torch.float32", zero_stage=2)
    assert loads_as_saved(folder, world_size=1, weights="torch.float32", zero_stage=0)


def test_a_half_written_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "step-1").mkdir()
    with pytest.raises(ValueError, match="not a committed checkpoint"):
        loads_as_saved(tmp_path / "step-1", world_size=1, weights="torch.float32", zero_stage=0)


@pytest.mark.parametrize("setting", ["auto", "fp32", "bf16", "bf16-autocast"])
@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
@pytest.mark.parametrize("bf16_gpu", [False, True])
def test_the_runner_knows_the_weights_a_setting_trains_wherever_the_device_does_not_decide(
        monkeypatch, setting, zero_stage, bf16_gpu) -> None:
    """The runner decides how to load a checkpoint before any worker has seen its device: where it
    names the weights' dtype, every device trains in it."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: True)
    expected = trained_weights(setting, zero_stage)
    if expected is not None:
        assert resolve_precision(setting, on_gpu=bf16_gpu, zero_stage=zero_stage).weights == expected
    else:
        assert (setting, zero_stage) == ("auto", 3)


def test_auto_trains_under_bf16_autocast_at_zero_0_1_and_2_on_a_bf16_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: True)
    for stage in (0, 1, 2):
        training = resolve_precision("auto", on_gpu=True, zero_stage=stage)
        assert (training.weights, training.compute, training.autocast) == (torch.float32, torch.bfloat16, True)
    for stage in (3, None):  # None: inference
        assert resolve_precision("auto", on_gpu=True, zero_stage=stage).weights == torch.bfloat16
    assert resolve_precision("auto", on_gpu=False, zero_stage=2).weights == torch.float32


def zero_0_checkpoint(folder: Path, *, names: bool = True) -> Path:
    """A committed ZeRO-0 checkpoint as ``ClippedAdamW``'s engine writes one, of two parameters in one
    group: ``a`` stepped 3 times, ``b`` never (it got no gradient)."""
    committed(folder, world_size=1, weights="torch.float32")
    a, b = torch.arange(6.0).view(2, 3), torch.ones(4)
    state = {"module": {"a": a, "b": b}, "ds_version": "0.19.8",
             "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": a / 10, "exp_avg_sq": a / 100}},
                           "param_groups": [{"params": [0, 1], "lr": 1e-3}]}}
    torch.save({**state, **({PARAM_NAMES: [["a", "b"]]} if names else {})}, folder / "mp_rank_00_model_states.pt")
    return folder


def test_a_zero_0_checkpoint_that_names_no_parameters_is_refused_a_universal_form_saying_why(tmp_path: Path) -> None:
    """One saved in bf16 weights (DeepSpeed's wrapper, not ``ClippedAdamW``) or before ZeRO-0 checkpoints
    named their optimizer's parameters: its Adam state cannot be told apart by name."""
    folder = zero_0_checkpoint(tmp_path / "step-1", names=False)
    with pytest.raises(RuntimeError, match="names no optimizer parameters: it was saved at ZeRO-0 in bf16 weights"):
        to_universal(folder)
    assert not (folder / UNIVERSAL).exists() and not (folder / f".{UNIVERSAL}.tmp").exists()


def test_a_parameter_never_stepped_at_zero_0_gets_zero_moments_and_its_groups_step_count(tmp_path: Path) -> None:
    """ZeRO steps a group as one flat tensor (DeepSpeed's loader asserts one step count a group)."""
    universal = to_universal(zero_0_checkpoint(tmp_path / "step-3"))
    load = functools.partial(torch.load, weights_only=False)
    assert torch.equal(load(universal / "zero" / "a" / "exp_avg.pt")["param"], torch.arange(6.0).view(2, 3) / 10)
    assert torch.equal(load(universal / "zero" / "b" / "exp_avg_sq.pt")["param"], torch.zeros(4))
    assert torch.equal(load(universal / "zero" / "b" / "fp32.pt")["param"], torch.ones(4))
    assert [float(load(universal / "zero" / name / "step.pt")) for name in "ab"] == [3.0, 3.0]


def test_runners_converting_one_checkpoint_at_once_take_turns(tmp_path: Path) -> None:
    """Two jobs resuming from one checkpoint: each gets the committed universal form; neither's conversion
    removes the other's."""
    folder = zero_0_checkpoint(tmp_path / "step-3")
    with ThreadPoolExecutor(2) as pool:
        converted = list(pool.map(lambda _: to_universal(folder), range(2)))
    assert converted == [folder / UNIVERSAL] * 2
    assert read_commit(folder / UNIVERSAL)["universal"] and not (folder / f".{UNIVERSAL}.tmp").exists()


def test_a_job_never_crosses_between_zero_0_and_zero_3_and_is_told_so(tmp_path: Path) -> None:
    """DeepSpeed's ZeRO-3 reads its own variant of the universal layout: another job's checkpoint that would
    cross is refused, naming what works."""
    zero_3 = committed(tmp_path / "zero-3", "zero_pp_rank_0_mp_rank_00_model_states.pt",
                       "zero_pp_rank_0_mp_rank_00_optim_states.pt", world_size=1, weights="torch.float32")
    with pytest.raises(ValueError, match="saved at ZeRO-3 and cannot be restored at ZeRO-0: resume it at"):
        loads_as_saved(zero_3, world_size=1, weights="torch.float32", zero_stage=0)
    zero_0 = committed(tmp_path / "zero-0", "mp_rank_00_model_states.pt", world_size=1, weights="torch.float32")
    with pytest.raises(ValueError, match="saved at ZeRO-0 and cannot be restored at ZeRO-3"):
        loads_as_saved(zero_0, world_size=2, weights="torch.float32", zero_stage=3)
