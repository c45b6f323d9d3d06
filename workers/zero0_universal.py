"""DeepSpeed's universal checkpoint layout for a ZeRO-0 engine of fp32 weights, which DeepSpeed steps
with the torch optimizer unwrapped and has no converter for (``ds_to_universal`` reads ZeRO shards).

A one-rank job trains at ZeRO-0 (nothing to partition; see ``workers.engine.engine_zero_stage``), a
larger one at the stage its config names, so a job that grows from one rank or shrinks to one crosses
the two layouts. Both cross through the universal one:

- ``write``: a ZeRO-0 checkpoint into the universal layout, which a ZeRO-1/2 engine at any world size
  restores with DeepSpeed's own loader. (ZeRO-3 reads its own variant of the layout; a job never crosses
  between ZeRO-0 and ZeRO-3, and ``workers.checkpoint.loads_as_saved`` refuses another job's checkpoint
  that would.) It runs in a child process (``python -m workers.zero0_universal
  IN OUT``), as ``ds_to_universal`` does: it holds the whole state in memory at once.
- ``restore_optimizer``: a universal checkpoint's master weights and Adam state into a ZeRO-0 engine's
  optimizer, after DeepSpeed has restored the rest (module, schedule, step count, client state).

The layout, as ``ds_to_universal`` writes it: ``zero/<parameter name>/{fp32,exp_avg,exp_avg_sq}.pt``
(each ``{"param": tensor}``) and ``step.pt``; ``zero/optimizer_state.pt`` with the optimizer's groups and
DeepSpeed's version; the model-states file beside ``zero/``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

MODEL_STATES = "mp_rank_00_model_states.pt"
# The client-state key under which a ZeRO-0 checkpoint names its optimizer's parameters, group by group
# (the torch optimizer's state dict numbers them; the universal layout is keyed by name).
PARAM_NAMES = "zero0_param_names"
MOMENTS = ("exp_avg", "exp_avg_sq")


def param_names(optimizer: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str]) -> list[list[str]]:
    """The names of ``optimizer``'s parameters, group by group (``names``: parameter → its module name)."""
    return [[names[param] for param in group["params"]] for group in optimizer.param_groups]


def write(folder: Path, out: Path) -> None:
    """The universal form of the ZeRO-0 checkpoint ``folder`` into ``out`` (which the caller commits)."""
    state = torch.load(folder / MODEL_STATES, map_location="cpu", weights_only=False)
    groups = state.get(PARAM_NAMES)
    if groups is None:
        raise ValueError(f"{folder} names no optimizer parameters: it was saved at ZeRO-0 in bf16 weights, or "
                         "before ZeRO-0 checkpoints had a universal form, and loads only into a ZeRO-0 engine of "
                         "the weights it was saved in")
    optimizer, module = state["optimizer"], state["module"]
    numbered = [index for group in optimizer["param_groups"] for index in group["params"]]
    named = [name for group in groups for name in group]
    if len(numbered) != len(named):
        raise ValueError(f"{folder}: the optimizer holds {len(numbered)} parameters, the names {len(named)}")
    name_of = dict(zip(numbered, named))
    for group, group_step in zip(optimizer["param_groups"], _group_steps(optimizer)):
        for index in group["params"]:
            name = name_of[index]
            # At one rank a parameter that got no gradient is not stepped (the engine skips the reduction
            # that would give it a zero one), so it may have no state, or fewer steps than its group;
            # ZeRO steps a flat group as one, with zero moments where there was nothing to step.
            adam = optimizer["state"].get(index) or {key: torch.zeros_like(module[name], dtype=torch.float32)
                                                      for key in MOMENTS}
            tensors = {"fp32": module[name].float(), **{key: adam[key] for key in MOMENTS}}
            (out / "zero" / name).mkdir(parents=True)
            for key, tensor in tensors.items():
                torch.save({"param": tensor}, out / "zero" / name / f"{key}.pt")
            torch.save(group_step, out / "zero" / name / "step.pt")
    torch.save({"param_groups": optimizer["param_groups"], "ds_version": state["ds_version"]},
               out / "zero" / "optimizer_state.pt")
    # The optimizer's state now lives under zero/; the rest (module, schedule, steps, client state) is what
    # DeepSpeed reads beside it.
    torch.save({**state, "optimizer": None}, out / MODEL_STATES)


def _group_steps(optimizer: dict[str, Any]) -> list[torch.Tensor]:
    """Each group's step count: the most steps any of its parameters took."""
    steps = []
    for group in optimizer["param_groups"]:
        counts = [optimizer["state"][index]["step"] for index in group["params"] if index in optimizer["state"]]
        steps.append(max(counts, key=float) if counts else torch.tensor(0.0))
    return steps


@torch.no_grad()
def restore_optimizer(optimizer: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str], folder: Path) -> None:
    """Set ``optimizer``'s parameters to the universal checkpoint ``folder``'s fp32 master weights, and its
    state and group settings to the checkpoint's (``names``: parameter → its module name)."""
    zero = folder / "zero"
    saved_groups = torch.load(zero / "optimizer_state.pt", weights_only=False)["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(f"{folder} holds {len(saved_groups)} parameter groups, "
                         f"this optimizer {len(optimizer.param_groups)}")
    for group, saved in zip(optimizer.param_groups, saved_groups):
        for param in group["params"]:
            tensors = _load_parameter(zero / names[param], param)
            param.copy_(tensors.pop("fp32"))
            optimizer.state[param] = tensors
        group.update({key: value for key, value in saved.items() if key != "params"})


def _load_parameter(folder: Path, param: torch.nn.Parameter) -> dict[str, Any]:
    if not folder.is_dir():
        raise ValueError(f"the universal checkpoint has no state for {folder.name}")
    tensors = {key: torch.load(folder / f"{key}.pt", map_location=param.device, weights_only=False)["param"]
               for key in ("fp32", *MOMENTS)}
    for key, tensor in tensors.items():
        if tensor.numel() != param.numel():
            raise ValueError(f"{folder.name}.{key}: {tensor.numel()} elements saved, {param.numel()} in the model")
        tensors[key] = tensor.view_as(param).to(param.dtype)
    # Fused AdamW reads the step count as a float32 tensor beside its parameter.
    step = torch.load(folder / "step.pt", map_location=param.device, weights_only=False)
    return {**tensors, "step": torch.as_tensor(step, dtype=torch.float32, device=param.device)}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m workers.zero0_universal ZERO0_CHECKPOINT OUT")
    write(Path(sys.argv[1]), Path(sys.argv[2]))
