"""What repeated sampling (``data.repeated_sampling``: several clips, each with its own crop and tube
mask, cut from one decoded span, as VideoMAE v2 does) does to learning and to the cost of a clip, on
the synthetic data: the same ``pretrain-mae`` job (tiny-cpu, the same steps) at 1, 2 and 4 clips a video
with the same global batch of clips (fewer videos a step), and at 2 clips a video with twice the clips
(the same videos a step, as VideoMAE v2 runs it), through the coordinator.

Learning is measured as the reconstruction loss of the final weights on held-out videos (one clip and
mask each, the same for every run), computed here from each job's checkpoint; cost as the job's
clips/s, data-wait fraction and the frames its decode workers decoded per clip.

    python -m benchmarks.repeated_sampling --out benchmarks/results/cpu_repeated_sampling.json
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks import record
from benchmarks.record import finished
from coordinator.client import JobClient, read_config
from coordinator.launch import launch_coordinator
from coordinator.submission import validate_submission
from internvideo.data.lists import read_video_list
from internvideo.data.pipeline import MaskedClips
from internvideo.data.synthetic import write_synthetic_dataset
from internvideo.tasks import TaskRef


def held_out_loss(task, checkpoint: str, val_list: Path, micro_batch: int = 16) -> float:
    """Mean reconstruction loss of ``checkpoint``'s weights on every held-out video: its clip and mask
    of epoch 0 (one clip a video, whatever the job's repeats), in eval mode."""
    (states,) = Path(checkpoint).glob("mp_rank_00_model_states.pt")
    model = task.build_model()
    model.load_state_dict(torch.load(states, map_location="cpu", weights_only=False)["module"])
    model.eval()
    records, sample = read_video_list(val_list), MaskedClips(task.config.clip_spec())
    losses = []
    with torch.no_grad():
        for first in range(0, len(records), micro_batch):
            arrays = [sample(records, 0, i) for i in range(first, min(first + micro_batch, len(records)))]
            batch = {name: np.stack([a[name] for a in arrays]) for name in arrays[0]}
            loss, _ = task.loss(model, task.to_tensors(batch, torch.device("cpu")))
            losses += [loss.item()] * len(arrays)
    return statistics.fmean(losses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", nargs="+", default=["1x16", "2x16", "4x16", "2x32"],
                        help="REPEATSxGLOBAL_BATCH: clips a video and clips a step (micro-batches of a quarter)")
    parser.add_argument("--videos", type=int, default=256, help="synthetic videos (a quarter held out)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="internvideo-repeats-"))
    data = write_synthetic_dataset(root / "data", num_videos=args.videos, num_frames=32, size=64, seed=0)
    common = [f"data.train_list={data.train_list}", f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}"]
    process, endpoints = launch_coordinator(root / "state", root / "coordinator.log")
    runs = {}
    try:
        with JobClient(endpoints["grpc"], token=endpoints["token"]) as client:
            for run in args.runs:
                repeats, global_batch = map(int, run.split("x"))
                overrides = [*common, f"data.repeated_sampling={repeats}", f"train.global_batch={global_batch}",
                             f"train.micro_batch={global_batch // 4}"]
                job = finished(client, client.submit("pretrain-mae", read_config("tiny-cpu"), overrides,
                                                     min_workers=2, max_workers=2))
                spec = validate_submission(kind="pretrain-mae", config_text=read_config("tiny-cpu"),
                                           overrides=overrides, min_workers=2, max_workers=2)
                task = TaskRef.of("pretrain-mae", spec.config).load()
                metrics = job.result.metrics
                runs[run] = {
                    "held_out_loss": held_out_loss(task, job.result.final_checkpoint, data.val_list),
                    "first_loss": metrics["first_loss"], "final_loss": metrics["final_loss"],
                    "clips_per_second": metrics["clips_per_second"],
                    "data_wait_fraction": metrics["data_wait_fraction"],
                    "videos_decoded": args.steps * global_batch // repeats}
    finally:
        process.terminate()
        process.wait(90)
    record.save({"config": {"kind": "pretrain-mae", "preset": "tiny-cpu", "steps": args.steps, "workers": 2,
                            "videos": args.videos, "held_out": len(read_video_list(data.val_list))},
                 "machine": record.machine(), "runs": runs}, args.out or Path("/dev/null"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
