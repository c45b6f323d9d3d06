"""The pieces of supervised classification: per-sample mixing, soft targets, layer-wise decay,
the moving average of the weights, merged label spaces, and initial weights from a pretraining."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from internvideo.data.formats import MergedSource, VideoSource
from internvideo.data.lists import VideoRecord, write_video_list
from internvideo.data.mixing import Mix, MixSpec, apply_mix, draw_mix, soft_target
from internvideo.models.videomae import VideoMAEPretrain, videomae_config
from internvideo.optim import WeightAverage, param_groups
from internvideo.tasks.finetune import Finetune
from internvideo.tasks.post_pretrain import PostPretrain

MODEL = {"size": "tiny", "img_size": 32, "num_frames": 4, "num_classes": 5,
         "overrides": {"embed_dim": 48, "depth": 2, "num_heads": 3, "patch_size": 8}}


def config(**sections) -> dict:
    return {"model": MODEL, "data": {"train_list": "unused.txt"},
            "train": {"steps": 1, "global_batch": 4, "micro_batch": 2}, **sections}


def test_a_samples_mix_is_its_own_draw_and_never_itself():
    spec = MixSpec()
    draws = [draw_mix(spec, np.random.default_rng([0, 1, s]), 10, s) for s in range(10)]
    again = [draw_mix(spec, np.random.default_rng([0, 1, s]), 10, s) for s in reversed(range(10))][::-1]
    assert draws == again
    assert all(d.partner != s and 0 <= d.partner < 10 and 0 <= d.lam <= 1 for s, d in enumerate(draws))
    assert {d.box is None for d in draws} == {True, False}  # both Mixup and CutMix happen
    assert draw_mix(MixSpec(prob=0.0), np.random.default_rng(0), 10, 3) is None
    assert draw_mix(MixSpec(mixup_alpha=0, cutmix_alpha=0), np.random.default_rng(0), 10, 3) is None


def test_cutmix_lambda_is_the_exact_share_left_and_mixup_blends():
    video, other = np.zeros((2, 10, 10, 3), np.uint8), np.full((2, 10, 10, 3), 200, np.uint8)
    mixed, lam = apply_mix(video, other, Mix(1, 0.7, (0.8, -0.1, 0.4, 0.4)))  # clipped: rows 8-10, cols 0-3
    assert lam == pytest.approx(1 - 2 * 3 / 100) and (mixed == 200).mean() == pytest.approx(1 - lam)
    assert (mixed[0] == mixed[1]).all()  # the same box through every frame
    blended, lam = apply_mix(video, other, Mix(1, 0.25, None))
    assert lam == 0.25 and (blended == 150).all()


def test_soft_targets_sum_to_one_and_weigh_both_labels():
    np.testing.assert_allclose(soft_target(2, 4, 0.1), [0.025, 0.025, 0.925, 0.025])
    np.testing.assert_allclose(soft_target(0, 4, 0.0, other=3, lam=0.75), [0.75, 0, 0, 0.25])
    assert soft_target(1, 4, 0.2, other=2, lam=0.4).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="outside"):
        soft_target(4, 4, 0.1)


def test_layer_wise_decay_scales_each_layer_and_skips_frozen_parameters():
    task = Finetune(Finetune.config_type.model_validate(config(regularization={"layer_decay": 0.5,
                                                                               "ema_decay": None})))
    model = task.build_model()
    model.encoder.blocks[1].requires_grad_(False)
    groups = task.param_groups(model)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale_of[id(model.encoder.patch_embed.proj.weight)] == 0.5 ** 3  # layer 0 of 4
    assert scale_of[id(model.encoder.blocks[0].attn.qkv.weight)] == 0.5 ** 2
    assert scale_of[id(model.head.weight)] == scale_of[id(model.fc_norm.weight)] == 1.0
    assert not any(id(p) in scale_of for p in model.encoder.blocks[1].parameters())
    assert {g["weight_decay"] for g in groups if any(p is model.head.bias for p in g["params"])} == {0.0}
    plain = param_groups(model, 0.05)
    assert [g["weight_decay"] for g in plain] == [0.05, 0.0] and {g["lr_scale"] for g in plain} == {1.0}


def test_the_weight_average_moves_towards_the_weights_and_round_trips():
    model = torch.nn.Linear(2, 1)
    average = WeightAverage(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(model)
    torch.testing.assert_close(average.weights["weight"], start + 0.1)
    restored = WeightAverage(model, decay=0.9)
    restored.load_state_dict(average.state_dict())
    torch.testing.assert_close(restored.weights["weight"], start + 0.1)
    with pytest.raises(ValueError, match="other parameters"):
        restored.load_state_dict({"bias": torch.zeros(1)})


def test_a_merged_label_space_relabels_each_dataset_by_class_name(tmp_path):
    write_video_list(tmp_path / "a.txt", [VideoRecord("x.mp4", 0), VideoRecord("y.mp4", 1)])
    write_video_list(tmp_path / "b.txt", [VideoRecord("z.mp4", 0), VideoRecord("w.mp4", 1)])
    (tmp_path / "a.names").write_text("Playing guitar\nswimming\n")
    (tmp_path / "b.names").write_text("diving\nplaying_guitar\n")
    merged = MergedSource(((VideoSource("list", str(tmp_path / "a.txt")), str(tmp_path / "a.names")),
                           (VideoSource("list", str(tmp_path / "b.txt")), str(tmp_path / "b.names"))))
    assert merged.label_space().classes == ("playing guitar", "swimming", "diving")
    assert [r.label for r in merged.read()] == [0, 1, 2, 0]
    (tmp_path / "b.names").write_text("diving\n")
    with pytest.raises(ValueError, match="labels outside the 1 classes"):
        merged.read()


def test_initial_weights_from_a_pretraining_checkpoint_folder(tmp_path):
    pretrain = VideoMAEPretrain(videomae_config("tiny", img_size=32, num_frames=4,
                                                encoder_overrides=MODEL["overrides"]))
    folder = tmp_path / "step-00000002"
    folder.mkdir()
    torch.save({"module": pretrain.state_dict()}, folder / "mp_rank_00_model_states.pt")  # DeepSpeed's layout
    task = PostPretrain(PostPretrain.config_type.model_validate(config(model={**MODEL, "init": str(folder)})))
    model = task.build_model()
    assert torch.equal(model.encoder.blocks[1].attn.qkv.weight, pretrain.encoder.blocks[1].attn.qkv.weight)
    assert task.state_dict() == {}  # post-pretraining keeps no moving average
    with pytest.raises(ValueError, match="does not fit"):
        task.load_state_dict({"weight_average": {}})
