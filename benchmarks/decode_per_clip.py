"""What one clip costs a decode core: clips/s of one thread running the sample function a pretraining
job's decode workers run (``MaskedClips``) at 1, 2 and 4 clips per decoded video
(``data.repeated_sampling``), and how many frames each backend decodes for one clip.

VideoMAE's clip (16 frames every 4th, 224², mask 0.9) from 320 × 256 H.264 videos of 300 frames
(12 s at 25 fps, Kinetics-like) written with x264's default GOP (a keyframe every 250 frames), so a
clip's frames are on average far from the keyframe its decode starts at.

Frames decoded per clip: PyAV's path is counted (every frame its decoder returns); decord decodes
inside C++, so its figure is its clip time over its time per frame when decoding a whole video in
order — an equivalent, not a count.

This process sets the C allocator's policy a decode worker sets (``keep_freed_memory``).

``--peer TREE``: also measure one clip a video (``--peer-repeats``: at each of these clips a video) with
the code of another checkout (a git worktree of an earlier commit), in the same run and in turns with
ours; each of our settings is compared with the peer's at one clip a video and at its own.

    python -m benchmarks.decode_per_clip --peer /tmp/peer --out benchmarks/results/cpu_decode_per_clip.json
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import record
from benchmarks.loaders import write_videos
from internvideo.data import decode
from internvideo.data.formats import VideoSource
from internvideo.data.lists import read_video_list
from internvideo.data.pipeline import MaskedClips, PretrainClipSpec, sample_rng
from internvideo.data.sampling import dense_indices

SPEC = PretrainClipSpec(num_frames=16, sampling_rate=4, input_size=224, patch_size=16, tubelet_size=2,
                        mask_ratio=0.9, seed=0)


def clips_per_second(list_path: Path, videos: int, repeats: int, clips: int, micro: int) -> float:
    """One thread running the sample function a decode worker runs, a micro-batch of ``micro`` clips at
    a time (stacked, as a worker hands them over): clips/s over ``clips`` clips, the videos in turn, a new
    epoch each pass, so no clip repeats. No Ray: it runs on the GPU machine too."""
    # One clip a video in the form every version of MaskedClips takes (the peer's has no repeats).
    sample = MaskedClips(SPEC, clips_per_sample=repeats) if repeats > 1 else MaskedClips(SPEC)
    records = VideoSource("list", str(list_path)).read()
    join = np.stack if repeats == 1 else np.concatenate
    per_batch = micro // repeats

    def batch(first: int) -> int:
        arrays = [sample(records, i // videos, i % videos) for i in range(first, first + per_batch)]
        return len(join([a["video"] for a in arrays]))

    batch(0)  # warm: imports, the header cache
    start, done, first = time.perf_counter(), 0, per_batch
    while done < clips:
        done += batch(first)
        first += per_batch
    return done / (time.perf_counter() - start)


def peer_clips_per_second(tree: Path, repeats: int, args: argparse.Namespace) -> float:
    """``clips_per_second`` at ``repeats`` clips a video, run by this file in a process of its own with
    ``tree``'s packages first (then the caller's path: a GPU machine's carried wheels)."""
    out = subprocess.run([sys.executable, __file__, "--rate-only", "--repeats", str(repeats), "--videos",
                          str(args.videos), "--video-frames", str(args.video_frames), "--clips", str(args.clips),
                          "--micro", str(args.micro), "--data-dir", str(args.data_dir)],
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])},
                         cwd=tree, capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def frames_decoded_pyav(path: str, indices: np.ndarray) -> int:
    """Frames PyAV's decoder returns for one clip on the path ``read_clip`` takes."""
    import av

    counted = 0
    real_decode = av.container.InputContainer.decode

    def counting(self, *args, **kwargs):
        nonlocal counted
        for frame in real_decode(self, *args, **kwargs):
            counted += 1
            yield frame

    av.container.InputContainer.decode = counting
    try:
        decode.read_clip(path, lambda n: indices, decode.DecodeOptions(backend="pyav", fallback=False))
    finally:
        av.container.InputContainer.decode = real_decode
    return counted


def decord_frame_equivalents(path: str, indices: list[np.ndarray]) -> float:
    """decord's mean clip time over its time per frame decoding the whole video in order."""
    from decord import VideoReader

    reader = VideoReader(path, num_threads=1)
    n = len(reader)
    began = time.perf_counter()
    for i in range(n):
        reader[i]
    per_frame = (time.perf_counter() - began) / n
    times = []
    for clip in indices:
        began = time.perf_counter()
        decode.read_clip(path, lambda _: clip, decode.DecodeOptions())
        times.append(time.perf_counter() - began)
    return statistics.fmean(times) / per_frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--video-frames", type=int, default=300)
    parser.add_argument("--clips", type=int, default=96, help="timed clips per setting")
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "internvideo-bench-300f")
    parser.add_argument("--peer", type=Path, help="a checkout whose one-clip-a-video rate is measured too")
    parser.add_argument("--peer-repeats", type=int, nargs="+", default=[1], help="the peer's clips a video")
    parser.add_argument("--rate-only", action="store_true", help=argparse.SUPPRESS)  # the peer's run
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(1)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    list_path = write_videos(args.data_dir, args.videos, 256, 320, args.video_frames, fps=25)
    if args.rate_only:  # the peer's run: its own code decides its allocator's policy
        print(clips_per_second(list_path, args.videos, args.repeats[0], args.clips, args.micro))
        return
    from internvideo.data.allocator import keep_freed_memory  # here: a peer's packages may predate it

    keep_freed_memory()
    peer_repeats = args.peer_repeats if args.peer else []
    rates = record.in_turns(
        {**{str(r): functools.partial(clips_per_second, list_path, args.videos, r, args.clips, args.micro)
            for r in args.repeats},
         **{f"peer {r}": functools.partial(peer_clips_per_second, args.peer, r, args) for r in peer_repeats}},
        args.rounds)
    median = {name: statistics.median(v) for name, v in rates.items()}
    base = median["peer 1" if args.peer else str(args.repeats[0])]
    paths = [r.path for r in read_video_list(list_path)][:8]
    clips = [dense_indices(args.video_frames, SPEC.num_frames, SPEC.sampling_rate, sample_rng(0, 0, i))
             for i in range(len(paths))]
    pyav = [frames_decoded_pyav(p, c) for p, c in zip(paths, clips)]
    decord = [decord_frame_equivalents(p, [c]) for p, c in zip(paths, clips)]
    span = SPEC.num_frames * SPEC.sampling_rate
    record.save({
        "config": {"clip": f"{SPEC.num_frames}x{SPEC.sampling_rate} at {SPEC.input_size}", "video": "320x256 H.264",
                   "video_frames": args.video_frames, "videos": args.videos, "micro_batch": args.micro,
                   "decode_threads": 1, "timed_clips": args.clips, "rounds": args.rounds},
        "machine": record.machine(),
        "peer": str(args.peer or ""),
        "clips_per_second_per_core": median,
        "rounds": rates,
        "over_the_peer" if args.peer else "over_one_clip_per_video": {name: rate / base for name, rate in median.items()},
        "over_the_peer_at_the_same_clips_a_video": {str(r): median[str(r)] / median[f"peer {r}"]
                                                    for r in peer_repeats if str(r) in median},
        "frames_decoded_per_clip": {"pyav_counted": statistics.fmean(pyav),
                                    "decord_equivalent": statistics.fmean(decord),
                                    "frames_in_the_clip": SPEC.num_frames, "frames_the_clip_spans": span},
    }, args.out or Path("/dev/null"))


if __name__ == "__main__":
    main()
