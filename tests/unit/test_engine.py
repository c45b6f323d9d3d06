"""The engine's settings, the trainer's seeding of the model's random draws, and a compiled engine."""
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from internvideo.models.vit import VideoClassifier, classifier_config
from internvideo.optim import param_groups
from workers.engine import ClippedAdamW, engine_zero_stage, resolve_precision, zero_config
from workers.trainer import _seed_generators


@pytest.mark.parametrize(("stage", "world_size", "on_gpu", "runs"), [
    (2, 1, False, 1), (2, 2, False, 2), (2, 8, False, 2), (2, 1, True, 2), (1, 1, False, 1), (0, 1, False, 0),
    (0, 4, False, 0), (3, 1, False, 3)])
def test_zero_2_runs_as_zero_1_only_in_a_world_of_one_off_the_gpu(stage, world_size, on_gpu, runs):
    assert zero_config(stage, world_size=world_size, on_gpu=on_gpu)["stage"] == runs


@pytest.mark.parametrize(("stage", "world_size", "weights", "runs"), [
    (2, 1, torch.float32, 0), (1, 1, torch.float32, 0), (0, 1, torch.float32, 0), (2, 2, torch.float32, 2),
    (1, 4, torch.float32, 1), (2, 1, torch.bfloat16, 2), (3, 1, torch.float32, 3), (3, 1, None, 3)])
def test_one_rank_of_fp32_weights_runs_zero_1_and_2_as_zero_0(stage, world_size, weights, runs):
    assert engine_zero_stage(stage, world_size=world_size, weights=weights) == runs


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


def _train_eager_and_compiled(port: int, backend: str, queue) -> None:
    """Three steps of two micro-batches of a tiny video classifier with drop path and head dropout in the
    engine a job builds on a GPU (ZeRO-2 with its gradient hooks and contiguous buckets), eager and then
    compiled with ``backend``, from the same weights and seeds; reports what the test compares."""
    import torch.distributed as dist

    from workers import engine as ds

    ds.zero_config = lambda stage, **_: {"stage": stage, "contiguous_gradients": True}
    ds.init_process_group(master_addr="127.0.0.1", master_port=port, rank=0, world_size=1, timeout_s=60)
    config = classifier_config("tiny", 5, img_size=32, num_frames=4, embed_dim=64, depth=2, num_heads=2,
                               patch_size=8, drop_path_rate=0.5).model_copy(update={"head_dropout": 0.5})
    generator = torch.Generator().manual_seed(0)
    video, labels = torch.randn(2, 3, 4, 32, 32, generator=generator), torch.tensor([1, 3])
    runs = {}
    for compile_backend in ("off", backend):
        torch.manual_seed(0)
        model = VideoClassifier(config)
        engine = ds.build_engine(model, param_groups(model, 0.05), micro_batch=2, accumulation=2, world_size=1,
                                 lr=1e-3, min_lr=0.0, warmup_steps=0, total_steps=10, betas=(0.9, 0.95),
                                 grad_clip=0.0, zero_stage=2, precision=resolve_precision("fp32", on_gpu=False),
                                 compile_backend=compile_backend)
        losses = []
        for micro in range(6):
            _seed_generators(torch.device("cpu"), micro)
            loss = torch.nn.functional.cross_entropy(engine(video), labels)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        runs[compile_backend] = (losses, {k: v.detach().clone() for k, v in engine.module.state_dict().items()},
                                 engine.is_compiled)
    (eager_losses, eager, _), (compiled_losses, compiled, is_compiled) = runs["off"], runs[backend]
    queue.put({"eager_losses": eager_losses, "compiled_losses": compiled_losses, "is_compiled": is_compiled,
               "same_keys": list(eager) == list(compiled),
               "max_weight_difference": max((eager[k] - compiled[k]).abs().max().item() for k in eager),
               "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"]})
    dist.destroy_process_group()
    queue.close()
    queue.join_thread()
    os._exit(0)  # without the interpreter's teardown of gloo's threads (see test_contrastive)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawned(target, *arguments: tuple) -> list[dict]:
    """What ``target(*args, queue)`` reports for each of ``arguments``, each from a spawned process of its
    own (a process group per process, and a fresh DeepSpeed accelerator), in the order they report."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=target, args=(*args, queue)) for args in arguments]
    for process in processes:
        process.start()
    reports = [queue.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(60)
    return reports


def _in_a_process(target, *args) -> dict:
    """What ``target(port, *args, queue)`` reports from a process of its own."""
    return _spawned(target, (_free_port(), *args))[0]


def test_a_compiled_engine_trains_as_the_eager_one_in_one_graph_and_keeps_its_state_dict_keys():
    """``train.compile=inductor``: the module compiled in place inside the engine (ZeRO-2's hooks and all)
    takes the eager engine's steps — with eager's random draws for dropout and drop path (inductor's own
    would differ) — its forward as one graph, and its checkpoints keep the eager names."""
    report = _in_a_process(_train_eager_and_compiled, "inductor")
    assert report["is_compiled"] and report["graphs"] == 1
    assert report["same_keys"]
    assert report["compiled_losses"] == pytest.approx(report["eager_losses"], rel=1e-5)
    assert report["eager_losses"][-1] < report["eager_losses"][0]
    assert report["max_weight_difference"] < 1e-4  # fused kernels sum in another order


def _count_device_synchronisations(port: int, queue) -> None:
    """Three steps of two micro-batches in the engine a job builds, counting the calls that would make a
    GPU's host wait for its device (DeepSpeed's accelerator's ``synchronize``)."""
    from deepspeed.accelerator import get_accelerator

    from workers import engine as ds

    ds.init_process_group(master_addr="127.0.0.1", master_port=port, rank=0, world_size=1, timeout_s=60)
    accelerator, calls = get_accelerator(), []
    synchronize = accelerator.synchronize
    accelerator.synchronize = lambda *args, **kwargs: (calls.append(1), synchronize(*args, **kwargs))[1]
    model = VideoClassifier(classifier_config("tiny", 5, img_size=32, num_frames=4, embed_dim=64, depth=2,
                                              num_heads=2, patch_size=8))
    engine = ds.build_engine(model, param_groups(model, 0.05), micro_batch=2, accumulation=2, world_size=1,
                             lr=1e-3, min_lr=0.0, warmup_steps=0, total_steps=10, betas=(0.9, 0.95),
                             grad_clip=1.0, zero_stage=2, precision=resolve_precision("fp32", on_gpu=False))
    video, labels = torch.randn(2, 3, 4, 32, 32), torch.tensor([1, 3])
    for _ in range(6):
        engine.backward(torch.nn.functional.cross_entropy(engine(video), labels))
        engine.step()
    queue.put({"synchronisations": len(calls), "steps": engine.global_steps,
               "compiler_imported": "torch._functorch.aot_autograd" in sys.modules})
    queue.close()
    queue.join_thread()
    os._exit(0)


def test_the_engine_lets_the_host_run_ahead_of_the_device():
    """DeepSpeed's throughput timer, on by default, synchronised the device twice a micro-batch from its
    third step (4 times here with it on, counted): a GPU's host then cannot queue the next kernels while
    the device runs. The engine a job builds leaves it off. Nor does building it import a compiler:
    DeepSpeed's Muon module, which its ZeRO wrappers import, compiles a function at import (1.2 CPU-s
    of imports in every trainer process)."""
    report = _in_a_process(_count_device_synchronisations)
    assert report["steps"] == 3
    assert report["synchronisations"] == 0
    assert not report["compiler_imported"]


def _zero_0_against_a_plain_loop(port: int, folder: Path, queue) -> None:
    """Three steps of two micro-batches of a tiny classifier in a ZeRO-0 engine of fp32 weights and in a
    plain torch loop (the engine's parameter groups, fused AdamW, schedule and torch's clipping, on the
    mean of the two micro-batches' gradients), from the same weights, clipped hard; reports the
    largest weight difference and each step's gradient norm from both, and saves the engine's checkpoint
    with the state it saved."""
    import functools

    from internvideo.optim import warmup_cosine
    from workers import engine as ds
    from workers.checkpoint import commit

    ds.init_process_group(master_addr="127.0.0.1", master_port=port, rank=0, world_size=1, timeout_s=60)
    config = classifier_config("tiny", 5, img_size=32, num_frames=4, embed_dim=64, depth=2, num_heads=2,
                               patch_size=8)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2, 3, 4, 32, 32, generator=generator), torch.tensor([m % 5, (m + 2) % 5]))
               for m in range(6)]
    torch.manual_seed(0)
    model = VideoClassifier(config)
    plain = VideoClassifier(config)
    plain.load_state_dict(model.state_dict())
    engine = ds.build_engine(model, param_groups(model, 0.05), micro_batch=2, accumulation=2, world_size=1,
                             lr=1e-3, min_lr=0.0, warmup_steps=0, total_steps=10, betas=(0.9, 0.95),
                             grad_clip=0.05, zero_stage=0, precision=resolve_precision("fp32", on_gpu=False))
    optimizer = torch.optim.AdamW(param_groups(plain, 0.05), lr=1e-3, betas=(0.9, 0.95), fused=True)
    schedule = functools.partial(warmup_cosine, warmup_steps=0, total_steps=10, base_lr=1e-3, min_lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step) / 1e-3)
    engine_norms, plain_norms = [], []
    for micro, (video, labels) in enumerate(batches):
        engine.backward(torch.nn.functional.cross_entropy(engine(video), labels))
        engine.step()
        (torch.nn.functional.cross_entropy(plain(video), labels) / 2).backward()
        if micro % 2:
            norm = engine.get_global_grad_norm()
            engine_norms.append(None if norm is None else float(norm))
            plain_norms.append(float(torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.05)))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    ds.save_checkpoint(engine, folder, {"step": 3})
    commit(folder, {"world_size": 1, "step": 3, "weights": "torch.float32"})
    torch.save({"weights": engine.module.state_dict(), "optimizer": engine.optimizer.state_dict()},
               folder.parent / "saved.pt")
    queue.put({"engine_norms": engine_norms, "plain_norms": plain_norms, "steps": engine.global_steps,
               "max_weight_difference": max((a - b).abs().max().item() for a, b in
                                            zip(engine.module.parameters(), plain.parameters())),
               "deepspeed_clipping": engine.gradient_clipping()})
    queue.close()
    queue.join_thread()
    os._exit(0)


def test_a_zero_0_engine_of_fp32_weights_clips_and_reports_its_gradient_norm_as_torch_does(tmp_path: Path):
    """At ZeRO-0 with fp32 weights DeepSpeed steps the optimizer unwrapped; its own clipping took a norm
    and a multiply per parameter and reported no norm. The engine a job builds clips in ``ClippedAdamW``
    and skips the reduction over its one rank: the steps and norms are a plain torch loop's."""
    report = _in_a_process(_zero_0_against_a_plain_loop, tmp_path / "step-00000003")
    assert report["deepspeed_clipping"] == 0  # clipped once, by ClippedAdamW (Adam would hide a second clip)
    # every rank reads the one file of a ZeRO-0 checkpoint: a job resized from one rank to two resumes
    port = _free_port()
    reports = sorted(_spawned(_load_zero_0_at_two_ranks, *((rank, port, tmp_path / "step-00000003") for rank in (0, 1))),
                     key=lambda report: report["rank"])
    assert reports == [{"rank": rank, "steps": 3, "client_step": 3, "weights": True, "optimizer": True}
                       for rank in (0, 1)]
    assert report["steps"] == 3
    assert report["engine_norms"] == pytest.approx(report["plain_norms"], rel=1e-5)
    assert min(report["plain_norms"]) > 0.05  # every step was clipped
    assert report["max_weight_difference"] < 1e-6


def test_clipped_adamw_clips_to_the_global_norm_once_and_keeps_the_norm_before_clipping():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    for param in params:
        param.grad = torch.randn_like(param) * 10
    before = torch.cat([p.grad.flatten() for p in params]).norm()
    optimizer = ClippedAdamW(params, max_norm=0.5, lr=1e-3)
    optimizer.step()
    assert float(optimizer._global_grad_norm) == pytest.approx(float(before), rel=1e-6)
    assert float(torch.cat([p.grad.flatten() for p in params]).norm()) == pytest.approx(0.5, rel=1e-5)


def _load_zero_0_at_two_ranks(rank: int, port: int, folder: Path, queue) -> None:
    """One of two ranks restoring the one-rank ZeRO-0 checkpoint ``folder``: reports whether its weights
    and optimizer state are those saved, and its step count."""
    from workers import engine as ds

    ds.init_process_group(master_addr="127.0.0.1", master_port=port, rank=rank, world_size=2, timeout_s=60)
    model = VideoClassifier(classifier_config("tiny", 5, img_size=32, num_frames=4, embed_dim=64, depth=2,
                                              num_heads=2, patch_size=8))
    engine = ds.build_engine(model, param_groups(model, 0.05), micro_batch=2, accumulation=1, world_size=2,
                             lr=1e-3, min_lr=0.0, warmup_steps=0, total_steps=10, betas=(0.9, 0.95),
                             grad_clip=0.05, zero_stage=0, precision=resolve_precision("fp32", on_gpu=False))
    client_state = ds.load_checkpoint(engine, folder)
    saved = torch.load(folder.parent / "saved.pt", weights_only=True)
    state = engine.optimizer.state_dict()["state"]
    queue.put({"rank": rank, "steps": engine.global_steps, "client_step": client_state.get("step"),
               "weights": all(torch.equal(v, saved["weights"][k]) for k, v in engine.module.state_dict().items()),
               "optimizer": all(torch.equal(state[i][key], saved["optimizer"]["state"][i][key])
                                for i in saved["optimizer"]["state"] for key in ("exp_avg", "exp_avg_sq"))})
    queue.close()
    queue.join_thread()
    os._exit(0)


def test_a_zero_0_engine_of_bf16_weights_refuses_a_universal_checkpoint_before_building():
    """DeepSpeed would restore no weights into its bf16 wrapper from a universal checkpoint, and then fail
    on its optimizer."""
    from workers.engine import build_engine

    model = VideoClassifier(classifier_config("tiny", 5, img_size=32, num_frames=4, embed_dim=64, depth=2,
                                              num_heads=2, patch_size=8))
    with pytest.raises(ValueError, match="ZeRO-0 engine of bf16 weights cannot restore a universal checkpoint"):
        build_engine(model, param_groups(model, 0.05), micro_batch=2, accumulation=1, world_size=2, lr=1e-3,
                     min_lr=0.0, warmup_steps=0, total_steps=10, betas=(0.9, 0.95), grad_clip=1.0,
                     zero_stage=0, precision=resolve_precision("bf16", on_gpu=False), load_universal=True)


def _cross_zero_0_and_zero_2(port: int, root: Path, queue) -> None:
    """A ZeRO-0 engine's checkpoint restored through its universal form into a ZeRO-2 engine, which trains
    on and whose checkpoint is restored through its universal form into a ZeRO-0 engine (what a job that
    grows from one rank, then shrinks to one, does); each engine built from other random weights than
    the one it restores; last, a ZeRO-2 engine of bf16 weights into a ZeRO-0 engine of fp32 weights (a
    precision changed on shrinking). Reports, for each crossing, whether every parameter's fp32 (master)
    weight and Adam's two moments arrived to the bit, and the step counts, learning rates, client states
    and next losses."""
    from workers import engine as ds
    from workers.checkpoint import commit, to_universal

    ds.zero_config = lambda stage, **_: {"stage": stage, "contiguous_gradients": False}  # ZeRO-2 itself at one rank
    ds.init_process_group(master_addr="127.0.0.1", master_port=port, rank=0, world_size=1, timeout_s=60)
    config = classifier_config("tiny", 5, img_size=32, num_frames=4, embed_dim=64, depth=2, num_heads=2,
                               patch_size=8)
    video, labels = torch.randn(2, 3, 4, 32, 32), torch.tensor([1, 3])

    def engine(stage: int, seed: int, load_universal: bool = False, precision: str = "fp32"):
        torch.manual_seed(seed)
        model = VideoClassifier(config)
        return ds.build_engine(model, param_groups(model, 0.05), micro_batch=2, accumulation=1, world_size=1,
                               lr=1e-3, min_lr=0.0, warmup_steps=2, total_steps=10, betas=(0.9, 0.95),
                               grad_clip=1.0, zero_stage=stage, precision=ds.resolve_precision(precision, on_gpu=False),
                               load_universal=load_universal)

    def loss(engine) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(engine(video.to(next(engine.parameters()).dtype)).float(), labels)

    def train(engine, steps: int) -> None:
        for _ in range(steps):
            engine.backward(loss(engine))
            engine.step()

    def state(engine) -> list[torch.Tensor]:
        """Group by group, the fp32 (master) weights and Adam's two moments, each flat in the group's order
        (ZeRO-2's partition at one rank, less its padding)."""
        if isinstance(engine.optimizer, ds.ClippedAdamW):
            adam = engine.optimizer.state
            return [torch.cat([(p if key is None else adam[p][key]).detach().flatten() for p in group["params"]])
                    for group in engine.optimizer.param_groups for key in (None, "exp_avg", "exp_avg_sq")]
        zero, adam = engine.optimizer, engine.optimizer.optimizer.state
        return [(flat if key is None else adam[flat][key])[:sum(p.numel() for p in params)].detach().clone()
                for flat, params in zip(zero.single_partition_of_fp32_groups, zero.bit16_groups)
                for key in (None, "exp_avg", "exp_avg_sq")]

    def adam_steps(engine) -> set[float]:
        base = getattr(engine.optimizer, "optimizer", engine.optimizer)
        return {float(s["step"]) for s in base.state.values()}

    def crossing(source, target) -> dict:
        folder = root / f"step-{source.global_steps:08d}"
        ds.save_checkpoint(source, folder, {"step": source.global_steps})
        commit(folder, {"world_size": 1, "step": source.global_steps, "weights": str(next(source.parameters()).dtype)})
        client_state = ds.load_checkpoint(target, to_universal(folder))
        before, after = state(source), state(target)
        with torch.no_grad():
            losses = (loss(source).item(), loss(target).item())
        restored = {"equal": [torch.equal(a, b) for a, b in zip(before, after, strict=True)],
                    "steps": (source.global_steps, target.global_steps, client_state["step"]),
                    "adam_steps": (adam_steps(source), adam_steps(target)),
                    "lr": (source.get_lr(), target.get_lr()), "losses": losses}
        # One more step on each: the schedule's position and Adam's step count (its bias correction) came
        # back too when the updates agree (up to the order the two stages sum the gradient norm in).
        for stepped in (source, target):
            train(stepped, 1)
        updates = [[b - a for a, b in zip(weights[::3], state(stepped)[::3])]  # [::3]: each group's weights
                   for weights, stepped in ((before, source), (after, target))]
        difference = max((u - v).abs().max().item() for u, v in zip(*updates))
        return {**restored, "update_difference": difference / max(u.abs().max().item() for u in updates[0])}

    zero_0 = engine(0, seed=1)
    train(zero_0, 3)
    zero_2 = engine(2, seed=2, load_universal=True)
    grown = crossing(zero_0, zero_2)
    train(zero_2, 1)
    shrunk = crossing(zero_2, engine(0, seed=3, load_universal=True))
    bf16 = engine(2, seed=4, precision="bf16")
    train(bf16, 4)
    from_bf16 = crossing(bf16, engine(0, seed=5, load_universal=True))
    queue.put({"grown": grown, "shrunk": shrunk, "from_bf16": from_bf16})
    queue.close()
    queue.join_thread()
    os._exit(0)


def test_a_zero_0_checkpoint_crosses_to_zero_2_and_back_through_the_universal_layout_to_the_bit(tmp_path: Path):
    """A one-rank job trains at ZeRO-0 and a larger one at ZeRO-2: growing, the ZeRO-0 checkpoint's universal
    form restores into ZeRO-2's partitions; shrinking, a ZeRO-2 checkpoint's restores into a ZeRO-0
    engine, and one of bf16 weights restores its fp32 master weights, not its bf16 module's. Each engine
    starts from other random weights, so a restore that missed a tensor would show; the next step's update
    is the same on both sides, so the schedule and Adam's step count came back too."""
    report = _in_a_process(_cross_zero_0_and_zero_2, tmp_path)
    for crossing, steps in (("grown", 3), ("shrunk", 5), ("from_bf16", 4)):
        got = report[crossing]
        assert got["equal"] and all(got["equal"]), crossing
        assert got["steps"] == (steps, steps, steps) and got["adam_steps"] == ({steps}, {steps}), crossing
        assert got["lr"][0] == got["lr"][1], crossing
    for crossing in ("grown", "shrunk"):  # the same weights in the same precision: the same next loss and step
        assert report[crossing]["losses"][0] == report[crossing]["losses"][1], crossing
        # a wrong schedule position or step count moves the update by percents; an ulp of the weights
        # (~1e-7 at 1.0) is ~1e-4 of an update of lr ~1e-3
        assert report[crossing]["update_difference"] < 1e-3, crossing


def _restore_bf16_weights_under_autocast(port: int, folder: Path, queue) -> None:
    """Three steps with bf16 weights, a checkpoint, and its universal form restored into an engine of
    fp32 weights under autocast; reports whether the fp32 master weights and Adam's moments came back."""
    from workers import engine as ds
    from workers.checkpoint import commit, to_universal

    ds.init_process_group(master_addr="127.0.0.1", master_port=port, rank=0, world_size=1, timeout_s=60)
    config = classifier_config("tiny", 5, img_size=32, num_frames=4, embed_dim=64, depth=2, num_heads=2,
                               patch_size=8)
    video, labels = torch.randn(2, 3, 4, 32, 32), torch.tensor([1, 3])

    def engine(setting: str, load_universal: bool = False):
        model = VideoClassifier(config)
        return ds.build_engine(model, param_groups(model, 0.05), micro_batch=2, accumulation=1, world_size=1,
                               lr=1e-3, min_lr=0.0, warmup_steps=0, total_steps=10, betas=(0.9, 0.95),
                               grad_clip=1.0, zero_stage=2, precision=ds.resolve_precision(setting, on_gpu=False),
                               load_universal=load_universal)

    def optimizer_state(engine) -> list[torch.Tensor]:
        partitions = engine.optimizer.single_partition_of_fp32_groups
        adam = engine.optimizer.optimizer.state
        return [torch.cat([p.detach().flatten() for p in partitions]),
                *(torch.cat([adam[p][k].flatten() for p in partitions]) for k in ("exp_avg", "exp_avg_sq"))]

    bf16 = engine("bf16")
    for _ in range(3):
        bf16.backward(torch.nn.functional.cross_entropy(bf16(video.to(torch.bfloat16)), labels))
        bf16.step()
    ds.save_checkpoint(bf16, folder, {"step": 3})
    commit(folder, {"world_size": 1, "step": 3, "weights": "torch.bfloat16"})
    autocast = engine("bf16-autocast", load_universal=True)
    client_state = ds.load_checkpoint(autocast, to_universal(folder))
    queue.put({"equal": [torch.equal(a, b) for a, b in zip(optimizer_state(bf16), optimizer_state(autocast))],
               "steps": autocast.global_steps, "client_step": client_state.get("step"),
               "weights": {str(p.dtype) for p in autocast.module.parameters()}})
    queue.close()
    queue.join_thread()
    os._exit(0)


def test_a_checkpoint_of_bf16_weights_restores_exactly_into_an_engine_of_fp32_weights(tmp_path: Path):
    """What a job resumed under another precision gets: through the universal layout, the fp32 master
    weights and Adam's two moments of the bf16 engine, to the bit, and its step count."""
    report = _in_a_process(_restore_bf16_weights_under_autocast, tmp_path / "step-00000003")
    assert report["equal"] == [True, True, True]
    assert report["steps"] == 3 and report["client_step"] == 3
    assert report["weights"] == {"torch.float32"}
