"""Dataset annotation formats: SSv2, video–text CSV/JSON, ActivityNet-style untrimmed videos, and
label-map merging; bad entries are named."""
from __future__ import annotations

import json

import pytest

from internvideo.data.formats import (
    Segment,
    merge_label_maps,
    read_activitynet,
    read_ssv2,
    read_video_text,
)
from internvideo.data.lists import VideoRecord


def test_ssv2_templates_map_to_class_ids(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({"Pushing something from left to right": "0",
                                                      "Pushing something from right to left": "1"}))
    (tmp_path / "train.json").write_text(json.dumps([
        {"id": "101", "label": "pushing a cup from left to right", "template": "Pushing [something] from left to right"},
        {"id": "7", "label": "pushing a pen from right to left", "template": "Pushing [something] from right to left"}]))
    records = read_ssv2(tmp_path / "train.json", tmp_path / "labels.json", root="/data/ssv2")
    assert records == [VideoRecord("/data/ssv2/101.webm", 0), VideoRecord("/data/ssv2/7.webm", 1)]

    (tmp_path / "bad.json").write_text(json.dumps([{"id": "3", "template": "Spinning [something]"}]))
    with pytest.raises(ValueError, match=r"bad.json: entry 0: class 'Spinning something' is not in"):
        read_ssv2(tmp_path / "bad.json", tmp_path / "labels.json")


def test_video_text_from_csv_and_json_gathers_several_captions(tmp_path):
    (tmp_path / "webvid.csv").write_text("videoid,name,page_dir\n"
                                         "v1.mp4,a dog runs left,x\nv2.mp4,a square grows,x\nv1.mp4,dog running,x\n")
    videos = read_video_text(tmp_path / "webvid.csv", video_key="videoid", caption_key="name")
    assert [(v.path.rsplit("/", 1)[-1], v.captions) for v in videos] == [
        ("v1.mp4", ("a dog runs left", "dog running")), ("v2.mp4", ("a square grows",))]

    (tmp_path / "msrvtt.json").write_text(json.dumps([{"video": "/abs/a.mp4", "caption": ["one", "two"]}]))
    assert read_video_text(tmp_path / "msrvtt.json")[0].captions == ("one", "two")
    (tmp_path / "empty.json").write_text(json.dumps([{"video": "a.mp4", "caption": " "}]))
    with pytest.raises(ValueError, match="entry 0: needs a 'video' and a non-empty 'caption'"):
        read_video_text(tmp_path / "empty.json")


def test_activitynet_segments_and_subsets(tmp_path):
    database = {"v_a": {"duration": 30.0, "subset": "training", "annotations": [
        {"segment": [1.5, 8.0], "label": "grow"}, {"segment": [12.0, 20.0], "label": "shrink"}]},
        "v_b": {"duration": 10.0, "subset": "validation", "annotations": []}}
    (tmp_path / "anet.json").write_text(json.dumps({"version": "1.3", "database": database}))
    (video,) = read_activitynet(tmp_path / "anet.json", subset="training")
    assert video.path.endswith("v_a.mp4") and video.duration == 30.0
    assert video.segments == (Segment(1.5, 8.0, "grow"), Segment(12.0, 20.0, "shrink"))
    assert len(read_activitynet(tmp_path / "anet.json")) == 2

    database["v_a"]["annotations"].append({"segment": [25.0, 31.0], "label": "grow"})
    (tmp_path / "bad.json").write_text(json.dumps({"database": database}))
    with pytest.raises(ValueError, match=r"video v_a: segment \[25.0, 31.0\] outside \[0, 30.0\]"):
        read_activitynet(tmp_path / "bad.json")


def test_label_maps_merge_by_normalised_name():
    space = merge_label_maps({"k400": ["abseiling", "playing guitar", "Riding_bike"],
                              "k600": ["playing  Guitar", "riding bike", "tying tie"],
                              "k700": ["tying tie", "abseiling"]})
    assert space.classes == ("abseiling", "playing guitar", "riding bike", "tying tie")
    assert space.maps == {"k400": (0, 1, 2), "k600": (1, 2, 3), "k700": (3, 0)}
    assert space.relabel("k600", [VideoRecord("x.mp4", 2)]) == [VideoRecord("x.mp4", 3)]
    with pytest.raises(ValueError, match="names one class twice"):
        merge_label_maps({"dup": ["Tying tie", "tying_tie"]})
