"""Model interaction starts as the base classifier, trains only its own parts and the readouts, and
works either way round (the multimodal classifier consulting VideoMAE's tokens, or the reverse)."""
from __future__ import annotations

import pytest
import torch
import yaml
from pydantic import ValidationError

from coordinator.client import read_config
from coordinator.submission import apply_overrides
from internvideo.models.clip import CLIPVideoClassifier, clip_visual_config
from internvideo.models.interaction import InteractionClassifier
from internvideo.models.vit import VideoClassifier, classifier_config
from internvideo.tasks import get_task_type

CLASSES = 6


def videomae() -> VideoClassifier:
    return VideoClassifier(classifier_config("tiny", num_classes=CLASSES, depth=2, img_size=32, patch_size=8,
                                             num_frames=4))


def multimodal() -> CLIPVideoClassifier:
    config = clip_visual_config("ViT-B/16", width=48, layers=2, heads=2, patch_size=8, image_size=32, num_frames=4,
                                global_layers=1, output_dim=16, local_mhra=True)
    return CLIPVideoClassifier(config, CLASSES)


def build(base_is_multimodal: bool = False) -> tuple[torch.nn.Module, InteractionClassifier]:
    torch.manual_seed(0)
    base, other = (multimodal(), videomae()) if base_is_multimodal else (videomae(), multimodal())
    return base, InteractionClassifier(base, other, heads=3 if not base_is_multimodal else 2, depth=2)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def moved(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    """The parameters of ``model`` that are not bit-identical to ``before``."""
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}


@pytest.mark.parametrize("base_is_multimodal", [False, True])
def test_at_initialisation_the_interaction_returns_exactly_the_base_logits(base_is_multimodal):
    base, combined = build(base_is_multimodal)
    video = torch.randn(3, 3, 4, 32, 32)
    combined.eval()
    with torch.no_grad():
        assert torch.equal(combined(video), base(video))


@pytest.mark.parametrize("base_is_multimodal", [False, True])
def test_the_first_step_opens_the_gates_the_second_trains_what_they_gate_and_the_encoders_never_move(
        base_is_multimodal):
    base, combined = build(base_is_multimodal)
    combined.train()
    names = {name for name, _ in combined.named_parameters()}
    readouts = {n for n in names if n.startswith(("base.fc_norm.", "base.head.", "other.fc_norm.", "other.head."))}
    interaction = {n for n in names if n.startswith("interaction.")}
    gates = {n for n in interaction if n.endswith(("attn_gate", "mlp_gate"))} | {"other_gate"}
    trainable = {name for name, p in combined.named_parameters() if p.requires_grad}
    assert trainable == interaction | readouts | {"other_gate"} and len(gates) == 5  # 2 blocks × 2, the logits' gate
    encoders = [p for name, p in combined.named_parameters() if name not in trainable]
    assert encoders and not any(p.requires_grad for p in encoders)

    # Plain SGD (no weight decay, no momentum): a parameter moves exactly when its gradient is nonzero.
    optimizer = torch.optim.SGD([p for p in combined.parameters() if p.requires_grad], lr=0.1)
    video, labels = torch.randn(4, 3, 4, 32, 32), torch.tensor([0, 1, 2, 3])
    start = snapshot(combined)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(combined(video), labels).backward()
        optimizer.step()

    step()
    # tanh(0) = 0 scales every gated branch: the first gradient reaches the gates and the base's
    # readout, and is exactly zero for what is behind the gates (the blocks, the other's readout).
    base_readout = {n for n in readouts if n.startswith("base.")}
    assert moved(start, combined) == gates | base_readout
    step()
    # Gates open: everything behind them has a gradient too (some too small yet to move an fp32 weight of 1).
    assert {name for name, p in combined.named_parameters() if p.grad is not None and p.grad.any()} == trainable
    assert all(p.grad is None for p in encoders)
    combined.eval()
    with torch.no_grad():
        assert not torch.allclose(combined(video), base(video))


def test_frozen_encoders_stay_in_eval_mode_while_the_readouts_train():
    _, combined = build()
    combined.base.head_dropout.p = 0.5
    combined.train()
    assert not combined.base.encoder.training and not combined.other.visual.training
    assert combined.base.head_dropout.training and combined.other.head.training


def test_each_model_sees_its_own_view_of_the_clip():
    torch.manual_seed(0)
    base, other = videomae(), multimodal()
    seen = []
    views = (lambda v: v[:, :, :4], lambda v: seen.append(v[:, :, ::2]) or v[:, :, ::2])
    combined = InteractionClassifier(base, other, heads=3, views=views).eval()
    video = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(combined(video), base(video[:, :, :4]))
    assert torch.equal(seen[0], video[:, :, ::2])


def test_an_interaction_whose_heads_do_not_divide_the_base_width_is_refused_at_submit():
    config = apply_overrides(yaml.safe_load(read_config("tiny-cpu-finetune")), [
        "data.train_list=unused.txt", "model.encoder=clip", "model.size=ViT-B/16",
        "model.overrides={width: 64, layers: 2, heads: 2, patch_size: 16, global_layers: 1, output_dim: 32}",
        "model.init=a.pt", "model.other.encoder=videomae", "model.other.size=tiny", "model.other.num_frames=8",
        "model.other.overrides={embed_dim: 96, depth: 4, num_heads: 3}", "model.other.init=b.pt", "model.heads=3"])
    config_type = get_task_type("interaction").config_type
    with pytest.raises(ValidationError, match=r"model.heads \(3\) must divide the base's token width \(64\)"):
        config_type.model_validate(config)
    config["model"]["heads"] = 4
    assert config_type.model_validate(config).model.heads == 4
