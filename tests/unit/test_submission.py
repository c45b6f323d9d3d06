import pytest

from coordinator.client import read_config
from coordinator.state import JobState
from coordinator.submission import (
    MAX_CONFIG_BYTES,
    MAX_OVERRIDES,
    InvalidSubmission,
    PathNotAllowed,
    SubmissionContext,
    apply_overrides,
    parse_config,
    validate_submission,
)
from internvideo.tasks.paths import PathPolicy


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
    (["data.repeated_sampling=3"], "config"),  # a micro-batch of 4 clips cannot hold whole videos of 3
    (["data.repeated_sampling=0"], "config.data.repeated_sampling"),
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
    # Two clips a video: the 16 clips of a step come from 8 videos, still more than 2.
    with pytest.raises(InvalidSubmission, match="the data has 2 samples: a step needs 8"):
        validate_submission(kind="pretrain-mae", config_text=read_config("tiny-cpu"),
                            overrides=[f"data.train_list={short}", "data.repeated_sampling=2"], min_workers=1,
                            max_workers=1)


def test_an_evaluation_asks_for_no_more_workers_than_a_shard_keeps_busy(tmp_path):
    (tmp_path / "val.txt").write_text("".join(f"{i}.mp4 0\n" for i in range(8)))
    config = read_config("tiny-cpu-eval")
    overrides = [f"data.val_list={tmp_path / 'val.txt'}", "model.init=job:unused", "eval.shard_size=8",
                 "eval.micro_batch=2"]
    spec = validate_submission(kind="eval-recognition", config_text=config, overrides=overrides, min_workers=2,
                               max_workers=8, context=SubmissionContext(job_state=lambda job_id: JobState.SUCCEEDED))
    assert spec.needs.world_sizes == (2, 3, 4)  # 8 samples in micro-batches of 2: at most 4 busy
    with pytest.raises(InvalidSubmission) as err:
        validate_submission(kind="eval-recognition", config_text=config, overrides=overrides, min_workers=5,
                            max_workers=8, context=SubmissionContext(job_state=lambda job_id: JobState.SUCCEEDED))
    assert err.value.field == "min_workers" and "at most 4 workers busy" in str(err.value)


# -- confinement and limits (a shared coordinator) ------------------------------------------------------
def confined_submit(text: str, overrides: list[str], data_root, storage_root, kind: str = "pretrain-mae"):
    paths = PathPolicy.of([data_root], [storage_root]).for_tenant("local")
    return validate_submission(kind=kind, config_text=text, overrides=overrides, min_workers=1, max_workers=1,
                               context=SubmissionContext(paths=paths))


@pytest.fixture
def roots(tmp_path, train_list):
    """A data root holding the train list, a storage root, and a secret outside both."""
    data, storage, outside = tmp_path / "data", tmp_path / "storage", tmp_path / "outside"
    for folder in (data, storage, outside):
        folder.mkdir()
    (data / "train.txt").write_text(train_list.read_text())
    (outside / "train.txt").write_text(train_list.read_text())
    return data, storage, outside


def test_paths_inside_the_roots_pass(roots):
    data, storage, _ = roots
    job = confined_submit(read_config("tiny-cpu"), [f"data.train_list={data}/train.txt"], data, storage)
    assert job.config["data"]["train_list"] == f"{data}/train.txt"


@pytest.mark.parametrize("path", [
    "{outside}/train.txt",
    "{data}/../outside/train.txt",  # .. is resolved before the check
    "{data}/link/train.txt",        # so is a symlink inside a root that points out of it
    "/etc/passwd",
    "{storage}/../storage/train.txt",  # the storage root itself: only the tenant's folder of it is its
])
def test_a_path_outside_the_roots_is_not_allowed(roots, path):
    data, storage, outside = roots
    (data / "link").symlink_to(outside)
    (storage / "train.txt").write_text("")
    with pytest.raises(PathNotAllowed, match=r"config\.data\.train_list: .* outside the data roots or this "
                                             r"tenant's storage folders"):
        confined_submit(read_config("tiny-cpu"),
                        [f"data.train_list={path.format(data=data, outside=outside, storage=storage)}"], data, storage)


def test_a_relative_path_is_refused_when_paths_are_confined(roots):
    data, storage, _ = roots
    with pytest.raises(PathNotAllowed, match=r"config\.data\.train_list: train\.txt is relative"):
        confined_submit(read_config("tiny-cpu"), ["data.train_list=train.txt"], data, storage)


def test_a_tenant_reads_and_writes_only_its_own_folder_of_the_storage(roots):
    data, storage, _ = roots
    (storage / "local").mkdir()
    (storage / "local" / "train.txt").write_text((data / "train.txt").read_text())
    (storage / "vision-lab").mkdir()
    job = confined_submit(read_config("tiny-cpu"), [f"data.train_list={storage}/local/train.txt"], data, storage)
    assert job.tenant == "local"
    with pytest.raises(PathNotAllowed, match="outside the data roots or this tenant's storage"):
        confined_submit(read_config("tiny-cpu"), [f"data.train_list={storage}/vision-lab/train.txt"], data, storage)


def test_outputs_must_be_under_a_storage_root_not_a_data_root(roots, tmp_path):
    data, storage, _ = roots
    (data / "val.txt").write_text("videos/00.mp4 0\n")
    (data / "ckpt.pt").write_bytes(b"")
    base = ["model.init=job:job-x", f"data.val_list={data}/val.txt"]
    with pytest.raises(PathNotAllowed, match=r"config\.windows\.output: .* outside this tenant's storage folders"):
        confined_submit("", [*base, f"windows.output={data}/features"], data, storage, kind="extract-features")


def test_a_yaml_alias_bomb_is_refused_before_it_expands():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8))  # 10^9 values once expanded
    with pytest.raises(InvalidSubmission, match=r"config_yaml: more than 100000 values"):
        parse_config(bomb)


def test_a_yaml_alias_bomb_in_an_override_is_refused_before_it_expands():
    bomb = "a=[" + ", ".join(["&x0 [0,0,0,0,0,0,0,0,0,0]"] + [
        f"&x{i} [*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1}]"
        for i in range(1, 9)]) + "]"
    with pytest.raises(InvalidSubmission, match=r"overrides: more than 100000 values"):
        validate_submission(kind="pretrain-mae", config_text="", overrides=[bomb], min_workers=1, max_workers=1)


@pytest.mark.parametrize("text, overrides, match", [
    ("x: " + "y" * (MAX_CONFIG_BYTES + 1), [], r"config_yaml: \d+ bytes, more than the limit"),
    ("[" * 5000 + "]" * 5000, [], "config_yaml: nested too deeply"),
    ("", ["train.steps=1"] * (MAX_OVERRIDES + 1), "overrides: 257 of them"),
    ("", ["train.steps=" + "1" * 2000], "overrides: 2012 characters"),
])
def test_oversized_requests_are_refused_naming_the_limit(text, overrides, match):
    with pytest.raises(InvalidSubmission, match=match):
        validate_submission(kind="pretrain-mae", config_text=text, overrides=overrides, min_workers=1, max_workers=1)


def test_overlong_names_are_refused():
    with pytest.raises(InvalidSubmission, match="name: 300 characters"):
        validate_submission(kind="pretrain-mae", config_text="", overrides=[], min_workers=1, max_workers=1,
                            name="n" * 300)


def test_yaml_is_loaded_safely_no_python_objects():
    with pytest.raises(InvalidSubmission, match="not valid YAML"):
        parse_config("model: !!python/object/apply:os.system ['touch /tmp/pwned']")


def test_the_coordinators_own_state_is_private_even_inside_a_root(roots, tmp_path):
    data, storage, _ = roots
    state = storage / "coordinator"  # as deployed: the state folder on the shared storage
    state.mkdir()
    (state / "client-token").write_text("ivt_secret\n")
    paths = PathPolicy.of([data], [storage], private=[state]).for_tenant("local")
    for path in (state / "client-token", storage / "x" / ".." / "coordinator" / "jobs.sqlite"):
        with pytest.raises(PathNotAllowed, match="inside the coordinator's own state, where this tenant may read "
                                                 "only its own jobs' folders"):
            validate_submission(kind="pretrain-mae", config_text=read_config("tiny-cpu"),
                                overrides=[f"data.train_list={path}"], min_workers=1, max_workers=1,
                                context=SubmissionContext(paths=paths))



def test_the_coordinators_own_state_is_private_when_paths_are_not_confined_too(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "client-token").write_text("ivt_secret\n")
    with pytest.raises(PathNotAllowed, match="inside the coordinator's own state"):
        validate_submission(kind="pretrain-mae", config_text=read_config("tiny-cpu"),
                            overrides=[f"data.train_list={state}/client-token"], min_workers=1, max_workers=1,
                            context=SubmissionContext(paths=PathPolicy.of(None, private=[state])))



def test_a_tenant_may_read_its_own_jobs_folders_in_the_state_but_nothing_else_there(roots):
    data, storage, _ = roots
    state = storage / "coordinator"
    (state / "jobs" / "job-ours").mkdir(parents=True)
    (state / "jobs" / "job-theirs").mkdir(parents=True)
    for job in ("job-ours", "job-theirs"):
        (state / "jobs" / job / "train.txt").write_text((data / "train.txt").read_text())
    ours = f"{state.resolve()}/jobs/job-ours"
    paths = PathPolicy.of([data], [storage], private=[state]).for_tenant(
        "local", readable=lambda resolved: resolved.startswith(ours))
    submit = lambda path: validate_submission(  # noqa: E731
        kind="pretrain-mae", config_text=read_config("tiny-cpu"), overrides=[f"data.train_list={path}"],
        min_workers=1, max_workers=1, context=SubmissionContext(paths=paths))
    assert submit(state / "jobs" / "job-ours" / "train.txt").kind == "pretrain-mae"
    with pytest.raises(PathNotAllowed, match="may read only its own jobs' folders"):
        submit(state / "jobs" / "job-theirs" / "train.txt")
