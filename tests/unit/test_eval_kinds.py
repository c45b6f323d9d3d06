"""Each evaluation kind, without Ray: its samples decoded from real videos, its predictions, and its
numbers against a straightforward computation of the same thing from the model; and the inputs each
refuses at submit, naming the field."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from coordinator.client import read_config
from internvideo.data.decode import DecodeError, probe_video, read_clip
from internvideo.data.features import FeatureGrid, read_features
from internvideo.data.formats import VideoSource, read_activitynet
from internvideo.data.pipeline import load_test_views
from internvideo.data.synthetic import write_synthetic_dataset, write_untrimmed_dataset
from internvideo.data.transforms import normalize_clips, spatial_views
from internvideo.models.clip import VideoCLIP
from internvideo.models.tokenizer import default_tokenizer
from internvideo.tasks import get_task_type
from internvideo.tasks.common import ConfigError
from tests.unit.test_metrics import brute_force_retrieval


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_videos=24, num_frames=16, size=64, seed=0)


def task(kind: str, preset: str, **sections):
    config = yaml.safe_load(read_config(preset))
    for section, values in sections.items():  # a section's fields merge into the preset's; a value replaces
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    task_type = get_task_type(kind)
    return task_type(task_type.config_type.model_validate(config))


def run(evaluation, records, count: int | None = None) -> dict[str, np.ndarray]:
    """What the workers and the runner do, in one process: decode, predict, merge in sample order
    (``count`` samples; one per record by default)."""
    model = evaluation.build_model().eval()
    sample = evaluation.sample_fn()
    count = len(records) if count is None else count
    outputs: dict[str, list] = {}
    with torch.inference_mode():
        for start in range(0, count, 3):
            arrays = [sample(records, 0, i) for i in range(start, min(start + 3, count))]
            batch = {name: np.stack([a[name] for a in arrays]) for name in arrays[0]}
            for name, value in evaluation.predict(model, evaluation.to_tensors(batch, torch.device("cpu"))).items():
                outputs.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in outputs.items()}


@pytest.fixture(scope="module")
def classifier_weights(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    evaluation = task("eval-recognition", "tiny-cpu-eval", model={"init": "unused"}, data={"val_list": "unused"})
    from internvideo.tasks.classification import build_classifier

    path = tmp_path_factory.mktemp("weights") / "classifier.pt"
    torch.save(build_classifier(evaluation.config.model, drop_path=0.0).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def clip_weights(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    evaluation = task("eval-retrieval", "tiny-cpu-eval-mm", model={"init": "unused"}, data={"val_list": "unused"})
    path = tmp_path_factory.mktemp("weights") / "clip.pt"
    torch.save(VideoCLIP(evaluation.config.model.clip_config()).state_dict(), path)
    return path


def test_recognition_averages_each_videos_views_softmax(data, classifier_weights):
    evaluation = task("eval-recognition", "tiny-cpu-eval", model={"init": str(classifier_weights)},
                      data={"val_list": str(data.val_list), "classes": str(data.classes_txt)})
    evaluation.check_inputs()
    records = VideoSource("list", str(data.val_list)).read()
    outputs = run(evaluation, records)
    model = evaluation.build_model().eval()
    spec = evaluation.val_sample_fn().spec
    for i, record in enumerate(records):  # one video at a time, one view at a time
        views = torch.from_numpy(load_test_views(record, spec, num_clips=2, num_crops=3))
        with torch.no_grad():
            probabilities = torch.stack([model(normalize_clips(view[None])).softmax(-1)[0] for view in views])
        np.testing.assert_allclose(outputs["scores"][i], probabilities.mean(0).numpy(), rtol=1e-4, atol=1e-6)
    result = evaluation.evaluate({**outputs, "sample_ids": np.arange(len(records))}, Path("unused"))
    correct = outputs["scores"].argmax(1) == outputs["label"]
    assert result.metrics["top1"] == pytest.approx(correct.mean())
    assert set(result.details["per_class_accuracy"]) == set(data.classes)
    assert np.array(result.details["confusion_matrix"]).sum() == len(records)


def test_zero_shot_scores_are_cosines_with_each_class_prompt_ensemble(data, clip_weights):
    templates = ["a video of {}.", "a shape that does {}."]
    evaluation = task("eval-zero-shot", "tiny-cpu-eval-mm", model={"init": str(clip_weights)},
                      data={"val_list": str(data.val_list), "classes": str(data.classes_txt)}, templates=templates)
    evaluation.check_inputs()
    records = VideoSource("list", str(data.val_list)).read()
    outputs = run(evaluation, records)
    model = evaluation.build_model().eval()
    tokenizer, context = default_tokenizer(), evaluation.config.model.clip_config().text.context_length
    with torch.no_grad():
        classes = torch.stack([F.normalize(torch.stack([
            F.normalize(model.encode_text(tokenizer.tokenize(t.format(name.replace("_", " ")), context))[0], dim=-1)
            for t in templates]).mean(0), dim=-1) for name in data.classes])
        spec = evaluation.val_sample_fn().spec
        videos = torch.stack([model.encode_video(normalize_clips(torch.from_numpy(
            load_test_views(r, spec, 1, 1))))[0] for r in records])
    np.testing.assert_allclose(outputs["scores"], (100 * F.normalize(videos, dim=-1) @ classes.t()).numpy(),
                               rtol=1e-4, atol=1e-3)
    result = evaluation.evaluate(outputs, Path("unused"))
    assert result.metrics["top1"] == pytest.approx((outputs["scores"].argmax(1) == outputs["label"]).mean())


def test_retrieval_ranks_every_caption_of_videos_with_several(data, clip_weights, tmp_path):
    records = VideoSource("video_text", str(data.val_captions)).read()
    # Half the videos get a second caption: theirs, said another way.
    rows = [{"video": r.path, "caption": [r.captions[0], *(["the " + r.captions[0]] if i % 2 else [])]}
            for i, r in enumerate(records)]
    (tmp_path / "captions.json").write_text(json.dumps(rows))
    evaluation = task("eval-retrieval", "tiny-cpu-eval-mm", model={"init": str(clip_weights)},
                      data={"val_list": str(tmp_path / "captions.json"), "format": "video_text"}, dual_softmax=True)
    evaluation.check_inputs()
    records = evaluation.config.data.val_source().read()
    outputs = run(evaluation, records)
    assert outputs["texts"].shape[1] == 2 and outputs["num_texts"].tolist() == [1 + i % 2 for i in range(len(records))]
    result = evaluation.evaluate(outputs, Path("unused"))
    texts = [outputs["texts"][v, k] for v in range(len(records)) for k in range(outputs["num_texts"][v])]
    text_to_video = [v for v in range(len(records)) for _ in range(outputs["num_texts"][v])]
    similarity = (np.stack(texts) @ outputs["video"].T).tolist()
    expected = brute_force_retrieval(similarity, text_to_video)
    assert {k: v for k, v in result.metrics.items() if not k.startswith("dsl_")} == pytest.approx(expected)
    assert result.details == {"videos": len(records), "captions": len(text_to_video)}
    assert {f"dsl_{k}" for k in expected} <= result.metrics.keys()


def test_multiple_choice_picks_the_candidate_nearest_the_video(data, clip_weights):
    evaluation = task("eval-multiple-choice", "tiny-cpu-eval-mm", model={"init": str(clip_weights)},
                      data={"val_list": str(data.val_multiple_choice), "format": "multiple_choice"})
    evaluation.check_inputs()
    records = evaluation.config.data.val_source().read()
    outputs = run(evaluation, records)
    model = evaluation.build_model().eval()
    spec, context = evaluation.val_sample_fn().spec, evaluation.config.model.clip_config().text.context_length
    with torch.no_grad():
        for i, record in enumerate(records):
            video = model.encode_video(normalize_clips(torch.from_numpy(load_test_views(record, spec, 1, 1))))[0]
            texts = model.encode_text(default_tokenizer().tokenize(list(record.captions), context))
            np.testing.assert_allclose(outputs["scores"][i], (100 * texts @ F.normalize(video, dim=-1)).numpy(),
                                       rtol=1e-4, atol=1e-3)
    result = evaluation.evaluate(outputs, Path("unused"))
    answers = np.array([r.label for r in records])
    assert result.metrics["accuracy"] == pytest.approx((outputs["scores"].argmax(1) == answers).mean())


def test_bad_inputs_are_refused_naming_the_field(data, classifier_weights, clip_weights, tmp_path):
    (tmp_path / "three_classes.txt").write_text("a\nb\nc\n")
    torch.save({"encoder.nonsense": torch.zeros(3)}, tmp_path / "foreign.pt")
    cases = [
        ("eval-recognition", "tiny-cpu-eval", {"model": {"init": str(tmp_path / "foreign.pt")}}, "model.init"),
        ("eval-recognition", "tiny-cpu-eval", {"model": {"init": str(clip_weights)}}, "model.init"),
        ("eval-recognition", "tiny-cpu-eval", {"data": {"classes": str(tmp_path / "three_classes.txt")}},
         "data.classes"),
        ("eval-zero-shot", "tiny-cpu-eval-mm", {"data": {"classes": str(tmp_path / "three_classes.txt")}},
         "data.classes"),
        ("eval-retrieval", "tiny-cpu-eval-mm", {}, "data.format"),  # a plain list has no captions
        ("eval-recognition", "tiny-cpu-eval", {"data": {"format": "video_text", "val_list": str(data.val_captions)}},
         "data.format"),  # every caption list's label is 0
        ("eval-multiple-choice", "tiny-cpu-eval-mm", {"data": {"format": "video_text",
                                                               "val_list": str(data.val_captions)}}, "data.format"),
    ]
    for kind, preset, sections, field in cases:
        weights = classifier_weights if preset == "tiny-cpu-eval" else clip_weights
        sections = {"model": {"init": str(weights), **sections.get("model", {})},
                    "data": {"val_list": str(data.val_list), "classes": str(data.classes_txt), **sections.get("data", {})}}
        with pytest.raises(ConfigError) as refused:
            task(kind, preset, **sections).check_inputs()
        assert refused.value.field == field, (kind, sections, refused.value)


def test_extracted_features_are_each_windows_feature_on_actionformers_grid(tmp_path, classifier_weights):
    annotation = write_untrimmed_dataset(tmp_path / "untrimmed", num_videos=3, fps=8, size=64)
    evaluation = task("extract-features", "tiny-cpu-extract", model={"init": str(classifier_weights)},
                      data={"val_list": str(annotation), "format": "activitynet"},
                      windows={"stride": 4, "chunk": 5, "output": str(tmp_path / "features")})
    evaluation.check_inputs()
    records = evaluation.config.data.val_source().read()
    sample = evaluation.sample_fn()
    assert evaluation.sample_count(records) == len(sample.chunks)
    outputs = run(evaluation, records, len(sample.chunks))
    result = evaluation.evaluate(outputs, tmp_path)
    assert result.artifacts == str(tmp_path / "features") and result.metrics["videos"] == 3
    model = evaluation.build_model().eval()
    span = (8 - 1) * 2 + 1  # tiny-cpu-extract: 8 frames, every 2nd
    for record in records:
        features, grid = read_features(tmp_path / "features", Path(record.path).stem)
        info = probe_video(record.path)
        assert grid == FeatureGrid(fps=info.fps, stride=4, window=span, num_frames=info.num_frames)
        assert features.shape == (grid.count, result.metrics["feature_dim"])
        for window in (0, grid.count - 1):  # the first and the last window, decoded on their own
            start = grid.starts()[window]
            clip = read_clip(record.path, lambda n: np.minimum(start + np.arange(8) * 2, n - 1))
            view = torch.from_numpy(spatial_views(clip, 64, 1))
            with torch.no_grad():
                expected = model.features(normalize_clips(view))[0]
            np.testing.assert_allclose(features[window], expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def untrimmed_features(tmp_path_factory, classifier_weights) -> tuple[Path, Path]:
    """An untrimmed set's annotation and its features (extract-features, run in this process)."""
    root = tmp_path_factory.mktemp("untrimmed")
    annotation = write_untrimmed_dataset(root, num_videos=6, fps=8, size=64, val_fraction=0.34)
    extraction = task("extract-features", "tiny-cpu-extract", model={"init": str(classifier_weights)},
                      data={"val_list": str(annotation)}, windows={"stride": 2, "chunk": 8})
    records = extraction.config.data.val_source().read()
    extraction.evaluate(run(extraction, records, extraction.sample_count(records)), root)
    return annotation, root / "features"


def localization(annotation: Path, features: Path, **model):
    return task("eval-localization", "tiny-cpu-localization", data={
        "train_list": str(annotation), "val_list": str(annotation), "features": str(features)}, model=model,
        train={"global_batch": 4, "micro_batch": 2})


def test_localization_samples_put_each_action_on_the_feature_grid(untrimmed_features):
    annotation, features = untrimmed_features
    evaluation = localization(annotation, features)
    evaluation.check_inputs()
    records = evaluation.config.data.val_source().read()
    videos = {v.path: v for v in read_activitynet(annotation)}
    sample = evaluation.val_sample_fn()(records, 0, 0)
    _, grid = read_features(features, Path(records[0].path).stem)
    truth = videos[records[0].path].segments
    assert sample["count"] == len(truth) and sample["mask"].sum() == grid.count
    expected = np.array([grid.to_grid(np.array([s.start, s.end])) for s in truth]).clip(0, grid.count)
    np.testing.assert_allclose(sample["segments"][:len(truth)], expected, rtol=1e-5)


def test_localization_scores_its_detections_in_seconds_and_ground_truth_scores_one(untrimmed_features):
    annotation, features = untrimmed_features
    evaluation = localization(annotation, features)
    records = evaluation.config.data.val_source().read()
    classes, actions = evaluation._annotation
    # The ground truth itself, as detections: every threshold's mAP is 1.
    rows = max(len(actions[r.path]) for r in records)
    outputs = {"segments": np.zeros((len(records), rows, 2)), "scores": np.zeros((len(records), rows)),
               "labels": np.zeros((len(records), rows), np.int64), "video_index": np.arange(len(records))}
    for v, record in enumerate(records):
        for k, (start, end, label) in enumerate(actions[record.path]):
            outputs["segments"][v, k], outputs["scores"][v, k], outputs["labels"][v, k] = (start, end), 1.0, label
    assert evaluation.validation_metrics(outputs)["average_mAP"] == pytest.approx(1.0)

    # A head trained a few steps on the training videos: the whole path runs, and its numbers are mAPs.
    model = evaluation.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train = evaluation.config.data.source().read()
    sample = evaluation.sample_fn()
    for step in range(3):
        arrays = [sample(train, step, i) for i in range(len(train))]
        batch = evaluation.to_tensors({k: np.stack([a[k] for a in arrays]) for k in arrays[0]}, torch.device("cpu"))
        loss, metrics = evaluation.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss) and set(metrics) == {"cls_loss", "reg_loss"}
    model.eval()
    arrays = [evaluation.val_sample_fn()(records, 0, i) for i in range(len(records))]
    batch = evaluation.to_tensors({k: np.stack([a[k] for a in arrays]) for k in arrays[0]}, torch.device("cpu"))
    predicted = {k: v.numpy() for k, v in evaluation.predict(model, batch).items()}
    durations = {v.path: v.duration for v in read_activitynet(annotation)}
    found = predicted["scores"] > 0
    assert found.any() and (predicted["segments"][found] >= 0).all()
    assert all(predicted["segments"][v][found[v]].max() <= durations[records[v].path] + 1.0 for v in range(len(records)))
    result = evaluation.validation_metrics(predicted)
    assert set(result) == {"mAP@0.3", "mAP@0.4", "mAP@0.5", "mAP@0.6", "mAP@0.7", "average_mAP"}
    assert all(0.0 <= value <= 1.0 for value in result.values())


def test_a_video_that_cannot_be_probed_is_a_sample_that_fails_not_a_made_up_grid(tmp_path, classifier_weights):
    annotation = write_untrimmed_dataset(tmp_path / "untrimmed", num_videos=2, fps=8, size=64)
    database = json.loads(annotation.read_text())
    database["database"]["v_missing"] = {"subset": "validation", "duration": 4.0, "annotations": []}
    annotation.write_text(json.dumps(database))
    evaluation = task("extract-features", "tiny-cpu-extract", model={"init": str(classifier_weights)},
                      data={"val_list": str(annotation)})
    records = evaluation.config.data.val_source().read()
    sample = evaluation.sample_fn()
    (missing,) = [i for i, chunk in enumerate(sample.chunks) if records[chunk.video].path.endswith("v_missing.mp4")]
    assert sample.record_index(missing) == [r.path for r in records].index(records[sample.chunks[missing].video].path)
    with pytest.raises(DecodeError) as failed:
        sample(records, 0, missing)
    assert failed.value.reason == "missing"
