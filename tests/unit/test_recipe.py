"""Recipes: stages become validated jobs in dependency order, naming each other by job id; bad
recipes are refused naming what to fix."""
from __future__ import annotations

import pytest
import yaml

from coordinator.client import read_recipe
from coordinator.demo import EVAL_STAGES, STAGES
from coordinator.recipe import plan_recipe
from coordinator.state import JobState
from coordinator.store import JobStore
from coordinator.submission import InvalidSubmission, SubmissionContext
from internvideo.data.synthetic import write_synthetic_dataset
from internvideo.tasks import get_task_type
from tests.unit.loopback import serving


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("recipe"), num_videos=24, num_frames=16, size=32, seed=0)


def data_overrides(ds) -> list[str]:
    return [f"mae:data.train_list={ds.train_list}", f"mm:data.train_list={ds.train_captions}",
            f"post-mae:data.train_list={ds.train_list}", f"post-mm:data.train_list={ds.train_list}",
            f"interaction:data.train_list={ds.train_list}", f"eval-post-mae:data.val_list={ds.val_list}",
            f"eval-mm:data.val_list={ds.val_captions}"]


def no_jobs(job_id: str) -> None:
    return None


def test_the_tiny_recipe_becomes_five_jobs_each_after_those_it_names(data):
    specs = plan_recipe(read_recipe("tiny-cpu"), data_overrides(data), context=SubmissionContext(job_state=no_jobs), request_id="r1")
    names = [s.name.split("/")[1] for s in specs]
    assert names == ["mae", "mm", "post-mae", "post-mm", "interaction", "eval-post-mae", "eval-mm"]
    ids = {name: s.job_id for name, s in zip(names, specs)}
    assert specs[2].config["model"]["init"] == f"job:{ids['mae']}"
    assert specs[4].config["model"]["init"] == f"job:{ids['post-mm']}"  # the paper's base: the multimodal one
    assert specs[4].config["model"]["other"]["init"] == f"job:{ids['post-mae']}"
    assert [s.needs.depends_on for s in specs[:4]] == [(), (), (ids["mae"],), (ids["mm"],)]
    assert sorted(specs[4].needs.depends_on) == sorted((ids["post-mae"], ids["post-mm"]))
    assert {s.request_id for s in specs} == {f"r1/{n}" for n in names}


def test_stages_are_ordered_by_what_they_name_not_by_where_they_stand(data):
    recipe = yaml.safe_load(read_recipe("tiny-cpu"))
    recipe["stages"].reverse()
    specs = plan_recipe(yaml.safe_dump(recipe), data_overrides(data), context=SubmissionContext(job_state=no_jobs))
    order = [s.name.split("/")[1] for s in specs]
    assert order.index("mae") < order.index("post-mae") < order.index("interaction")
    assert order.index("mm") < order.index("post-mm") < order.index("interaction")


@pytest.mark.parametrize("change, field, words", [
    (lambda r: r["stages"][0].update(kind="pretrain-xyz"), "recipe.mae.kind", "unknown job kind"),
    (lambda r: r["stages"][2]["set"].append("model.init=stage:nowhere"), "recipe.stages.2", "unknown stages"),
    (lambda r: r["stages"][0]["set"].append("model.mask_ratio=stage:interaction"), "recipe.stages", "cycle"),
    (lambda r: r["stages"][1].update(name="mae"), "recipe.stages", "repeat"),
    (lambda r: r["stages"][2]["set"].append("model.init=job:job-000000000000"), "recipe.post-mae.config.model.init",
     "no job"),
    (lambda r: r["stages"][2]["set"].append("model.init=/no/such/checkpoint.pt"), "recipe.post-mae.config.model.init",
     "no such checkpoint"),
    (lambda r: r["stages"][1]["set"].append("train.lr=-1"), "recipe.mm.config.train.lr", "greater than 0"),
])
def test_bad_recipes_are_refused_naming_the_field(data, change, field, words):
    recipe = yaml.safe_load(read_recipe("tiny-cpu"))
    change(recipe)
    with pytest.raises(InvalidSubmission) as refused:
        plan_recipe(yaml.safe_dump(recipe), data_overrides(data), context=SubmissionContext(job_state=no_jobs))
    assert refused.value.field == field and words in str(refused.value), str(refused.value)


def test_a_job_reference_to_an_ended_job_without_a_checkpoint_is_refused(data):
    recipe = yaml.safe_load(read_recipe("tiny-cpu"))
    recipe["stages"][2]["set"].append("model.init=job:job-123")
    with pytest.raises(InvalidSubmission, match="job job-123 failed"):
        plan_recipe(yaml.safe_dump(recipe), data_overrides(data), context=SubmissionContext(job_state=lambda job_id: JobState.FAILED))
    with pytest.raises(InvalidSubmission, match="not STAGE:key=value"):
        plan_recipe(read_recipe("tiny-cpu"), ["nostage:train.steps=3"], context=SubmissionContext(job_state=no_jobs))


def test_the_paper_recipe_validates_at_the_papers_sizes():
    """Its data paths name a cluster's storage; its configs must still be valid as written."""
    recipe = yaml.safe_load(read_recipe("paper"))
    for stage in recipe["stages"]:
        config = {**stage["config"], "data": {**stage["config"]["data"], "train_list": "/data/list"}}
        validated = get_task_type(stage["kind"]).config_type.model_validate(config)
        assert validated.valid_world_sizes(stage["min_workers"], stage["max_workers"]), stage["name"]


def test_a_recipe_sent_again_with_its_request_id_is_stored_once(data, tmp_path):
    """Over gRPC: a client that resends a recipe (its answer lost) gets the jobs of the first submission,
    each stage's dependencies by their job ids; another request id is another recipe."""
    store = JobStore(tmp_path / "jobs.sqlite")
    with serving(store, tmp_path) as client:
        jobs = client.submit_recipe(read_recipe("tiny-cpu"), data_overrides(data), request_id="tiny-recipe")
        again = client.submit_recipe(read_recipe("tiny-cpu"), data_overrides(data), request_id="tiny-recipe")
        assert [j.job_id for j in again] == [j.job_id for j in jobs]
        assert [j.name for j in jobs] == [f"internvideo-tiny/{s}" for s in (*STAGES, *EVAL_STAGES)]
        by_name = {j.name.split("/")[1]: j for j in again}
        assert set(by_name["interaction"].depends_on) == {by_name["post-mae"].job_id, by_name["post-mm"].job_id}
        assert list(by_name["eval-post-mae"].depends_on) == [by_name["post-mae"].job_id]
        assert list(by_name["eval-mm"].depends_on) == [by_name["mm"].job_id]
        assert len(store.list_jobs(limit=100)[0]) == 7
        other = client.submit_recipe(read_recipe("tiny-cpu"), data_overrides(data), request_id="another")
        assert not {j.job_id for j in other} & {j.job_id for j in jobs}
        assert len(store.list_jobs(limit=100)[0]) == 14
