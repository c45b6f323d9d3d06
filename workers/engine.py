"""The one place DeepSpeed is touched: process-group set-up, engine construction, checkpoints."""
from __future__ import annotations

import datetime
import functools
import importlib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# JIT-built DeepSpeed ops are cached per Python environment (the default, ~/.cache, is shared
# by every environment and each one's different source paths force a rebuild of the others').
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))

import deepspeed  # noqa: E402 — after the cache location is set
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from internvideo.data.order import gradient_accumulation  # noqa: E402
from internvideo.optim import warmup_cosine  # noqa: E402
from internvideo.tasks.common import TrainSection  # noqa: E402
from workers import zero0_universal  # noqa: E402


def init_process_group(*, master_addr: str, master_port: int, rank: int, world_size: int,
                       timeout_s: float) -> str:
    """Join the job's process group (NCCL on GPUs, gloo on CPUs); returns the backend."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    os.environ["LOCAL_RANK"] = "0"  # each worker process sees exactly one device (Ray sets CUDA_VISIBLE_DEVICES)
    if master_addr.startswith("127."):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # a one-machine group stays on loopback
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                               init_method=f"tcp://{master_addr}:{master_port}", rank=rank,
                               world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
    return backend


@dataclass(frozen=True)
class Precision:
    """How an engine computes: ``weights``, the dtype of the module's parameters (and of its inputs);
    ``compute``, the dtype its matmuls run in (the peak its FLOPs are measured against)."""

    weights: torch.dtype
    compute: torch.dtype

    @property
    def autocast(self) -> bool:
        return self.weights != self.compute


PRECISIONS = {"fp32": Precision(torch.float32, torch.float32),
              "bf16": Precision(torch.bfloat16, torch.bfloat16),
              "bf16-autocast": Precision(torch.float32, torch.bfloat16)}


AUTOCAST_STAGES = (0, 1, 2)  # the ZeRO stages at which ``auto`` trains under bf16-autocast on a GPU


def resolve_precision(setting: str, *, on_gpu: bool, zero_stage: int | None = None) -> Precision:
    """``train.precision`` on this device, for an engine at ``zero_stage`` (None: inference, no engine).

    ``auto`` on a GPU that has bf16 is bf16-autocast at ZeRO-0, 1 and 2, and bf16 weights at ZeRO-3 and
    for inference; fp32 elsewhere. On an H100 (``benchmarks/results/gpu_suite_h100.json``), ViT-B's step
    under bf16-autocast took 56 ms at ZeRO-0 and 84 ms at ZeRO-2, with bf16 weights 120 and 125 ms: with
    bf16 weights DeepSpeed checks each gradient for overflow and, at ZeRO-0, reads each one's norm back
    to the host, where under autocast ZeRO-2 checks the global norm and ZeRO-0 clips in ``ClippedAdamW``
    (``benchmarks/engine_host_overhead.py``). ZeRO-3 would gather fp32 weights (twice the bytes), and
    inference keeps no optimizer state for fp32 weights to keep exact."""
    if setting == "auto":
        if not (on_gpu and torch.cuda.is_bf16_supported()):
            return PRECISIONS["fp32"]
        return PRECISIONS["bf16-autocast" if zero_stage in AUTOCAST_STAGES else "bf16"]
    precision = PRECISIONS[setting]
    if on_gpu and precision.compute == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"train.precision={setting} needs bfloat16, which {torch.cuda.get_device_name()} lacks; "
                         "use fp32 or auto")
    return precision


def trained_weights(setting: str, zero_stage: int) -> torch.dtype | None:
    """The dtype ``train.precision`` trains the weights in at ``zero_stage`` where the setting alone
    decides it, before any worker has seen its device; None where the device does (``auto`` at ZeRO-3:
    bf16 on a GPU that has bf16). A checkpoint's layout depends on it."""
    if setting == "auto":
        return torch.float32 if zero_stage in AUTOCAST_STAGES else None
    return PRECISIONS[setting].weights


def engine_zero_stage(stage: int, *, world_size: int, weights: torch.dtype | None) -> int:
    """The ZeRO stage an engine of ``world_size`` ranks training ``weights`` runs at, for ``train.zero_stage``.

    One rank of fp32 weights (fp32 or bf16-autocast) runs ZeRO-1 and 2 as ZeRO-0: there is nothing to
    partition, and DeepSpeed's ZeRO code still works per parameter each step (copies into the flat
    partition, norms, bucket hooks), where at ZeRO-0 ``ClippedAdamW`` steps the parameters as a plain
    torch loop does. An H100's ViT-B step under autocast: 0.80 of plain torch at ZeRO-0 against 0.54 at
    ZeRO-2, 1.6 GiB less memory (``benchmarks/results/gpu_suite_h100.json``); the tiny model on a CPU:
    1.02 against 0.81 (``benchmarks/results/cpu_engine_vs_plain_tiny_zero0_default.json``). A job that
    grows from one rank or shrinks to one crosses the two checkpoint layouts through the universal one
    (``workers.zero0_universal``). ZeRO-3 stays: it is asked for to partition the weights of a model that
    would not fit otherwise, and bf16 weights keep DeepSpeed's own optimizer wrapper at every stage."""
    one_rank_fp32 = world_size == 1 and weights == torch.float32
    return 0 if one_rank_fp32 and stage in (1, 2) else stage


def build_engine(model: torch.nn.Module, groups: list[dict[str, Any]], *, micro_batch: int, accumulation: int,
                 world_size: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int,
                 betas: tuple[float, float], grad_clip: float, zero_stage: int, precision: Precision,
                 load_universal: bool = False, compile_backend: str = "off") -> deepspeed.DeepSpeedEngine:
    """``groups``: the trainable parameters' groups (``internvideo.optim.param_groups``); a group's
    ``lr_scale`` (layer-wise decay) scales the learning rate all along the schedule. ``model`` is in
    ``precision.weights`` when given, or is converted by the engine (bf16).
    ``load_universal``: the engine will be restored from a universal checkpoint (another world size or
    layout, or weights of another dtype).
    ``compile_backend``: ``train.compile``."""
    import_deepspeed_muon_uncompiled()
    groups = [{**group, "lr": lr * group.get("lr_scale", 1.0)} for group in groups]
    # Fused AdamW is one kernel per group on CPUs and GPUs alike; ZeRO-1/2 hand it one flat fp32
    # partition per group, on which the for-loop implementation's sqrt/div were a tenth of a CPU step.
    unwrapped = zero_stage == 0 and precision.weights == torch.float32  # DeepSpeed steps it as it is
    if zero_stage == 0 and load_universal and not unwrapped:
        # DeepSpeed would restore no weights into its bf16 wrapper, then fail on the optimizer.
        raise ValueError("a ZeRO-0 engine of bf16 weights cannot restore a universal checkpoint (one saved at "
                         "another world size or precision): resume it at ZeRO-1 or above")
    optimizer = (ClippedAdamW(groups, max_norm=grad_clip, lr=lr, betas=betas, fused=True) if unwrapped
                 else torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True))
    # LambdaLR multiplies the base lr; the schedule is written in absolute terms, hence the division.
    schedule = functools.partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=total_steps,
                                 base_lr=lr, min_lr=min_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step) / lr)
    config: dict[str, Any] = {
        "train_batch_size": micro_batch * accumulation * world_size,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "zero_optimization": zero_config(zero_stage, world_size=world_size, on_gpu=torch.cuda.is_available()),
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0 if unwrapped else grad_clip,  # ClippedAdamW clips
        "bf16": {"enabled": precision.weights == torch.bfloat16},
        # No module's gradients are tagged for bf16 communication (DeepSpeed's default tags Linear and
        # Conv): under autocast, gradients are reduced in fp32, as a plain torch loop reduces them.
        "torch_autocast": {"enabled": precision.autocast, "dtype": str(precision.compute),
                           "lower_precision_safe_modules": []},
        "steps_per_print": 2**31 - 1,
        # DeepSpeed's throughput timer, on by default, synchronises the device twice a micro-batch (from
        # its third step on), so the host cannot queue kernels ahead of the device; the workers time
        # their steps themselves.
        "timers": {"throughput": {"enabled": False}},
        # A ZeRO-0 engine restores a universal checkpoint's optimizer state itself (``load_checkpoint``).
        "checkpoint": {"load_universal": load_universal and not unwrapped},
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    if zero_stage == 0 and world_size == 1:
        # A reduction over one rank is the identity; DeepSpeed's still flattens the gradients, all-reduces
        # the copy and copies it back: three operations a parameter. (It also gives a parameter left out of
        # the loss a zero gradient, which AdamW would step; with one rank such a parameter is not stepped,
        # as in a plain torch loop. Our models use every trainable parameter.)
        engine.enable_backward_allreduce = False
    if compile_backend != "off":
        import torch._inductor.config as inductor_config  # only when compiling: a second to import

        # Inductor's own random numbers would differ from eager's: with eager's, a compiled job draws the
        # dropout and drop path an eager one does, and pretrain-mm's two GradCache passes draw the same.
        inductor_config.fallback_random = True
        engine.compile(backend=compile_backend)  # the module in place: its state dict keeps its keys
    return engine


def import_deepspeed_muon_uncompiled() -> None:
    """Import DeepSpeed's Muon optimizer with its ``torch.compile`` decorator left off.

    DeepSpeed's ZeRO-1/2, ZeRO-3 and bf16 optimizer wrappers import its Muon module, which decorates
    its Newton–Schulz step with ``torch.compile`` at import; resolving the compiler there imports
    Dynamo's debugging tools and AOTAutograd: 1.2 CPU-s in every trainer process, on a CPU a third of
    an engine's build. Our engines step AdamW, never Muon, and a job that asks for ``train.compile``
    still compiles: Dynamo reads ``TORCHDYNAMO_DISABLE`` only when a function is decorated."""
    if "deepspeed.runtime.zero.muon.original_muon" in sys.modules:
        return
    before = os.environ.get("TORCHDYNAMO_DISABLE")
    os.environ["TORCHDYNAMO_DISABLE"] = "1"
    try:
        importlib.import_module("deepspeed.runtime.zero.muon.original_muon")
    except ModuleNotFoundError:  # a DeepSpeed without Muon has nothing to leave uncompiled
        pass
    finally:
        if before is None:
            del os.environ["TORCHDYNAMO_DISABLE"]
        else:
            os.environ["TORCHDYNAMO_DISABLE"] = before


class ClippedAdamW(torch.optim.AdamW):
    """AdamW that first clips its gradients to a global norm of ``max_norm`` (0: no clipping) and keeps
    that norm, taken before clipping, where DeepSpeed's engine reports it from.

    For ZeRO-0 with fp32 weights, where DeepSpeed steps the client optimizer unwrapped: there its own
    clipping takes a norm and a multiply per parameter and then drops the norm (the engine reports
    none). torch's multi-tensor norm and scale are a few operations a step, and read nothing back to
    the host (the trainer reads the norm once a step, with the loss). Its state dict is AdamW's; its
    engine's checkpoints also name its parameters (``save_checkpoint``), for their universal form."""

    def __init__(self, params: Iterable[Any], *, max_norm: float, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.max_norm = max_norm
        self._global_grad_norm: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:  # it makes the gradients this step clips
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        self._global_grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if self.max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.max_norm, self._global_grad_norm, foreach=True)
        super().step()
        return loss


def build_job_engine(model: torch.nn.Module, groups: list[dict[str, Any]], train: TrainSection, *, world_size: int,
                     precision: Precision, load_universal: bool = False) -> deepspeed.DeepSpeedEngine:
    """The engine a job's ``train`` section asks for, at ``world_size`` ranks (``build_engine``'s
    arguments)."""
    zero_stage = engine_zero_stage(train.zero_stage, world_size=world_size, weights=precision.weights)
    return build_engine(
        model, groups, micro_batch=train.micro_batch, world_size=world_size,
        accumulation=gradient_accumulation(train.global_batch, train.micro_batch, world_size),
        lr=train.lr, min_lr=train.min_lr, warmup_steps=train.warmup_steps, total_steps=train.steps,
        betas=train.betas, grad_clip=train.grad_clip, zero_stage=zero_stage, precision=precision,
        load_universal=load_universal, compile_backend=train.compile)


def zero_config(stage: int, *, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """ZeRO's settings.

    Off the GPU, a world of one runs ZeRO-2 as ZeRO-1 (with fp32 weights it runs ZeRO-0 instead:
    ``engine_zero_stage``). With one rank there is nothing to partition, and
    ZeRO-2 still reduces (flatten, all-reduce over one rank, copy back) after every micro-batch where
    ZeRO-1 reduces once a step: 71.6 against 64.2 ms a step of the tiny model in 4 micro-batches on a
    2-core CPU, with the same weights after 60 steps. The two write the same checkpoint files (with
    gradients accumulated in the weights' dtype, DeepSpeed's default), so a job that grows from one
    rank or shrinks to one restores across them as across world sizes. On a GPU the stage stays: there
    ZeRO-1 holds a step's gradients twice at its end, 2 bytes a parameter more in bf16.

    Off the GPU, gradients are not copied into a contiguous bucket as each one is produced: on a CPU that
    is a memory pass per parameter, and the one flatten at the step costs less (a ZeRO-2 step of the tiny
    model on 2 CPU cores: 60.7 ms with the copies, 50.0 without). On a GPU the copies are device-side and
    keep memory unfragmented: DeepSpeed's default stays."""
    one_rank_on_cpu = world_size == 1 and not on_gpu
    return {"stage": 1 if stage == 2 and one_rank_on_cpu else stage, "contiguous_gradients": on_gpu}


def save_checkpoint(engine: deepspeed.DeepSpeedEngine, folder: Path, client_state: dict[str, Any]) -> None:
    """Every rank calls this (ZeRO shards optimizer state); the caller commits it afterwards. A ZeRO-0
    engine's checkpoint names its optimizer's parameters, for its universal form."""
    if isinstance(engine.optimizer, ClippedAdamW):
        names = zero0_universal.param_names(engine.optimizer, engine.param_names)
        client_state = {**client_state, zero0_universal.PARAM_NAMES: names}
    engine.save_checkpoint(str(folder.parent), tag=folder.name, client_state=client_state, save_latest=False)


def load_checkpoint(engine: deepspeed.DeepSpeedEngine, folder: Path) -> dict[str, Any]:
    """Restore ``folder`` into ``engine``; returns the client state it was saved with."""
    # DeepSpeed restores a universal checkpoint's optimizer state only into ZeRO's partitions: into a
    # ZeRO-0 engine it restores the rest, and the master weights and Adam state come from zero/.
    into_zero_0 = isinstance(engine.optimizer, ClippedAdamW) and (folder / "zero").is_dir()
    path, client_state = engine.load_checkpoint(str(folder.parent), tag=folder.name,
                                                load_optimizer_states=not into_zero_0)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint in {folder}")
    if into_zero_0:
        zero0_universal.restore_optimizer(engine.optimizer, engine.param_names, folder)
    _steps_beside_their_parameters(engine.optimizer)
    return client_state


def _steps_beside_their_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Fused AdamW reads each parameter's step count on the parameter's device. A universal checkpoint
    (another world size) sets the counts directly, as the CPU tensors it was converted to, bypassing
    ``Optimizer.load_state_dict``, which would have moved them: move them."""
    base = getattr(optimizer, "optimizer", optimizer)  # ZeRO and bf16 wrap the torch optimizer
    for param, state in base.state.items():
        step = state.get("step")
        if isinstance(step, torch.Tensor) and step.device != param.device:
            state["step"] = step.to(param.device, torch.float32)


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def prebuild_ops() -> None:
    """Compile the ops DeepSpeed would otherwise build inside the first job (CPU: shared-memory comm)."""
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None and builder.is_compatible():
        builder.load(verbose=False)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--prebuild-ops"]:
        sys.exit("usage: python -m workers.engine --prebuild-ops")
    prebuild_ops()
