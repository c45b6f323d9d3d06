"""Temporal localisation on the synthetic untrimmed set, through the real coordinator, against random
proposals.

Three jobs: ``finetune`` of the tiny-cpu VideoMAE classifier on the trimmed synthetic set (the
encoder; ``--encoder PATH`` skips it), ``extract-features`` of the untrimmed videos with it, and
``eval-localization`` naming those features as ``job:<id>``. The baseline scores random proposals
with the same evaluation: per held-out video, 100 segments (as many as the head may keep), each a
uniformly drawn start and length (up to the video's end), a class drawn from the training actions'
frequencies and a uniform score.

    python -m benchmarks.localization [--videos 48] [--steps 600] [--out benchmarks/results/localization_cpu.json]
"""
from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.record import finished, machine, save
from coordinator.client import JobClient, read_config
from coordinator.launch import launch_coordinator
from internvideo.data.formats import read_activitynet
from internvideo.data.synthetic import write_synthetic_dataset, write_untrimmed_dataset
from internvideo.metrics import THUMOS_TIOUS, Segment, detection_map


def random_proposals(annotation: Path, per_video: int, seed: int) -> dict[str, float]:
    """mAP of ``per_video`` random segments per held-out video (see the module)."""
    videos = read_activitynet(annotation)
    labels = [s.label for v in videos if v.subset == "training" for s in v.segments]
    classes = sorted(set(labels))
    frequency = np.array([labels.count(c) for c in classes], dtype=np.float64) / len(labels)
    truth = [Segment(v.path, classes.index(s.label), s.start, s.end)
             for v in videos if v.subset == "validation" for s in v.segments]
    rng = np.random.default_rng(seed)
    proposals = []
    for video in (v for v in videos if v.subset == "validation"):
        for _ in range(per_video):
            start = rng.uniform(0, video.duration)
            end = min(video.duration, start + rng.uniform(0, video.duration))
            proposals.append(Segment(video.path, int(rng.choice(len(classes), p=frequency)), start, end, rng.uniform()))
    return detection_map(truth, proposals, THUMOS_TIOUS)


def run(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="internvideo-localization-"))
    trimmed = write_synthetic_dataset(root / "trimmed", num_videos=256, num_frames=32, size=64, seed=0)
    annotation = write_untrimmed_dataset(root / "untrimmed", num_videos=args.videos, fps=8, size=64, seed=1)
    process, endpoints = launch_coordinator(root / "state", root / "coordinator.log")
    began = time.monotonic()
    try:
        with JobClient(endpoints["grpc"], token=endpoints["token"]) as client:
            encoder = args.encoder
            if encoder is None:
                encoder = finished(client, client.submit("finetune", read_config("tiny-cpu-finetune"), [
                    f"data.train_list={trimmed.train_list}", f"data.val_list={trimmed.val_list}",
                    f"train.steps={args.encoder_steps}", f"train.checkpoint_every={args.encoder_steps}",
                    "regularization.mixup_alpha=0", "regularization.cutmix_alpha=0",
                    "regularization.layer_decay=1.0"], min_workers=2, max_workers=2)).result.final_checkpoint
            extract = client.submit("extract-features", read_config("tiny-cpu-extract"), [
                f"model.init={encoder}", f"data.val_list={annotation}"], min_workers=2, max_workers=2)
            localise = client.submit("eval-localization", read_config("tiny-cpu-localization"), [
                f"data.train_list={annotation}", f"data.val_list={annotation}", f"data.features=job:{extract.job_id}",
                f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}"], min_workers=1, max_workers=1)
            extract, localise = finished(client, extract), finished(client, localise)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)
    seconds = time.monotonic() - began
    found = {k.removeprefix("val_"): v for k, v in localise.result.metrics.items() if k.startswith("val_")}
    baseline = random_proposals(annotation, per_video=100, seed=0)
    return {
        "machine": machine(),
        "config": {"untrimmed_videos": args.videos, "encoder": "given" if args.encoder else
                   f"finetune tiny-cpu-finetune {args.encoder_steps} steps (no mixing) on 192 trimmed videos",
                   "features": "tiny-cpu-extract (8 frames every 2nd, stride 4)",
                   "head": "tiny-cpu-localization", "head_steps": args.steps,
                   "baseline": "100 random proposals per held-out video, classes by training frequency"},
        "seconds": round(seconds, 1),
        "head": found, "random_proposals": baseline,
        "ratio_map_0.5": found["mAP@0.5"] / baseline["mAP@0.5"] if baseline["mAP@0.5"] else None,
        "bar": "mAP@0.5 well above random proposals",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=48, help="untrimmed videos (a quarter held out)")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps of the localisation head")
    parser.add_argument("--encoder-steps", type=int, default=600, help="steps of the encoder's fine-tuning")
    parser.add_argument("--encoder", default=None, help="a classifier checkpoint to extract with (skips fine-tuning)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "localization_cpu.json")
    args = parser.parse_args()
    save(run(args), args.out)


if __name__ == "__main__":
    main()
