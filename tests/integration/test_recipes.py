"""Recipes through the real coordinator: failures that fail their dependants with the reason, and
weights named by job id. (A recipe run to its end, each stage after those it names: `test_demo`; a
recipe sent again with its request id: `tests/unit/test_recipe.py`.)"""
from __future__ import annotations

import grpc
import pytest
import yaml

from coordinator.client import read_config, read_recipe
from coordinator.demo import STAGES, data_overrides
from protos.internvideo.v1 import jobs_pb2 as pb
from tests.integration.test_jobs import bodies, state

pytestmark = pytest.mark.integration


def short(dataset, steps: int = 2) -> list[str]:
    """Every stage's data, and each training stage ``steps`` long."""
    return [*data_overrides(dataset), *(f"{s}:train.steps={steps}" for s in STAGES),
            *(f"{s}:train.checkpoint_every=0" for s in STAGES)]


def history(client, job: pb.Job) -> list[pb.JobEvent]:
    return list(client.watch(job.job_id, follow=False))


def moments(events: list[pb.JobEvent], to: str) -> list[int]:
    return [e.time.ToNanoseconds() for e in events if e.WhichOneof("body") == "state_changed"
            and pb.JobState.Name(e.state_changed.to_state) == f"JOB_STATE_{to}"]


def test_a_failed_stage_fails_its_dependants_with_the_reason(client, dataset, coordinator):
    # mm cannot decode a single video in a microsecond: it fails, and every stage after it with it — those
    # that start from it (post-mm, eval-mm) and, through post-mm, the interaction — none of them started.
    jobs = client.submit_recipe(read_recipe("tiny-cpu"), [*short(dataset), "mm:data.video_time_limit_s=1e-6"])
    by_name = {j.name.split("/")[1]: j for j in jobs}
    for job in jobs:
        list(client.watch(job.job_id))
    ended = {name: client.get(job.job_id) for name, job in by_name.items()}
    assert {n: state(j) for n, j in ended.items()} == {
        "mae": "SUCCEEDED", "post-mae": "SUCCEEDED", "eval-post-mae": "SUCCEEDED",
        "mm": "FAILED", "post-mm": "FAILED", "eval-mm": "FAILED", "interaction": "FAILED"}
    assert "could not be decoded" in ended["mm"].message
    for name in ("post-mm", "eval-mm"):
        assert ended[name].message == f"job {by_name['mm'].job_id}, which it starts from, failed: {ended['mm'].message}"
    assert ended["interaction"].message.startswith(f"job {by_name['post-mm'].job_id}, which it starts from, failed:")
    assert "could not be decoded" in ended["interaction"].message
    for name in ("post-mm", "eval-mm", "interaction"):
        assert not moments(history(client, ended[name]), "STARTING")  # it never started


def test_weights_named_by_job_id_and_checkpoints_that_do_not_fit(client, dataset, coordinator):
    def refused(*overrides: str) -> str:
        with pytest.raises(grpc.RpcError) as err:
            client.submit("post-pretrain", read_config("tiny-cpu-finetune"),
                          [f"data.train_list={dataset.train_list}", *overrides])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return err.value.details()

    before = len(client.list(page_size=1000).jobs)
    assert refused("model.init=job:job-doesnotexist").startswith("config.model.init: no job 'job-doesnotexist'")
    assert refused("model.init=/no/such/weights.pt").startswith("config.model.init: no such checkpoint")
    assert len(client.list(page_size=1000).jobs) == before  # nothing stored

    mm = client.submit("pretrain-mm", read_config("tiny-cpu-mm"), [f"data.train_list={dataset.train_captions}",
                                                                   "train.steps=1"], min_workers=1)
    # A VideoMAE classifier from the multimodal towers: accepted at submit (the job has not run yet),
    # refused when it starts, naming the field and the keys, before any step.
    wrong = client.submit("post-pretrain", read_config("tiny-cpu-finetune"),
                          [f"data.train_list={dataset.train_list}", f"model.init=job:{mm.job_id}"], min_workers=1)
    assert list(wrong.depends_on) == [mm.job_id]
    events = list(client.watch(wrong.job_id))
    wrong = client.get(wrong.job_id)
    assert state(client.get(mm.job_id)) == "SUCCEEDED" and state(wrong) == "FAILED"
    assert "model.init:" in wrong.message and "checkpoint does not fit the model" in wrong.message
    assert "missing" in wrong.message and "encoder.blocks.0.attn.qkv.weight" in wrong.message, wrong.message
    assert not bodies(events, "progress")


def test_a_bad_recipe_is_refused_whole_naming_the_field(client, dataset):
    before = len(client.list(page_size=1000).jobs)
    recipe = yaml.safe_load(read_recipe("tiny-cpu"))
    recipe["stages"][0]["set"].append("model.mask_ratio=stage:interaction")  # mae ← … ← interaction ← mae
    for text, overrides, field in ((yaml.safe_dump(recipe), short(dataset), "recipe.stages"),
                                   (read_recipe("tiny-cpu"), [*short(dataset), "post-mm:model.init=stage:nope"],
                                    "recipe.stages.3"),
                                   (read_recipe("tiny-cpu"), short(dataset)[1:], "recipe.mae.config.data.train_list")):
        with pytest.raises(grpc.RpcError) as err:
            client.submit_recipe(text, overrides)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(f"{field}:"), err.value.details()
    assert len(client.list(page_size=1000).jobs) == before  # no stage of any of them was stored
