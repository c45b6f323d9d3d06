"""Evaluation kinds through the real coordinator: shards of the list committed as they are done, the
same numbers at any world size, a killed worker costing only the uncommitted shard, and bad videos
skipped and counted rather than replaced."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import yaml

from coordinator.cli import render_event
from coordinator.client import JobClient, read_config
from internvideo.data.lists import VideoRecord, read_video_list, write_video_list
from internvideo.data.synthetic import write_untrimmed_dataset
from internvideo.tasks.classification import ClassifierModel, build_classifier
from protos.internvideo.v1 import jobs_pb2 as pb
from tests.integration.conftest import REPO, held, release, tiny_job
from tests.integration.test_jobs import bodies, state, worker_pids

pytestmark = pytest.mark.integration
VIDEOS = 10  # not a multiple of 3 workers, nor of the shard size


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    """A tiny-cpu-finetune classifier's weights, as a plain state-dict file."""
    model = ClassifierModel.model_validate(yaml.safe_load(read_config("tiny-cpu-finetune"))["model"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "classifier.pt"
    torch.save(build_classifier(model, drop_path=0.0).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def eval_list(dataset, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval") / "val.txt"
    write_video_list(path, read_video_list(dataset.train_list)[:VIDEOS])
    return path


def recognition(client: JobClient, classifier: Path, val_list: Path, *overrides: str, workers: int,
                min_workers: int | None = None) -> pb.Job:
    return client.submit("eval-recognition", read_config("tiny-cpu-eval"), [
        f"model.init={classifier}", f"data.val_list={val_list}", "data.decode_workers=1", "eval.shard_size=4",
        "eval.micro_batch=1", *overrides], min_workers=min_workers or workers, max_workers=workers)


def finished(client: JobClient, job: pb.Job, coordinator) -> tuple[pb.Job, list]:
    events = list(client.watch(job.job_id))
    job = client.get(job.job_id)
    assert state(job) == "SUCCEEDED", f"{job.message}\n{coordinator.log_tail()}"
    return job, events


def predictions(coordinator, job: pb.Job) -> dict[str, np.ndarray]:
    """The job's committed predictions, every shard's (a shard of only undecodable videos holds ids alone)."""
    shards = [np.load(path) for path in sorted((coordinator.state_dir / "jobs" / job.job_id / "predictions").glob(
        "shard-*.npz"))]
    names = {name for shard in shards for name in shard.files}
    return {name: np.concatenate([shard[name] for shard in shards if name in shard.files]) for name in names}


@pytest.fixture(scope="module")
def on_one_worker(coordinator, classifier, eval_list):
    with JobClient(coordinator.address, token=coordinator.token) as client:
        return finished(client, recognition(client, classifier, eval_list, workers=1), coordinator)


def test_recognition_reports_multi_view_accuracy_per_class_and_the_confusion_matrix(on_one_worker, coordinator):
    job, events = on_one_worker
    metrics = job.result.metrics
    assert metrics["samples"] == VIDEOS and metrics["shards"] == 3 and metrics["skipped_videos"] == 0
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1 and 0 <= metrics["mean_class_accuracy"] <= 1
    details = json.loads(job.result.details_json)
    assert details["views"] == {"clips": 2, "crops": 3}
    confusion = np.array(details["confusion_matrix"])
    assert confusion.shape == (8, 8) and confusion.sum() == VIDEOS
    assert np.trace(confusion) / VIDEOS == pytest.approx(metrics["top1"])
    # The committed predictions are every video's, once, in order, with the averaged softmax of 6 views.
    outputs = predictions(coordinator, job)
    assert outputs["sample_ids"].tolist() == list(range(VIDEOS))
    np.testing.assert_allclose(outputs["scores"].sum(axis=1), 1.0, rtol=1e-5)
    assert [s.shard for s in bodies(events, "shard_committed")] == [0, 1, 2]
    assert [s.samples for s in bodies(events, "shard_committed")] == [4, 4, 2]
    progress = bodies(events, "progress")
    assert [(p.unit, p.step, p.total_steps, p.samples) for p in progress] == [
        ("shard", 1, 3, 4), ("shard", 2, 3, 8), ("shard", 3, 3, 10)]
    shown = io.StringIO()
    render_event(next(e for e in events if e.WhichOneof("body") == "progress"), shown)
    assert "] shard 1/3 " in shown.getvalue() and "loss" not in shown.getvalue()

    # ``internvideo results``: the numbers as tables, or everything as JSON.
    def results(*flags: str) -> str:
        shown = subprocess.run([sys.executable, "-m", "coordinator.cli", "results", "--address", coordinator.address,
                                "--token", coordinator.token, job.job_id, *flags], capture_output=True, text=True,
                               timeout=120, cwd=REPO)
        assert shown.returncode == 0, shown.stderr
        return shown.stdout

    lines = results().splitlines()
    scalars = dict(line.split() for line in lines[1:lines.index("")])
    assert scalars == {name: f"{metrics[name]:.4g}" for name in ("mean_class_accuracy", "top1", "top5")}
    assert "per_class_accuracy:" in lines and "confusion_matrix:" in lines
    assert json.loads(results("--json"))["details"] == details


def test_three_workers_give_the_numbers_one_gives(client, coordinator, classifier, eval_list, on_one_worker):
    one, _ = on_one_worker
    three, events = finished(client, recognition(client, classifier, eval_list, workers=3), coordinator)
    assert {s.world_size for s in bodies(events, "shard_committed")} == {3}  # every shard on 3 workers
    assert json.loads(three.result.details_json) == json.loads(one.result.details_json)
    for name in ("top1", "top5", "mean_class_accuracy", "samples"):
        assert three.result.metrics[name] == one.result.metrics[name]
    for name, values in predictions(coordinator, one).items():
        assert np.array_equal(predictions(coordinator, three)[name], values), name  # to the bit


def test_a_killed_worker_costs_only_the_uncommitted_shard(client, coordinator, classifier, eval_list, on_one_worker):
    one, _ = on_one_worker
    job = recognition(client, classifier, eval_list, "debug.hold_at_steps=[1]", workers=3)
    held(client, job.job_id, 1)  # shard 0 committed, shard 1 not begun
    shard0 = coordinator.state_dir / "jobs" / job.job_id / "predictions" / "shard-00000.npz"
    committed = shard0.stat().st_mtime_ns
    os.kill(worker_pids(coordinator, "EncoderWorker")[1], signal.SIGKILL)
    release(coordinator.state_dir, job.job_id, 1)
    job, events = finished(client, job, coordinator)
    assert job.result.metrics["failures"] == 1
    transitions = [pb.JobState.Name(s.to_state).removeprefix("JOB_STATE_") for s in bodies(events, "state_changed")]
    assert "RECOVERING" in transitions
    assert [s.shard for s in bodies(events, "shard_committed")] == [0, 1, 2]  # shard 0 was not redone
    assert shard0.stat().st_mtime_ns == committed
    for name, values in predictions(coordinator, one).items():
        assert np.array_equal(predictions(coordinator, job)[name], values), name


def test_videos_that_cannot_be_decoded_are_skipped_and_counted_not_replaced(client, coordinator, classifier,
                                                                          eval_list, tmp_path, on_one_worker):
    one, _ = on_one_worker
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(b"not a video" * 100)
    good = read_video_list(eval_list)
    # Three bad videos among the good ones: every good one keeps its own prediction.
    bad = {"empty.mp4": "empty", "garbage.mp4": "corrupt", "missing.mp4": "missing"}
    records = [*good[:3], VideoRecord(str(tmp_path / "empty.mp4"), 1), *good[3:7],
               VideoRecord(str(tmp_path / "garbage.mp4"), 2), *good[7:], VideoRecord(str(tmp_path / "missing.mp4"), 3)]
    write_video_list(tmp_path / "with_bad.txt", records)
    job, _ = finished(client, recognition(client, classifier, tmp_path / "with_bad.txt", "data.max_bad_fraction=0.3",
                                          workers=2), coordinator)
    assert job.result.metrics["samples"] == VIDEOS and job.result.metrics["skipped_videos"] == 3
    assert {(v.path, v.reason) for v in job.skipped_videos} == {(str(tmp_path / name), why) for name, why in bad.items()}
    outputs = predictions(coordinator, job)
    assert outputs["sample_ids"].tolist() == [0, 1, 2, 4, 5, 6, 7, 9, 10, 11]
    assert np.array_equal(outputs["scores"], predictions(coordinator, one)["scores"])
    assert job.result.metrics["top1"] == one.result.metrics["top1"]


def test_an_evaluation_is_refused_at_submit_when_its_inputs_do_not_fit(client, classifier, eval_list, tmp_path):
    (tmp_path / "classes.txt").write_text("one\ntwo\nthree\n")
    torch.save({"encoder.nonsense": torch.zeros(3)}, tmp_path / "foreign.pt")
    cases = {
        "config.model.init: " + str(tmp_path / "foreign.pt"): [f"model.init={tmp_path / 'foreign.pt'}"],
        "config.data.classes": [f"data.classes={tmp_path / 'classes.txt'}"],
        "config.model.init": [f"model.init={tmp_path / 'missing.pt'}"],
        "config.model.num_classes": ["model.num_classes=3"],
        "config.data.val_list": ["data.val_list=null"],
    }
    for field, overrides in cases.items():
        with pytest.raises(grpc.RpcError) as refused:
            recognition(client, classifier, eval_list, *overrides, workers=1)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith(field), (field, refused.value.details())


def test_features_are_extracted_then_localised_by_job_id(client, coordinator, classifier, tmp_path_factory):
    root = tmp_path_factory.mktemp("untrimmed")
    annotation = write_untrimmed_dataset(root, num_videos=6, fps=8, size=64, val_fraction=0.34)
    extract = client.submit("extract-features", read_config("tiny-cpu-extract"), [
        f"model.init={classifier}", f"data.val_list={annotation}", "data.decode_workers=1"],
        min_workers=2, max_workers=2)
    # Submitted before the features exist: it waits for them, and reads them as job:<id>.
    localise = client.submit("eval-localization", read_config("tiny-cpu-localization"), [
        f"data.train_list={annotation}", f"data.val_list={annotation}", f"data.features=job:{extract.job_id}",
        "train.steps=4", "train.checkpoint_every=0", "train.global_batch=4", "train.micro_batch=2"],
        min_workers=1, max_workers=1)
    assert list(localise.depends_on) == [extract.job_id]
    extract, _ = finished(client, extract, coordinator)
    folder = Path(extract.result.final_checkpoint)
    assert folder == coordinator.state_dir / "jobs" / extract.job_id / "features"
    assert len(list(folder.glob("*.npy"))) == 6 == extract.result.metrics["videos"]
    localise, _ = finished(client, localise, coordinator)
    metrics = localise.result.metrics
    assert {"val_mAP@0.3", "val_mAP@0.5", "val_mAP@0.7", "val_average_mAP"} <= metrics.keys()
    assert all(0 <= metrics[k] <= 1 for k in metrics if k.startswith("val_mAP"))


def test_an_evaluation_that_grows_mid_way_gives_the_numbers_one_worker_gives(client, coordinator, classifier,
                                                                            eval_list, dataset, on_one_worker):
    """A training job holds 2 of the 4 CPU slots: the evaluation starts on 1 worker; once the training job
    is cancelled, it grows to 3 at its next shard boundary and finishes there."""
    one, _ = on_one_worker
    blocker = tiny_job(client, dataset.train_list, "data.decode_workers=1", "debug.hold_at_steps=[1]", workers=1)
    held(client, blocker.job_id, 1)
    job = recognition(client, classifier, eval_list, "debug.hold_at_steps=[1]", workers=3, min_workers=1)
    held(client, job.job_id, 1)
    assert client.get(job.job_id).world_size == 1
    client.cancel(blocker.job_id)
    release(coordinator.state_dir, job.job_id, 1)
    job, events = finished(client, job, coordinator)
    transitions = [pb.JobState.Name(s.to_state).removeprefix("JOB_STATE_") for s in bodies(events, "state_changed")]
    assert "RESCALING" in transitions
    assert [(s.shard, s.world_size) for s in bodies(events, "shard_committed")] == [(0, 1), (1, 1), (2, 3)]
    for name, values in predictions(coordinator, one).items():
        assert np.array_equal(predictions(coordinator, job)[name], values), name
