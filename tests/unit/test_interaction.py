"""Model interaction starts as the identity, trains only its own parts, and can change the output."""
from __future__ import annotations

import torch

from internvideo.models.interaction import InteractionClassifier
from internvideo.models.vit import VideoClassifier, VideoViTEncoder, classifier_config, vit_config


def build() -> tuple[VideoClassifier, InteractionClassifier]:
    torch.manual_seed(0)
    base = VideoClassifier(classifier_config("tiny", num_classes=6, depth=2, img_size=32, patch_size=8,
                                             num_frames=4))
    other = VideoViTEncoder(vit_config("small", depth=1, img_size=32, patch_size=8, num_frames=4))
    return base, InteractionClassifier(base, other, other_dim=384, heads=3, depth=2)


def test_at_initialisation_the_interaction_returns_exactly_the_base_logits():
    base, combined = build()
    video = torch.randn(3, 3, 4, 32, 32)
    combined.eval()
    with torch.no_grad():
        assert torch.equal(combined(video), base(video))


def test_only_the_interaction_and_head_train_and_the_gates_open():
    base, combined = build()
    combined.train()
    video, labels = torch.randn(4, 3, 4, 32, 32), torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.AdamW([p for p in combined.parameters() if p.requires_grad], lr=1e-2)
    encoder_before = [p.clone() for p in base.encoder.parameters()]
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(combined(video), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, base.encoder.parameters()))
    assert all(p.grad is None for p in combined.other.parameters())
    gates = [b.attn_gate.item() for b in combined.interaction.blocks]
    assert all(g != 0 for g in gates)
    combined.eval()
    with torch.no_grad():
        assert not torch.allclose(combined(video), base(video))
