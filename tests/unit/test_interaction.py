"""Model interaction starts as the identity, trains only its own parts, and can change the output."""
from __future__ import annotations

import torch

from internvideo.models.interaction import InteractionClassifier
from internvideo.models.vit import VideoClassifier, VideoViTEncoder, classifier_config, vit_config


class SummaryFirst(torch.nn.Module):
    """An encoder's tokens with their mean in front: the summary token the interaction's head reads."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(video)
        return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)


def build() -> tuple[VideoClassifier, InteractionClassifier]:
    torch.manual_seed(0)
    base = VideoClassifier(classifier_config("tiny", num_classes=6, depth=2, img_size=32, patch_size=8,
                                             num_frames=4))
    other = SummaryFirst(VideoViTEncoder(vit_config("small", depth=1, img_size=32, patch_size=8, num_frames=4)))
    return base, InteractionClassifier(base, other, other_dim=384, heads=3, depth=2)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def moved(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    """The parameters of ``model`` that are not bit-identical to ``before``."""
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}


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


def test_the_first_step_opens_the_gates_the_second_trains_what_they_gate_and_the_encoders_never_move():
    base, combined = build()
    combined.train()
    encoders = (base.encoder, combined.other)
    assert not any(p.requires_grad for encoder in encoders for p in encoder.parameters())
    names = {name for name, _ in combined.named_parameters()}
    head = {n for n in names if n.startswith(("base.fc_norm.", "base.head.", "other_head."))}
    interaction = {n for n in names if n.startswith("interaction.")}
    gates = {n for n in interaction if n.endswith(("attn_gate", "mlp_gate"))}
    trainable = {name for name, p in combined.named_parameters() if p.requires_grad}
    assert trainable == interaction | head and len(gates) == 4  # 2 blocks × (attention, feed-forward)

    # Plain SGD (no weight decay, no momentum): a parameter moves exactly when its gradient is nonzero.
    optimizer = torch.optim.SGD([p for p in combined.parameters() if p.requires_grad], lr=0.1)
    video, labels = torch.randn(4, 3, 4, 32, 32), torch.tensor([0, 1, 2, 3])
    start = snapshot(combined)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(combined(video), labels).backward()
        optimizer.step()

    step()
    # tanh(0) = 0 scales every gated branch: the first gradient reaches the gates and the heads, and
    # is exactly zero for the cross-attention, feed-forward and projections behind the gates.
    assert moved(start, combined) == gates | head
    step()
    assert moved(start, combined) == trainable  # gates open: everything behind them trains too
    assert all(p.grad is None for encoder in encoders for p in encoder.parameters())
