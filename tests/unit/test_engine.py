"""The engine's settings, and the trainer's seeding of the model's random draws."""
import pytest
import torch

from workers.engine import resolve_precision, zero_config
from workers.trainer import _seed_generators


@pytest.mark.parametrize(("stage", "world_size", "on_gpu", "runs"), [
    (2, 1, False, 1), (2, 2, False, 2), (2, 8, False, 2), (2, 1, True, 2), (1, 1, False, 1), (0, 1, False, 0),
    (0, 4, False, 0), (3, 1, False, 3)])
def test_zero_2_runs_as_zero_1_only_in_a_world_of_one_off_the_gpu(stage, world_size, on_gpu, runs):
    assert zero_config(stage, world_size=world_size, on_gpu=on_gpu)["stage"] == runs


def test_gradients_go_to_a_contiguous_bucket_only_on_a_gpu():
    assert zero_config(2, world_size=2, on_gpu=True)["contiguous_gradients"] is True
    assert zero_config(2, world_size=2, on_gpu=False)["contiguous_gradients"] is False


def test_seeding_the_cpu_generator_draws_what_torch_manual_seed_does():
    dropout = torch.nn.Dropout(0.5)
    torch.manual_seed(1234)
    expected = (torch.rand(8), dropout(torch.ones(64)), torch.randperm(32))
    torch.manual_seed(99)  # something else first, so that a no-op would fail
    torch.rand(3)
    _seed_generators(torch.device("cpu"), 1234)
    drawn = (torch.rand(8), dropout(torch.ones(64)), torch.randperm(32))
    for a, b in zip(expected, drawn):
        assert torch.equal(a, b)


def test_precision_auto_is_fp32_off_the_gpu_and_autocast_keeps_fp32_weights():
    assert resolve_precision("auto", on_gpu=False).weights == torch.float32
    autocast = resolve_precision("bf16-autocast", on_gpu=False)
    assert (autocast.weights, autocast.compute, autocast.autocast) == (torch.float32, torch.bfloat16, True)
    bf16 = resolve_precision("bf16", on_gpu=False)
    assert (bf16.weights, bf16.autocast) == (torch.bfloat16, False)
