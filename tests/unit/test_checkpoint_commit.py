"""Which checkpoints an engine loads as saved, and which through the universal layout."""
from pathlib import Path

import pytest
import torch

from workers.checkpoint import UNIVERSAL, commit, loads_as_saved, to_universal
from workers.engine import resolve_precision, trained_weights


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


def test_a_zero_0_checkpoint_that_names_no_parameters_is_refused_a_universal_form_saying_why(tmp_path: Path) -> None:
    """One saved in bf16 weights (DeepSpeed's wrapper, not ``ClippedAdamW``) or before ZeRO-0 checkpoints
    named their optimizer's parameters: its Adam state cannot be told apart by name."""
    folder = committed(tmp_path / "step-1", world_size=1, weights="torch.float32")
    weight = torch.zeros(3)
    torch.save({"module": {"weight": weight}, "ds_version": "0.19.8",
                "optimizer": {"state": {0: {"step": torch.tensor(1.0), "exp_avg": weight, "exp_avg_sq": weight}},
                              "param_groups": [{"params": [0], "lr": 1e-3}]}}, folder / "mp_rank_00_model_states.pt")
    with pytest.raises(RuntimeError, match="names no optimizer parameters: it was saved at ZeRO-0 in bf16 weights"):
        to_universal(folder)
    assert not (folder / UNIVERSAL).exists() and not (folder / f".{UNIVERSAL}.tmp").exists()
