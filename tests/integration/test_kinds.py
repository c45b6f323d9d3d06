"""Every training kind through the real coordinator (tiny configs), and the guarantee each keeps: a
run rescaled mid-way ends where the uninterrupted run ends, and a killed trainer resumes exactly."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from coordinator.client import JobClient, read_config
from internvideo.data.lists import VideoRecord, read_video_list, write_video_list
from protos.internvideo.v1 import jobs_pb2 as pb
from tests.integration.conftest import held, max_difference, release, tiny_job, wait_for, weights
from tests.integration.test_jobs import bodies, state, worker_pids

pytestmark = pytest.mark.integration
MM = ("train.steps=8", "train.checkpoint_every=4")


def mm_job(client: JobClient, dataset, *overrides: str, workers: int = 2) -> pb.Job:
    return client.submit("pretrain-mm", read_config("tiny-cpu-mm"),
                         [f"data.train_list={dataset.train_captions}", f"data.val_list={dataset.val_captions}",
                          *MM, *overrides],
                         min_workers=workers, max_workers=workers)


def finished(client: JobClient, job: pb.Job, coordinator) -> tuple[pb.Job, list]:
    events = list(client.watch(job.job_id))
    job = client.get(job.job_id)
    assert state(job) == "SUCCEEDED", f"{job.message}\n{coordinator.log_tail()}"
    return job, events


def without_key_biases(state: dict) -> dict:
    """The weights that decide the function: the key third of each attention's ``in_proj_bias`` adds
    the same q·b_k to every score of a row, which softmax ignores. Its gradient is zero but for
    float noise, which AdamW divides by that noise's own magnitude: it walks by lr-sized steps that
    differ from run to run without changing any output."""
    out = {}
    for name, value in state.items():
        if name.endswith("in_proj_bias"):
            third = value.shape[0] // 3
            value = torch.cat([value[:third], value[2 * third:]])
        out[name] = value
    return out


@pytest.fixture(scope="module")
def uninterrupted_mm(coordinator, dataset):
    """Two 2-worker runs, 8 steps: global negatives (GradCache) and micro-batch negatives."""
    with JobClient(coordinator.address, token=coordinator.token) as client:
        return {negatives: finished(client, mm_job(client, dataset, f"model.negatives={negatives}"), coordinator)
                for negatives in ("global", "micro")}


def test_pretrain_mm_trains_and_reports_its_losses(uninterrupted_mm):
    job, events = uninterrupted_mm["global"]
    progress = bodies(events, "progress")
    assert [p.step for p in progress] == list(range(1, 9))
    for p in progress:
        assert set(p.metrics) >= {"loss", "contrastive", "caption", "temperature", "lr", "grad_norm"}
        assert p.loss == pytest.approx(p.metrics["contrastive"] + 0.5 * p.metrics["caption"], rel=1e-6)
    assert progress[0].metrics["temperature"] == pytest.approx(1 / 0.07, rel=1e-6)  # CLIP's initial scale
    assert progress[-1].metrics["contrastive"] < progress[0].metrics["contrastive"]
    assert [c.step for c in job.checkpoints] == [4, 8]
    # Held-out text→video retrieval at each checkpoint, in the result as val_*.
    validations = bodies(events, "validation")
    assert [v.step for v in validations] == [4, 8]
    assert all(set(v.metrics) == {"t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "v2t_r1"} for v in validations)
    assert all(0 <= v.metrics["t2v_r1"] <= v.metrics["t2v_r5"] <= v.metrics["t2v_r10"] <= 100 for v in validations)
    assert job.result.metrics["val_t2v_r1"] == validations[-1].metrics["t2v_r1"]


def test_pretrain_mm_rescaled_2_to_1_ends_where_the_uninterrupted_run_does(client, dataset, coordinator,
                                                                           uninterrupted_mm):
    """Global negatives: the step's loss is over the whole global batch at 2 workers × 2 micro-batches and
    at 1 worker × 4. Micro-batch negatives (the control) change with the split, and the runs part."""
    differences = {}
    for negatives, (job, _) in uninterrupted_mm.items():
        rescaled = mm_job(client, dataset, f"model.negatives={negatives}",
                          f"train.resume_from={job.checkpoints[0].path}", workers=1)
        rescaled, events = finished(client, rescaled, coordinator)
        assert [p.step for p in bodies(events, "progress")] == [5, 6, 7, 8]
        differences[negatives] = max_difference(without_key_biases(weights(rescaled.result.final_checkpoint)),
                                                without_key_biases(weights(job.result.final_checkpoint)))
    print(f"rescaled 2 → 1 vs uninterrupted, max |Δw|: {differences}")
    assert differences["global"] < 1e-6
    assert differences["micro"] > 100 * max(differences["global"], 1e-8)


def killed_at_step_6_and_finished(client: JobClient, coordinator, job: pb.Job, rank: int) -> tuple[pb.Job, list]:
    """Hold ``job`` (submitted with debug.hold_at_steps=[6]) after step 6, SIGKILL one trainer, let it go on:
    it recovers from its step-4 checkpoint and redoes steps 5 and 6."""
    held(client, job.job_id, 6)
    os.kill(worker_pids(coordinator, "EncoderWorker")[rank], signal.SIGKILL)
    release(coordinator.state_dir, job.job_id, 6)
    job, events = finished(client, job, coordinator)
    assert [p.step for p in bodies(events, "progress")] == [1, 2, 3, 4, 5, 6, 5, 6, 7, 8]
    assert job.result.metrics["failures"] == 1
    return job, events


def test_a_killed_pretrain_mm_trainer_resumes_exactly(client, dataset, coordinator, uninterrupted_mm):
    job, events = killed_at_step_6_and_finished(client, coordinator, mm_job(client, dataset, "debug.hold_at_steps=[6]"),
                                                rank=0)
    last = {p.step: dict(p.metrics) for p in bodies(events, "progress")}
    expected = bodies(uninterrupted_mm["global"][1], "progress")
    assert [{k: v for k, v in last[s].items()} for s in range(1, 9)] == [dict(p.metrics) for p in expected]
    assert max_difference(weights(job.result.final_checkpoint),
                          weights(uninterrupted_mm["global"][0].result.final_checkpoint)) == 0
    wait_for(lambda: not worker_pids(coordinator, "EncoderWorker"), 10, "the trainers to be gone")


FINETUNE = ("train.steps=8", "train.checkpoint_every=4", "regularization.ema_decay=0.9")


def finetune_job(client: JobClient, dataset, *overrides: str, workers: int = 2, kind: str = "finetune") -> pb.Job:
    return client.submit(kind, read_config("tiny-cpu-finetune"),
                         [f"data.train_list={dataset.train_list}", f"data.val_list={dataset.val_list}", *FINETUNE,
                          *overrides],
                         min_workers=workers, max_workers=workers)


@pytest.fixture(scope="module")
def uninterrupted_classifiers(coordinator, dataset):
    """Uninterrupted 2-worker runs of both supervised kinds (finetune: with Mixup/CutMix and the average)."""
    with JobClient(coordinator.address, token=coordinator.token) as client:
        return {kind: finished(client, finetune_job(client, dataset, kind=kind), coordinator)
                for kind in ("finetune", "post-pretrain")}


@pytest.fixture
def uninterrupted_finetune(uninterrupted_classifiers):
    return uninterrupted_classifiers["finetune"]


def test_finetune_with_mixing_rescaled_2_to_1_ends_where_the_uninterrupted_run_does(client, dataset, coordinator,
                                                                                   uninterrupted_finetune):
    """Mixup/CutMix partners and λ are drawn per sample: 1 worker × 4 micro-batches mixes the same pairs
    as 2 × 2. The moving average of the weights travels in the checkpoint."""
    job, events = uninterrupted_finetune
    progress = bodies(events, "progress")
    assert all(set(p.metrics) >= {"loss", "accuracy", "lr", "grad_norm"} for p in progress)
    rescaled = finetune_job(client, dataset, f"train.resume_from={job.checkpoints[0].path}", workers=1)
    rescaled, rescaled_events = finished(client, rescaled, coordinator)
    # Validation is sharded over the workers: 1 and 2 workers predict every held-out video once.
    (validation,) = [v for v in bodies(events, "validation") if v.step == 8]
    assert validation.metrics.keys() == {"top1", "top5"} and 0 <= validation.metrics["top1"] <= 1
    assert dict(bodies(rescaled_events, "validation")[-1].metrics) == dict(validation.metrics)
    difference = max_difference(weights(rescaled.result.final_checkpoint), weights(job.result.final_checkpoint))
    averages = [task_state(c)["weight_average"] for c in (rescaled.result.final_checkpoint,
                                                          job.result.final_checkpoint)]
    print(f"finetune rescaled 2 → 1 vs uninterrupted: max |Δw| = {difference:.3g}")
    assert difference < 1e-6 and max_difference(*averages) < 1e-6
    assert max_difference(averages[1], weights(job.result.final_checkpoint)) > 1e-4  # an average, not a copy


@pytest.mark.parametrize("kind", ["finetune", "post-pretrain"])
def test_a_killed_classifier_trainer_resumes_exactly(kind, client, dataset, coordinator, uninterrupted_classifiers):
    job, events = killed_at_step_6_and_finished(
        client, coordinator, finetune_job(client, dataset, "debug.hold_at_steps=[6]", kind=kind), rank=1)
    reference, reference_events = uninterrupted_classifiers[kind]
    last = {p.step: dict(p.metrics) for p in bodies(events, "progress")}
    assert [last[s] for s in range(1, 9)] == [dict(p.metrics) for p in bodies(reference_events, "progress")]
    assert max_difference(weights(job.result.final_checkpoint), weights(reference.result.final_checkpoint)) == 0
    assert task_state(job.result.final_checkpoint).keys() == task_state(reference.result.final_checkpoint).keys()
    if kind == "finetune":  # its moving average resumed exactly too
        assert max_difference(task_state(job.result.final_checkpoint)["weight_average"],
                              task_state(reference.result.final_checkpoint)["weight_average"]) == 0


def interaction_job(client: JobClient, dataset, base: str, other: str, *overrides: str) -> pb.Job:
    """The interaction of a post-pretrained VideoMAE encoder with a pretrain-mm job's video tower."""
    visual = "{width: 64, layers: 2, heads: 2, patch_size: 16, global_layers: 1, output_dim: 32}"
    return client.submit("interaction", read_config("tiny-cpu-finetune"), [
        f"data.train_list={dataset.train_list}", f"data.val_list={dataset.val_list}", *FINETUNE,
        f"model.init={base}", "model.heads=3", "model.other.encoder=clip", "model.other.size=ViT-B/16",
        "model.other.num_frames=4", f"model.other.overrides={visual}",
        f"model.other.init={other}", *overrides], min_workers=2, max_workers=2)


def test_a_killed_interaction_trainer_resumes_exactly(client, dataset, coordinator, uninterrupted_classifiers,
                                                      uninterrupted_mm):
    base = uninterrupted_classifiers["post-pretrain"][0].result.final_checkpoint
    other = uninterrupted_mm["global"][0].result.final_checkpoint
    reference, reference_events = finished(client, interaction_job(client, dataset, base, other), coordinator)
    job, events = killed_at_step_6_and_finished(
        client, coordinator, interaction_job(client, dataset, base, other, "debug.hold_at_steps=[6]"), rank=0)
    last = {p.step: dict(p.metrics) for p in bodies(events, "progress")}
    assert [last[s] for s in range(1, 9)] == [dict(p.metrics) for p in bodies(reference_events, "progress")]
    assert max_difference(weights(job.result.final_checkpoint), weights(reference.result.final_checkpoint)) == 0
    # The frozen encoders are the ones it was given, to the bit, in both runs.
    ended = weights(job.result.final_checkpoint)
    name = "base.encoder.blocks.0.attn.qkv.weight"
    assert torch.equal(ended[name], weights(base)[name.removeprefix("base.")])


def task_state(checkpoint: str) -> dict:
    (states,) = Path(checkpoint).glob("mp_rank_00_model_states.pt")
    return torch.load(states, map_location="cpu", weights_only=False)["task"]


@pytest.fixture
def two_label_maps(dataset, tmp_path) -> tuple[Path, Path, Path, Path]:
    """The synthetic train list as two datasets: the second names the same 8 classes in reverse order."""
    records = read_video_list(dataset.train_list)
    first, second = records[: len(records) // 2], records[len(records) // 2:]
    write_video_list(tmp_path / "a.txt", first)
    write_video_list(tmp_path / "b.txt", [VideoRecord(r.path, 7 - r.label) for r in second])
    (tmp_path / "a_classes.txt").write_text("\n".join(dataset.classes))
    (tmp_path / "b_classes.txt").write_text("\n".join(c.upper().replace("_", " ") for c in reversed(dataset.classes)))
    return tmp_path / "a.txt", tmp_path / "a_classes.txt", tmp_path / "b.txt", tmp_path / "b_classes.txt"


def test_post_pretrain_on_a_merged_label_space_from_a_pretrain_mae_checkpoint(client, dataset, coordinator,
                                                                             two_label_maps, pretrain_mae):
    mae, _ = pretrain_mae
    a, a_classes, b, b_classes = two_label_maps
    merge = (f"data.merge=[{{train_list: {a}, classes: {a_classes}}}, {{train_list: {b}, classes: {b_classes}}}]")
    job = client.submit("post-pretrain", read_config("tiny-cpu-finetune"),
                        [merge, "train.steps=4", f"model.init={mae.result.final_checkpoint}"],
                        min_workers=2, max_workers=2)
    job, events = finished(client, job, coordinator)
    assert len(bodies(events, "progress")) == 4 and "final_accuracy" in job.result.metrics
    # It started from the pretrained encoder: the first block's weights are the pretraining's, moved by 4 steps.
    start, end = weights(mae.result.final_checkpoint), weights(job.result.final_checkpoint)
    name = "encoder.blocks.0.attn.qkv.weight"
    assert 0 < (start[name] - end[name]).abs().max() < 0.05


def test_post_pretrain_of_the_multimodal_encoder_from_a_pretrain_mm_checkpoint(client, dataset, coordinator,
                                                                              uninterrupted_mm):
    mm_job_record, _ = uninterrupted_mm["global"]
    visual = "{width: 64, layers: 2, heads: 2, patch_size: 16, global_layers: 1, output_dim: 32}"
    job = client.submit("post-pretrain", read_config("tiny-cpu-finetune"), [
        f"data.train_list={dataset.train_list}", "train.steps=4", "model.encoder=clip", "model.size=ViT-B/16",
        "model.num_frames=4", f"model.overrides={visual}", f"model.init={mm_job_record.result.final_checkpoint}"],
        min_workers=2, max_workers=2)
    job, _ = finished(client, job, coordinator)
    start, end = weights(mm_job_record.result.final_checkpoint), weights(job.result.final_checkpoint)
    assert "head.weight" in end and "text.token_embedding.weight" not in end
    assert 0 < (start["clip.visual.conv1.weight"] - end["visual.conv1.weight"]).abs().max() < 0.05


def mae_job(client: JobClient, dataset, *overrides: str) -> pb.Job:
    return tiny_job(client, dataset.train_list, "train.steps=4", "train.checkpoint_every=2", *overrides)


@pytest.fixture(scope="module")
def pretrain_mae(coordinator, dataset) -> tuple[pb.Job, list]:
    """A 2-worker pretrain-mae run of 4 steps at ZeRO-2 (the default)."""
    with JobClient(coordinator.address, token=coordinator.token) as client:
        return finished(client, mae_job(client, dataset), coordinator)


def test_zero_3_with_activation_checkpointing_trains_like_zero_2_and_resumes(client, dataset, coordinator,
                                                                            pretrain_mae):
    """The large sizes' settings on the tiny model: weights partitioned over the ranks (ZeRO-3) and
    each block's activations recomputed in the backward pass — the same steps as ZeRO-2."""
    def run(*overrides: str) -> tuple[pb.Job, list]:
        return finished(client, mae_job(client, dataset, *overrides), coordinator)

    _, plain = pretrain_mae
    zero3, partitioned = run("train.zero_stage=3", "train.activation_checkpointing=true")
    losses = [p.loss for p in bodies(plain, "progress")]
    assert [p.loss for p in bodies(partitioned, "progress")] == pytest.approx(losses, rel=1e-5)
    _, resumed = run("train.zero_stage=3", "train.activation_checkpointing=true",
                     f"train.resume_from={zero3.checkpoints[0].path}")
    assert [p.loss for p in bodies(resumed, "progress")] == [p.loss for p in bodies(partitioned, "progress")][2:]


def test_a_linear_probe_trains_only_its_head(client, dataset, coordinator, uninterrupted_classifiers):
    encoder = uninterrupted_classifiers["post-pretrain"][0].result.final_checkpoint
    job = client.submit("linear-probe", read_config("tiny-cpu-finetune"), [
        f"data.train_list={dataset.train_list}", f"data.val_list={dataset.val_list}", "train.steps=4",
        "train.checkpoint_every=0", "train.lr=1e-2", f"model.init={encoder}"], min_workers=2, max_workers=2)
    job, _ = finished(client, job, coordinator)
    start, end = weights(encoder), weights(job.result.final_checkpoint)
    changed = {name for name in end if not torch.equal(start[name], end[name])}
    assert changed == {"head.weight", "head.bias"}
    assert 0 <= job.result.metrics["val_top1"] <= 1
