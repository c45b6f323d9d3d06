"""Does every stage learn? InternVideo's chain on the synthetic set, through the real coordinator.

Runs the ``tiny-cpu`` recipe with longer stages (``--steps``) and held-out validation, then two
fine-tuning jobs that differ only in their start — the ``pretrain-mae`` job's checkpoint, or
random weights — and records, against the issue's bars:

- ``pretrain-mm``: zero-shot text→video R@1 on the held-out clips, against chance (1 / clips);
- ``post-pretrain`` of each encoder: held-out top-1;
- ``interaction``: held-out top-1 against the better of the two post-pretrained encoders alone;
- ``finetune`` from the masked pretraining against the same fine-tuning from scratch, with two
  recipes (``FINETUNE_RECIPES``);
- every evaluation kind on what the recipe trained: its own two evaluation stages (multi-view
  recognition of ``post-mae``, retrieval with ``mm``), and zero-shot classification and multiple
  choice with ``mm``, linear probes of the ``mae`` encoder and of a random one
  (``EVALUATIONS_CONFIG``).

Usage: python -m benchmarks.learning [--steps 300] [--classifier-steps 2000] [--finetune-steps 1200]
       [--videos 512] [--out benchmarks/results/learning_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import signal
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.record import finished, machine, save
from coordinator.client import JobClient, read_config, read_recipe
from coordinator.demo import EVAL_STAGES, STAGES, data_overrides
from coordinator.launch import launch_coordinator
from internvideo.data.lists import read_video_list
from internvideo.data.synthetic import ACTION_PHRASES, CLASSES, write_synthetic_dataset
from internvideo.tasks.classification import ClassifierModel, build_classifier
from protos.internvideo.v1 import jobs_pb2 as pb

# The fine-tuning comparison runs twice: VideoMAE's recipe (the finetune kind's defaults), and the same
# without Mixup / CutMix and layer-wise decay (what post-pretraining uses).
FINETUNE_RECIPES = {
    "VideoMAE recipe": [],
    "no mixing, no layer decay": ["regularization.mixup_alpha=0", "regularization.cutmix_alpha=0",
                                  "regularization.layer_decay=1.0"],
}
# The evaluations beside the recipe's own, by name: how each was configured.
EVALUATIONS_CONFIG = {
    "zero-shot (mm)": "tiny-cpu-eval-mm; class names: the captions' action phrases; templates 'a square {}', "
                      "'a disc {}'",
    "multiple choice (mm)": "tiny-cpu-eval-mm; each held-out caption among 4 made with other actions' phrases",
    "linear probe (mae)": "tiny-cpu-finetune encoder from pretrain-mae, frozen; linear head, --probe-steps steps, lr 1e-2",
    "linear probe (random encoder)": "the same on a randomly initialised encoder",
}


def evaluate_checkpoints(client: JobClient, dataset, jobs: dict[str, pb.Job], args: argparse.Namespace,
                         root: Path) -> dict[str, pb.Job]:
    """The evaluations the recipe does not run, of the checkpoints it trained."""
    classes = root / "action_phrases.txt"
    classes.write_text("".join(f"{ACTION_PHRASES[c]}\n" for c in CLASSES))
    mm = f"model.init=job:{jobs['mm'].job_id}"
    submitted = {
        "zero-shot (mm)": client.submit("eval-zero-shot", read_config("tiny-cpu-eval-mm"), [
            mm, f"data.val_list={dataset.val_list}", f"data.classes={classes}",
            "templates=['a square {}', 'a disc {}']"], min_workers=2, max_workers=2),
        "multiple choice (mm)": client.submit("eval-multiple-choice", read_config("tiny-cpu-eval-mm"), [
            mm, f"data.val_list={dataset.val_multiple_choice}", "data.format=multiple_choice"],
            min_workers=2, max_workers=2),
    }
    for name, init in (("linear probe (mae)", [f"model.init=job:{jobs['mae'].job_id}"]),
                       ("linear probe (random encoder)", [f"model.init={random_encoder(root)}"])):
        submitted[name] = client.submit("linear-probe", read_config("tiny-cpu-finetune"), [
            f"data.train_list={dataset.train_list}", f"data.val_list={dataset.val_list}", *init, "train.lr=1e-2",
            f"train.steps={args.probe_steps}", f"train.checkpoint_every={args.probe_steps}"],
            min_workers=2, max_workers=2)
    return {name: finished(client, job) for name, job in submitted.items()}


def random_encoder(root: Path) -> Path:
    model = ClassifierModel.model_validate(yaml.safe_load(read_config("tiny-cpu-finetune"))["model"])
    torch.manual_seed(0)
    path = root / "random_encoder.pt"
    torch.save(build_classifier(model, drop_path=0.0).state_dict(), path)
    return path


def results(job: pb.Job) -> dict[str, float]:
    """An evaluation's metrics, or a training job's validation."""
    details = json.loads(job.result.details_json) if job.result.details_json else {}
    return details.get("metrics") or {k: v for k, v in job.result.metrics.items() if k.startswith("val_")}


def stage_steps(args: argparse.Namespace, stage: str) -> int:
    return args.steps if stage in ("mae", "mm") else args.classifier_steps


def run(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="internvideo-learning-"))
    dataset = write_synthetic_dataset(root / "data", num_videos=args.videos, num_frames=32, size=64, seed=0)
    held_out = len(read_video_list(dataset.val_list))
    process, endpoints = launch_coordinator(root / "state", root / "coordinator.log")
    try:
        with JobClient(endpoints["grpc"], token=endpoints["token"]) as client:
            began = time.monotonic()
            steps = [f"{s}:{k}" for s in STAGES for n in [stage_steps(args, s)]
                     for k in (f"train.steps={n}", f"train.checkpoint_every={n}")]
            jobs = {j.name.split("/")[1]: j for j in client.submit_recipe(
                read_recipe("tiny-cpu"), [*data_overrides(dataset), *steps])}
            ended = {name: finished(client, job) for name, job in jobs.items()}
            evaluations = evaluate_checkpoints(client, dataset, jobs, args, root)
            finetune: dict[str, dict[str, pb.Job]] = {}
            for recipe, regularization in FINETUNE_RECIPES.items():
                for start, init in (("from pretrain-mae", [f"model.init=job:{jobs['mae'].job_id}"]),
                                    ("from scratch", [])):
                    job = client.submit("finetune", read_config("tiny-cpu-finetune"), [
                        f"data.train_list={dataset.train_list}", f"data.val_list={dataset.val_list}",
                        f"train.steps={args.finetune_steps}", f"train.checkpoint_every={args.finetune_steps}",
                        *regularization, *init],
                        min_workers=2, max_workers=2, name=f"finetune {start} ({recipe})")
                    finetune.setdefault(recipe, {})[start] = finished(client, job)
            seconds = time.monotonic() - began
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)

    def val(job: pb.Job, name: str) -> float:
        return job.result.metrics[f"val_{name}"]

    r1, chance = val(ended["mm"], "t2v_r1"), 100.0 / held_out
    best_alone = max(val(ended["post-mae"], "top1"), val(ended["post-mm"], "top1"))
    return {
        "machine": machine(),
        "config": {"recipe": "tiny-cpu", "pretraining_steps": args.steps, "classifier_steps": args.classifier_steps,
                   "finetune_steps": args.finetune_steps, "probe_steps": args.probe_steps, "videos": args.videos,
                   "held_out_videos": held_out, "workers_per_job": 2},
        "seconds": round(seconds, 1),
        "pretrain_mm": {"val_t2v_r1": r1, "chance": chance, "times_chance": r1 / chance,
                        "val_t2v_r5": val(ended["mm"], "t2v_r5"), "bar": "R@1 >= 5 x chance",
                        "met": r1 >= 5 * chance},
        "post_pretrain": {"videomae_top1": val(ended["post-mae"], "top1"),
                          "multimodal_top1": val(ended["post-mm"], "top1"), "bar": "top-1 >= 0.90",
                          "met": min(val(ended["post-mae"], "top1"), val(ended["post-mm"], "top1")) >= 0.9},
        "interaction": {"top1": val(ended["interaction"], "top1"), "best_encoder_alone": best_alone,
                        "bar": "top-1 >= the better encoder alone",
                        "met": val(ended["interaction"], "top1") >= best_alone},
        "evaluations": {name: {"kind": job.kind, "config": EVALUATIONS_CONFIG.get(name, "the recipe's stage"),
                               **results(job)} for name, job in {**{s: ended[s] for s in EVAL_STAGES},
                                                                 **evaluations}.items()},
        "finetune": {recipe: {start: {"top1": val(job, "top1"), "top5": val(job, "top5"),
                                      "final_loss": job.result.metrics["final_loss"]} for start, job in pair.items()}
                     for recipe, pair in finetune.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of the two pretraining stages")
    parser.add_argument("--classifier-steps", type=int, default=2000,
                        help="optimizer steps of post-pretraining and interaction")
    parser.add_argument("--finetune-steps", type=int, default=1200, help="optimizer steps of each fine-tuning job")
    parser.add_argument("--probe-steps", type=int, default=600, help="optimizer steps of each linear probe")
    parser.add_argument("--videos", type=int, default=512, help="synthetic videos (a quarter held out)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "learning_cpu.json")
    args = parser.parse_args()
    save(run(args), args.out)


if __name__ == "__main__":
    main()
