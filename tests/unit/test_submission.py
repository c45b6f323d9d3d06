import pytest

from coordinator.client import read_config
from coordinator.state import JobState
from coordinator.submission import (
    InvalidSubmission,
    apply_overrides,
    validate_submission,
)


@pytest.fixture
def train_list(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("".join(f"videos/{i:02d}.mp4 {i % 2}\n" for i in range(16)))  # one tiny-cpu global batch
    return path


@pytest.fixture
def submit(train_list):
    def submit(*overrides: str, kind: str = "pretrain-mae", min_workers: int = 2, max_workers: int = 2, text=None):
        return validate_submission(kind=kind, config_text=read_config("tiny-cpu") if text is None else text,
                                   overrides=[f"data.train_list={train_list}", *overrides],
                                   min_workers=min_workers, max_workers=max_workers)
    return submit


def test_preset_with_overrides_validates(submit, train_list):
    job = submit("train.steps=7", "model.encoder.depth=2")
    assert job.config["train"]["steps"] == 7 and job.config["model"]["encoder"]["depth"] == 2
    assert job.config["data"]["train_list"] == str(train_list)


@pytest.mark.parametrize("overrides, field", [
    (["train.lr=-1"], "config.train.lr"),
    (["train.lr=fast"], "config.train.lr"),
    (["train.bogus=1"], "config.train.bogus"),
    (["model.mask_ratio=1.0"], "config.model.mask_ratio"),
    (["train.micro_batch=5"], "config.train"),
    (["model.size=colossal"], "config.model"),
])
def test_bad_field_is_named(submit, overrides, field):
    with pytest.raises(InvalidSubmission) as err:
        submit(*overrides)
    assert err.value.field == field
    assert str(err.value).startswith(field + ":")


def test_missing_required_field_is_named():
    with pytest.raises(InvalidSubmission) as err:
        validate_submission(kind="pretrain-mae", config_text=read_config("tiny-cpu"), overrides=[],
                            min_workers=1, max_workers=1)
    assert err.value.field == "config.data.train_list"


def test_files_are_checked_at_submit(submit, tmp_path):
    with pytest.raises(InvalidSubmission) as err:
        submit(f"data.train_list={tmp_path / 'nope.txt'}")
    assert err.value.field == "config.data.train_list"
    (tmp_path / "bad.txt").write_text("a.mp4 0\nb.mp4 not-a-label\n")
    with pytest.raises(InvalidSubmission, match="bad.txt:2") as err:
        submit(f"data.train_list={tmp_path / 'bad.txt'}")
    (tmp_path / "half-written").mkdir()
    with pytest.raises(InvalidSubmission, match="not a committed checkpoint") as err:
        submit(f"train.resume_from={tmp_path / 'half-written'}")
    assert err.value.field == "config.train.resume_from"


def test_unknown_kind_and_worker_counts(submit):
    with pytest.raises(InvalidSubmission, match="unknown job kind 'pretrain-xyz'") as err:
        submit(kind="pretrain-xyz")
    assert err.value.field == "kind"
    with pytest.raises(InvalidSubmission) as err:
        submit(min_workers=0)
    assert err.value.field == "min_workers"
    with pytest.raises(InvalidSubmission) as err:
        submit(min_workers=3, max_workers=2)
    assert err.value.field == "max_workers"


def test_global_batch_must_split_over_some_world_size(submit):
    # 16 clips in micro-batches of 4 split over 1, 2 or 4 workers, never over 3.
    with pytest.raises(InvalidSubmission, match=r"world size in \[3, 3\]") as err:
        submit(min_workers=3, max_workers=3)
    assert err.value.field == "config.train.global_batch"
    assert submit(min_workers=3, max_workers=4).max_workers == 4


def test_bad_yaml_and_bad_override_syntax(submit):
    with pytest.raises(InvalidSubmission) as err:
        submit(text="model: [unclosed")
    assert err.value.field == "config_yaml"
    with pytest.raises(InvalidSubmission) as err:
        submit("no-equals-sign")
    assert err.value.field == "overrides"


def test_overrides_do_not_touch_the_original():
    original = {"train": {"steps": 1}}
    updated = apply_overrides(original, ["train.steps=5", "train.betas=[0.9, 0.99]"])
    assert original == {"train": {"steps": 1}}
    assert updated["train"] == {"steps": 5, "betas": [0.9, 0.99]}


def test_a_list_smaller_than_one_global_batch_is_refused(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("a.mp4 0\nb.mp4 1\n")
    with pytest.raises(InvalidSubmission) as err:
        validate_submission(kind="pretrain-mae", config_text=read_config("tiny-cpu"),
                            overrides=[f"data.train_list={short}"], min_workers=1, max_workers=1)
    assert err.value.field == "config.train.global_batch" and "the data has 2 samples" in str(err.value)


def test_an_evaluation_asks_for_no_more_workers_than_a_shard_keeps_busy(tmp_path):
    (tmp_path / "val.txt").write_text("".join(f"{i}.mp4 0\n" for i in range(8)))
    config = read_config("tiny-cpu-eval")
    overrides = [f"data.val_list={tmp_path / 'val.txt'}", "model.init=job:unused", "eval.shard_size=8",
                 "eval.micro_batch=2"]
    spec = validate_submission(kind="eval-recognition", config_text=config, overrides=overrides, min_workers=2,
                               max_workers=8, job_state=lambda job_id: JobState.SUCCEEDED)
    assert spec.needs.world_sizes == (2, 3, 4)  # 8 samples in micro-batches of 2: at most 4 busy
    with pytest.raises(InvalidSubmission) as err:
        validate_submission(kind="eval-recognition", config_text=config, overrides=overrides, min_workers=5,
                            max_workers=8, job_state=lambda job_id: JobState.SUCCEEDED)
    assert err.value.field == "min_workers" and "at most 4 workers busy" in str(err.value)
