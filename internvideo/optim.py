"""Optimizer parameter groups, the learning-rate schedule and a moving average of the weights
(engine-agnostic)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch


def param_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float = 1.0,
                 layer_of: Callable[[str], tuple[int, int]] | None = None) -> list[dict]:
    """The trainable parameters in groups. Decay matrices only: biases, norms and the model's
    ``no_weight_decay()`` names (learned tokens) are left alone, as in VideoMAE/timm.

    Layer-wise learning-rate decay (BEiT/VideoMAE fine-tuning): ``layer_of(name)`` gives a
    parameter's layer and the number of layers ``L`` (0 = the embeddings, L - 1 = the head); its
    group's ``lr_scale`` is ``layer_decay ** (L - 1 - layer)``, which the engine multiplies into the
    learning rate. Frozen parameters (``requires_grad=False``) are in no group."""
    exempt = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer, layers = layer_of(name) if layer_of else (0, 1)
        decays = not (param.ndim <= 1 or name in exempt)
        group = groups.setdefault((layer, decays), {
            "params": [], "weight_decay": weight_decay if decays else 0.0,
            "lr_scale": layer_decay ** (layers - 1 - layer)})
        group["params"].append(param)
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], not k[1]))]  # decaying first


class WeightAverage:
    """An exponential moving average of a model's trainable weights (timm's ModelEmaV2), kept in
    float32 beside the model: ``update`` after each optimizer step, ``state_dict`` into checkpoints."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.weights = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            if name in self.weights:
                self.weights[name].lerp_(param.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: w.clone() for n, w in self.weights.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.weights.keys():
            raise ValueError(f"weight average of other parameters: {sorted(state.keys() ^ self.weights.keys())[:5]}")
        self.weights = {n: t.float().clone() for n, t in state.items()}


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, base_lr: float, min_lr: float) -> float:
    """Linear warm-up to ``base_lr``, then cosine decay to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
