"""The decode worker as a plain object (no Ray): its torchdata pipeline, and bad videos replaced
deterministically."""
import numpy as np
import pytest

from internvideo.data import pipeline
from internvideo.data.decode import DecodeOptions
from internvideo.data.formats import VideoSource
from internvideo.data.lists import VideoRecord, write_video_list
from internvideo.data.pipeline import MaskedClips, PretrainClipSpec
from internvideo.data.synthetic import write_synthetic_dataset
from tests.unit.test_decode_backends import write_video
from workers import telemetry
from workers.decode import DataError, Dataset, DecodeWorker

SPEC = PretrainClipSpec(num_frames=4, sampling_rate=2, input_size=32, patch_size=16, tubelet_size=2,
                        mask_ratio=0.75, seed=0)


@pytest.fixture
def open_worker():
    """``open_worker(list_path, spec, threads)``: a DecodeWorker, closed after the test."""
    workers = []

    def make(list_path, spec=SPEC, threads=1):
        data = Dataset(VideoSource("list", str(list_path)), MaskedClips(spec))
        workers.append(DecodeWorker("job", "pool", data, spec.seed, threads=threads))
        return workers[-1]

    yield make
    for worker in workers:
        worker.close()


@pytest.fixture(scope="module")
def mixed_list(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    ds = write_synthetic_dataset(root / "synth", num_videos=8, num_frames=16, size=32, seed=1)
    good = [line.split()[0] for line in ds.train_list.read_text().splitlines()]
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(b"\x00not a video" * 100)
    whole = (ds.root / good[0]).read_bytes()
    (root / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    short = write_synthetic_dataset(root / "short", num_videos=1, num_frames=2, size=32, val_fraction=0.0)
    records = [VideoRecord(str(ds.root / p), 0) for p in good] + [
        VideoRecord(str(root / "missing.mp4"), 1), VideoRecord(str(root / "empty.mp4"), 1),
        VideoRecord(str(root / "garbage.mp4"), 1), VideoRecord(str(root / "truncated.mp4"), 1),
        VideoRecord(str(short.root / "videos/000000.mp4"), 1)]
    write_video_list(root / "list.txt", records)
    return root / "list.txt", len(good)


def test_bad_videos_are_replaced_and_reported(mixed_list, open_worker):
    list_path, n_good = mixed_list
    worker = open_worker(list_path)
    bad_ids = list(range(n_good, n_good + 5))
    batch = worker.decode_batch(epoch=0, sample_ids=[0, *bad_ids])
    assert batch["video"].shape == (6, 4, 32, 32, 3) and batch["video"].dtype == np.uint8
    assert batch["mask"].shape == (6, 8) and batch["mask"].sum(axis=1).tolist() == [6] * 6
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in batch["skipped"]}
    assert reasons == {"missing.mp4": "missing", "empty.mp4": "empty", "garbage.mp4": "corrupt",
                       "truncated.mp4": "corrupt", "000000.mp4": "too_short"}

    # Another worker (another process, in a real pool), with another number of decode threads,
    # produces the very same batch.
    again = open_worker(list_path, threads=3).decode_batch(epoch=0, sample_ids=[0, *bad_ids])
    assert np.array_equal(batch["video"], again["video"]) and np.array_equal(batch["mask"], again["mask"])
    assert batch["skipped"] == again["skipped"]


def test_a_worker_counts_each_bad_video_once_however_often_it_meets_it(mixed_list, open_worker):
    list_path, n_good = mixed_list
    worker = open_worker(list_path)
    bad_ids = list(range(n_good, n_good + 5))

    def counts() -> dict[str, float]:
        return {reason: telemetry.DECODE_ERRORS.labels(job="job", pool="pool", reason=reason)._value.get()
                for reason in ("missing", "empty", "corrupt", "too_short")}

    before = counts()
    for epoch in (0, 1, 2):  # the same bad videos, met again and again
        assert len(worker.decode_batch(epoch=epoch, sample_ids=bad_ids)["skipped"]) >= 5
    met = {reason: counts()[reason] - before[reason] for reason in before}
    assert met == {"missing": 1, "empty": 1, "corrupt": 2, "too_short": 1}


def test_parallel_decode_threads_return_each_request_its_own_clips_in_order(mixed_list, open_worker):
    import concurrent.futures

    list_path, n_good = mixed_list
    serial = open_worker(list_path)
    expected = {sid: serial.decode_batch(1, [sid])["video"][0] for sid in range(n_good)}
    parallel = open_worker(list_path, threads=3)
    requests = [[(i + k) % n_good for k in range(3)] for i in range(n_good)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # concurrent calls, as a Ray actor takes them
        batches = list(pool.map(lambda ids: parallel.decode_batch(1, ids), requests))
    for ids, batch in zip(requests, batches):
        assert batch["sample_ids"] == ids
        for sid, video in zip(ids, batch["video"]):
            assert np.array_equal(video, expected[sid])


def test_a_list_of_only_bad_videos_fails_clearly_and_the_worker_goes_on(tmp_path, open_worker):
    write_video_list(tmp_path / "list.txt", [VideoRecord(str(tmp_path / f"gone{i}.mp4"), 0) for i in range(3)])
    worker = open_worker(tmp_path / "list.txt")
    with pytest.raises(DataError, match="could not be decoded"):
        worker.decode_batch(epoch=0, sample_ids=[0])
    with pytest.raises(DataError, match="could not be decoded"):  # the pipeline survived the first
        worker.decode_batch(epoch=0, sample_ids=[1, 2])
    with pytest.raises(ValueError, match="at least one sample"):  # nothing to wait for: refused, not hung
        worker.decode_batch(epoch=0, sample_ids=[])


def test_a_gif_decord_cannot_open_is_decoded_by_pyav_or_skipped_without_the_fallback(tmp_path, open_worker):
    write_video(tmp_path / "moving.gif", "gif", "gif", "rgb8")
    write_video(tmp_path / "moving.mp4", "mp4", "libx264", "yuv420p")
    write_video_list(tmp_path / "list.txt", [VideoRecord(str(tmp_path / "moving.gif"), 0),
                                             VideoRecord(str(tmp_path / "moving.mp4"), 0)])
    with_fallback = open_worker(tmp_path / "list.txt").decode_batch(0, [0])
    assert with_fallback["skipped"] == [] and with_fallback["video"].shape == (1, 4, 32, 32, 3)

    decord_only = PretrainClipSpec(**{**SPEC.__dict__, "decode": DecodeOptions(fallback=False)})
    skipped = open_worker(tmp_path / "list.txt", decord_only).decode_batch(0, [0])
    assert {(s["path"].rsplit("/", 1)[-1], s["reason"]) for s in skipped["skipped"]} == {("moving.gif", "corrupt")}
    assert skipped["video"].shape == (1, 4, 32, 32, 3)  # replaced by the mp4


def test_repeated_sampling_decodes_each_video_once_and_cuts_its_clips_from_it(mixed_list, open_worker, monkeypatch):
    """VideoMAE v2's repeated sampling: each sample asked for is one decode and ``clips_per_sample`` rows,
    each row a clip of the same frames with its own crop and mask, the first the sample's usual clip."""
    list_path, _ = mixed_list
    decodes = []
    real_read = pipeline.read_clip
    monkeypatch.setattr(pipeline, "read_clip", lambda path, *args: decodes.append(path) or real_read(path, *args))
    single = open_worker(list_path).decode_batch(epoch=1, sample_ids=[2, 5])
    decodes.clear()
    data = Dataset(VideoSource("list", str(list_path)), MaskedClips(SPEC, clips_per_sample=3))
    worker = DecodeWorker("job", "pool", data, SPEC.seed)
    try:
        frames_before = telemetry.DECODE_FRAMES.labels(job="job", pool="pool")._value.get()
        batch = worker.decode_batch(epoch=1, sample_ids=[2, 5])
        frames_after = telemetry.DECODE_FRAMES.labels(job="job", pool="pool")._value.get()
    finally:
        worker.close()
    assert len(decodes) == 2  # one decode per video, not per clip
    assert frames_after - frames_before == 2 * SPEC.num_frames
    assert batch["video"].shape == (6, 4, 32, 32, 3) and batch["mask"].shape == (6, 8)
    assert batch["sample_ids"] == [2, 2, 2, 5, 5, 5] and batch["label"].shape == (6,)
    np.testing.assert_array_equal(batch["video"][[0, 3]], single["video"])
    np.testing.assert_array_equal(batch["mask"][[0, 3]], single["mask"])
    # The other clips of a video differ from its first in their crop or their mask.
    for first, other in [(0, 1), (0, 2), (3, 4), (3, 5)]:
        assert (not np.array_equal(batch["video"][first], batch["video"][other])
                or not np.array_equal(batch["mask"][first], batch["mask"][other]))
