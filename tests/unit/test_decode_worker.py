"""The decode worker as a plain object (no Ray): bad videos are replaced deterministically."""
import numpy as np
import pytest

from internvideo.data.decode import DecodeOptions
from internvideo.data.lists import VideoRecord, write_video_list
from internvideo.data.pipeline import PretrainClipSpec
from internvideo.data.synthetic import write_synthetic_dataset
from tests.unit.test_decode_backends import write_video
from workers.decode import DataError, DecodeWorker

SPEC = PretrainClipSpec(num_frames=4, sampling_rate=2, input_size=32, patch_size=16, tubelet_size=2,
                        mask_ratio=0.75, seed=0)


@pytest.fixture(scope="module")
def mixed_list(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    ds = write_synthetic_dataset(root / "synth", num_videos=8, num_frames=16, size=32, seed=1)
    good = [line.split()[0] for line in ds.train_list.read_text().splitlines()]
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(b"\x00not a video" * 100)
    records = [VideoRecord(str(ds.root / p), 0) for p in good] + [
        VideoRecord(str(root / "missing.mp4"), 1), VideoRecord(str(root / "empty.mp4"), 1),
        VideoRecord(str(root / "garbage.mp4"), 1)]
    write_video_list(root / "list.txt", records)
    return root / "list.txt", len(good)


def test_bad_videos_are_replaced_and_reported(mixed_list):
    list_path, n_good = mixed_list
    worker = DecodeWorker("job", "pool", str(list_path), None, SPEC)
    bad_ids = [n_good, n_good + 1, n_good + 2]
    batch = worker.decode_batch(epoch=0, sample_ids=[0, *bad_ids])
    assert batch["video"].shape == (4, 4, 32, 32, 3) and batch["video"].dtype == np.uint8
    assert batch["mask"].shape == (4, 8) and batch["mask"].sum(axis=1).tolist() == [6] * 4
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in batch["skipped"]}
    assert reasons["missing.mp4"] == "missing"
    assert reasons["empty.mp4"] == "empty"
    assert reasons["garbage.mp4"] == "corrupt"

    # Another worker (another process, in a real pool) produces the very same batch.
    again = DecodeWorker("job", "pool", str(list_path), None, SPEC).decode_batch(epoch=0, sample_ids=[0, *bad_ids])
    assert np.array_equal(batch["video"], again["video"]) and np.array_equal(batch["mask"], again["mask"])
    assert batch["skipped"] == again["skipped"]


def test_a_list_of_only_bad_videos_fails_clearly(tmp_path):
    write_video_list(tmp_path / "list.txt", [VideoRecord(str(tmp_path / f"gone{i}.mp4"), 0) for i in range(3)])
    worker = DecodeWorker("job", "pool", str(tmp_path / "list.txt"), None, SPEC)
    with pytest.raises(DataError, match="could not be decoded"):
        worker.decode_batch(epoch=0, sample_ids=[0])


def test_a_gif_decord_cannot_open_is_decoded_by_pyav_or_skipped_without_the_fallback(tmp_path):
    write_video(tmp_path / "moving.gif", "gif", "gif", "rgb8")
    write_video(tmp_path / "moving.mp4", "mp4", "libx264", "yuv420p")
    write_video_list(tmp_path / "list.txt", [VideoRecord(str(tmp_path / "moving.gif"), 0),
                                             VideoRecord(str(tmp_path / "moving.mp4"), 0)])
    with_fallback = DecodeWorker("job", "pool", str(tmp_path / "list.txt"), None, SPEC).decode_batch(0, [0])
    assert with_fallback["skipped"] == [] and with_fallback["video"].shape == (1, 4, 32, 32, 3)

    decord_only = PretrainClipSpec(**{**SPEC.__dict__, "decode": DecodeOptions(fallback=False)})
    skipped = DecodeWorker("job", "pool", str(tmp_path / "list.txt"), None, decord_only).decode_batch(0, [0])
    assert {(s["path"].rsplit("/", 1)[-1], s["reason"]) for s in skipped["skipped"]} == {("moving.gif", "corrupt")}
    assert skipped["video"].shape == (1, 4, 32, 32, 3)  # replaced by the mp4
