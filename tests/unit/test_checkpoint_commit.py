"""Which checkpoints an engine loads as saved, and which through the universal layout."""
from pathlib import Path

import pytest
import torch

from workers.checkpoint import commit, loads_as_saved
from workers.engine import resolve_precision, trained_weights


def committed(folder: Path, *files: str, **meta) -> Path:
    folder.mkdir()
    for name in files:
        (folder / name).touch()
    commit(folder, meta)
    return folder


def test_a_checkpoint_loads_as_saved_only_at_its_world_size_and_weights(tmp_path: Path) -> None:
    folder = committed(tmp_path / "step-1", world_size=2, weights="torch.float32")
    assert loads_as_saved(folder, world_size=2, weights="torch.float32")
    assert not loads_as_saved(folder, world_size=1, weights="torch.float32")
    assert not loads_as_saved(folder, world_size=2, weights="torch.bfloat16")


def test_a_checkpoint_committed_before_its_weights_were_recorded_is_told_by_its_file_names(tmp_path: Path) -> None:
    bf16 = committed(tmp_path / "bf16", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", world_size=1)
    fp32 = committed(tmp_path / "fp32", "zero_pp_rank_0_mp_rank_00_optim_states.pt", world_size=1)
    assert loads_as_saved(bf16, world_size=1, weights="torch.bfloat16")
    assert not loads_as_saved(bf16, world_size=1, weights="torch.float32")
    assert loads_as_saved(fp32, world_size=1, weights="torch.float32")


def test_a_half_written_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "step-1").mkdir()
    with pytest.raises(ValueError, match="not a committed checkpoint"):
        loads_as_saved(tmp_path / "step-1", world_size=1, weights="torch.float32")


@pytest.mark.parametrize("setting", ["auto", "fp32", "bf16", "bf16-autocast"])
@pytest.mark.parametrize("bf16_gpu", [False, True])
def test_the_runner_knows_the_weights_a_setting_trains_on_any_device(monkeypatch, setting, bf16_gpu) -> None:
    """The runner decides how to load a checkpoint before any worker has seen its device."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: True)
    assert resolve_precision(setting, on_gpu=bf16_gpu).weights == trained_weights(setting)


def test_auto_trains_under_bf16_autocast_on_a_bf16_gpu_and_infers_in_bf16_weights(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: True)
    training = resolve_precision("auto", on_gpu=True)
    assert (training.weights, training.compute, training.autocast) == (torch.float32, torch.bfloat16, True)
    assert resolve_precision("auto", on_gpu=True, inference=True).weights == torch.bfloat16
    assert resolve_precision("auto", on_gpu=False, inference=True).weights == torch.float32
