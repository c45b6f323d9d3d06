"""pretrain-mm's GradCache step gives the gradient of the loss over the whole global batch, however
the batch is split into micro-batches; micro-batch-local negatives do not."""
from __future__ import annotations

import numpy as np
import torch

from internvideo.tasks.pretrain_mm import PretrainMM, PretrainMMConfig

TINY = {"size": "ViT-B/16", "visual": {"width": 32, "layers": 2, "heads": 2, "patch_size": 8, "image_size": 16,
                                       "num_frames": 2, "global_layers": 1, "output_dim": 16},
        "text": {"width": 32, "layers": 1, "heads": 2, "output_dim": 16, "context_length": 8, "vocab_size": 50},
        "caption": {"layers": 1, "num_queries": 4}, "caption_weight": 0.5}


class Engine:
    """What DeepSpeed does with each micro-batch's loss on one rank: divide by the accumulation,
    accumulate the gradients; the optimizer is not this test's business."""

    def __init__(self, module: torch.nn.Module, accumulation: int) -> None:
        self.module, self.accumulation = module, accumulation

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def step(self) -> None:
        pass


def task(negatives: str = "global") -> PretrainMM:
    config = PretrainMMConfig.model_validate({
        "model": {**TINY, "negatives": negatives},
        "data": {"train_list": "unused.csv", "format": "video_text"},
        "train": {"steps": 1, "global_batch": 8, "micro_batch": 2}})
    return PretrainMM(config)


def batch(size: int = 8) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 48, (size, 8), generator=generator)
    tokens[:, 0], tokens[:, 5], tokens[:, 6:] = 48, 49, 0  # start, end (the largest id), padding
    return {"video": torch.randn(size, 3, 2, 16, 16, generator=generator), "tokens": tokens}


def gradients(step_task: PretrainMM, micro: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    model = step_task.build_model()
    whole = batch()
    micro_batches = [{k: v[i:i + micro] for k, v in whole.items()} for i in range(0, 8, micro)]
    metrics = step_task.train_step(Engine(model, len(micro_batches)), micro_batches)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, metrics


def reference() -> tuple[dict[str, torch.Tensor], float]:
    """The loss over the whole batch in one piece, back-propagated directly."""
    reference_task = task()
    model = reference_task.build_model()
    loss, _ = reference_task.loss(model, batch())  # one micro-batch of 8: its negatives are the whole batch
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, loss.item()


def test_gradcache_gives_the_whole_batch_gradient_at_any_accumulation():
    expected, expected_loss = reference()
    assert expected.keys() >= {"clip.logit_scale", "caption.lm_head.weight", "clip.visual.conv1.weight"}
    for micro in (1, 2, 4, 8):
        got, metrics = gradients(task(), micro)
        assert got.keys() == expected.keys()
        for name in expected:  # float32 summation order apart: within 1e-5 of each tensor's largest entry
            error = (got[name] - expected[name]).abs().max() / expected[name].abs().max().clamp(min=1e-12)
            assert error < 1e-5, f"{name}, micro-batches of {micro}: {error:.2g}"
        assert abs(metrics["loss"] - expected_loss) < 1e-5
        assert set(metrics) == {"loss", "contrastive", "caption", "temperature"}


def test_micro_batch_negatives_give_another_gradient():
    expected, _ = reference()
    got, _ = gradients(task("micro"), micro=2)
    error = (got["clip.visual.proj"] - expected["clip.visual.proj"]).abs().max() / expected["clip.visual.proj"].abs().max()
    assert error > 1e-2


def test_image_text_pairs_are_still_clips_beside_video_text_pairs(tmp_path):
    from internvideo.data.formats import VideoSource
    from internvideo.data.synthetic import write_image, write_synthetic_dataset

    ds = write_synthetic_dataset(tmp_path / "v", num_videos=2, num_frames=16, size=32, seed=0)
    frame = (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)
    write_image(tmp_path / "still.png", frame)
    write_image(tmp_path / "still.jpg", frame)
    (tmp_path / "pairs.csv").write_text(ds.captions_csv.read_text().replace("videos/", f"{ds.root}/videos/")
                                        + f"{tmp_path}/still.png,a noisy picture\n{tmp_path}/still.jpg,the same\n")
    records = VideoSource("video_text", str(tmp_path / "pairs.csv")).read()
    sample = task().sample_fn()
    clips = [sample(records, 0, i) for i in range(len(records))]
    assert {c["video"].shape for c in clips} == {(2, 16, 16, 3)}  # one batch shape for videos and images
    for still in clips[2:]:
        assert np.array_equal(still["video"][0], still["video"][1])  # the image, repeated
    assert not np.array_equal(clips[0]["video"][0], clips[0]["video"][1])  # a video moves


def test_gradcache_draws_each_micro_batch_from_the_seed_it_was_handed_over_with():
    """The trainer seeds the model's draws (dropout, drop path) as it hands each micro-batch over, so that
    a sample's draws do not depend on the world size. GradCache's first pass must take the micro-batches
    as they come: listed all at once, every one of them drew after the last one's seed."""
    step_task = task()
    model = step_task.build_model()
    first_pass_states = []

    class Recording(Engine):
        def __call__(self, *args, **kwargs):
            if not torch.is_grad_enabled():
                first_pass_states.append(torch.get_rng_state())
            return super().__call__(*args, **kwargs)

    whole = batch()

    def feed():
        for micro in range(4):
            torch.manual_seed(100 + micro)
            yield {name: values[2 * micro:2 * micro + 2] for name, values in whole.items()}

    step_task.train_step(Recording(model, 4), feed())
    assert len(first_pass_states) == 4
    for micro, state in enumerate(first_pass_states):
        torch.manual_seed(100 + micro)
        assert torch.equal(state, torch.get_rng_state()), f"micro-batch {micro}"
