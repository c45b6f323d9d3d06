"""``pretrain-mm``: video–language pretraining — InternVideo's multimodal branch ("align before fuse").

CLIP's image tower made a video encoder by UniFormerV2's global UniBlocks, CLIP's text tower, and
a CoCa-style caption decoder on the video tokens. The loss is symmetric InfoNCE between clips and
their captions with CLIP's learnable temperature, plus ``caption_weight`` × captioning.

The negatives of every clip are the captions of the whole global batch, at any world size and
any gradient accumulation: a step is GradCache's two passes. First every micro-batch of this
rank is embedded without a graph, the embeddings of all ranks are gathered, and the global loss's
gradient on each embedding is computed; then each micro-batch is run again with a graph and
back-propagates those gradients (``embedding_gradients``). A step therefore costs one extra
forward pass, and its loss — hence a run rescaled mid-way — does not depend on how the global
batch is split. ``negatives: micro`` (the naive loss over each micro-batch, gathered across ranks
only) exists to show the difference.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from internvideo.data.lists import VideoRecord
from internvideo.data.pipeline import ClipSpec, load_clip, load_test_clip, sample_rng
from internvideo.data.transforms import normalize_clips
from internvideo.metrics import retrieval_metrics
from internvideo.models.caption import CaptionDecoder, CaptionDecoderConfig
from internvideo.models.clip import UNIBLOCK_KEYS, VideoCLIP, VideoCLIPConfig, video_clip_config
from internvideo.models.contrastive import contrastive_loss, embedding_gradients
from internvideo.models.tokenizer import default_tokenizer
from internvideo.models.vit import transformer_flops
from internvideo.tasks import register_task
from internvideo.tasks.base import StepEngine, Task, array_to_tensor, check_weights_path, load_initial_weights
from internvideo.tasks.common import ConfigError, JobConfig, Strict
from internvideo.tasks.paths import InputPath


class MultimodalModelSection(Strict):
    """A published CLIP size plus overrides of its towers (``visual``: num_frames, image_size,
    global_layers, local_mhra, drop_path_rate, ...; ``text``: any CLIPTextConfig field) and of the
    caption decoder (width, layers, heads, num_queries; defaults follow the text tower)."""

    size: Literal["ViT-B/16", "ViT-L/14"] = "ViT-B/16"
    visual: dict[str, Any] = Field(default_factory=dict)
    text: dict[str, Any] = Field(default_factory=dict)
    caption: dict[str, Any] = Field(default_factory=dict)
    caption_weight: float = Field(1.0, ge=0.0)  # 0: no caption decoder
    negatives: Literal["global", "micro"] = "global"  # micro: only to show what global negatives fix
    init: InputPath | None = None  # a CLIP checkpoint (OpenAI, Hugging Face or InternVideo layout)

    def clip_config(self) -> VideoCLIPConfig:
        return video_clip_config(self.size, visual=self.visual, text=self.text)

    def caption_config(self) -> CaptionDecoderConfig | None:
        if not self.caption_weight:
            return None
        clip = self.clip_config()
        text = clip.text
        defaults = {"width": text.width, "layers": 4, "heads": text.heads, "visual_dim": clip.visual.width,
                    "vocab_size": text.vocab_size, "context_length": text.context_length}
        return CaptionDecoderConfig(**{**defaults, **self.caption})

    @model_validator(mode="after")
    def _resolvable(self) -> "MultimodalModelSection":
        self.caption_config()  # builds the CLIP config too: a bad size or override fails at submit
        return self


class PretrainMMConfig(JobConfig):
    model: MultimodalModelSection = Field(default_factory=MultimodalModelSection)


class VideoLanguageModel(nn.Module):
    """The video–text encoders and the caption decoder, behind one forward (so an engine that
    gathers partitioned parameters around ``forward`` sees every parameter used)."""

    def __init__(self, clip: VideoCLIPConfig, caption: CaptionDecoderConfig | None) -> None:
        super().__init__()
        self.clip = VideoCLIP(clip)
        self.caption = CaptionDecoder(caption) if caption is not None else None

    def forward(self, video: Tensor, tokens: Tensor, with_caption: bool = True
                ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Normalised video and text embeddings (B, D), the temperature, and each caption's loss
        (B,) given its clip (None without a decoder or ``with_caption``)."""
        embedding, visual_tokens = self.clip.visual.encode(video)
        text = self.clip.encode_text(tokens)
        captions = (self.caption.loss_per_caption(visual_tokens, tokens)
                    if self.caption is not None and with_caption else None)
        return F.normalize(embedding, dim=-1), text, self.clip.temperature(), captions


@dataclass(frozen=True)
class CaptionedClips:
    """The sample of video–text pretraining: ``video`` uint8 (T, S, S, 3) and ``tokens`` int64
    (context_length,), one of the video's captions drawn from the sample's generator."""

    spec: ClipSpec
    context_length: int

    def __call__(self, records: Sequence[VideoRecord], epoch: int, sample_id: int) -> dict[str, np.ndarray]:
        rng = sample_rng(self.spec.seed, epoch, sample_id)
        record = records[sample_id]
        video = load_clip(record, self.spec, rng)
        caption = record.captions[int(rng.integers(len(record.captions)))]
        return {"video": video, "tokens": default_tokenizer().tokenize(caption, self.context_length)[0].numpy()}


@dataclass(frozen=True)
class CaptionedTestClips:
    """A held-out pair: the video's single test view and its first caption."""

    spec: ClipSpec
    context_length: int

    def __call__(self, records: Sequence[VideoRecord], epoch: int, sample_id: int) -> dict[str, np.ndarray]:
        record = records[sample_id]
        return {"video": load_test_clip(record, self.spec),
                "tokens": default_tokenizer().tokenize(record.captions[0], self.context_length)[0].numpy()}


@register_task
class PretrainMM(Task[PretrainMMConfig]):
    """Validation: zero-shot text→video retrieval among the held-out videos (R@1/5/10 in percent,
    median rank), each video's first caption as its query, and video→text R@1."""

    kind = "pretrain-mm"
    encoder = "uniformerv2-clip"
    config_type = PretrainMMConfig
    validates = True

    def check_inputs(self) -> None:
        super().check_inputs()
        if self.config.model.init is not None:
            check_weights_path("model.init", self.config.model.init)

    def check_records(self, records: Sequence[VideoRecord]) -> None:
        if not all(r.captions for r in records):
            raise ConfigError("data.format", f"{self.kind} trains on captions: use format video_text "
                                             f"(got {self.config.data.format!r}, whose records have none)")

    def build_model(self) -> VideoLanguageModel:
        torch.manual_seed(self.config.train.seed)  # identical initial weights on every rank and every run
        model = VideoLanguageModel(self.config.model.clip_config(), self.config.model.caption_config())
        if self.config.model.init is not None:
            # A CLIP checkpoint has no UniBlocks (nor local MHRA): those start from their zero-init.
            load_initial_weights(model.clip, self.config.model.init, allow_missing=UNIBLOCK_KEYS)
        return model

    def flops_per_sample(self, model: nn.Module) -> float:
        """Forward + backward matmul FLOPs of one clip and caption: every frame through the image
        tower, the caption through the text tower and the decoder (cross-attention to its queries
        and the vocabulary projection included). GradCache's extra forward is not counted: it is
        recomputation, not model FLOPs."""
        clip, caption = self.config.model.clip_config(), self.config.model.caption_config()
        v, t = clip.visual, clip.text
        flops = v.num_frames * transformer_flops(v.width, v.layers, v.grid**2 + 1, v.mlp_ratio)
        flops += transformer_flops(t.width, t.layers, t.context_length, t.mlp_ratio)
        if caption is not None:
            n, q = caption.context_length, caption.num_queries
            flops += transformer_flops(caption.width, caption.layers, n, caption.mlp_ratio)
            flops += caption.layers * (4 * n * q * caption.width + 4 * q * caption.width * caption.width)
            flops += 2 * n * caption.width * caption.vocab_size
        return 3 * flops

    def _clip_spec(self) -> ClipSpec:
        visual, data = self.config.model.clip_config().visual, self.config.data
        return ClipSpec(num_frames=visual.num_frames, sampling_rate=data.sampling_rate, input_size=visual.image_size,
                        seed=self.config.train.seed, decode=data.decode_options(visual.image_size),
                        sampler=data.sampler, crop=data.crop, flip=data.flip)

    def sample_fn(self) -> CaptionedClips:
        return CaptionedClips(self._clip_spec(), self.config.model.clip_config().text.context_length)

    def val_sample_fn(self) -> CaptionedTestClips:
        return CaptionedTestClips(self._clip_spec(), self.config.model.clip_config().text.context_length)

    def predict(self, model: StepEngine | nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        video, text, _, _ = model(batch["video"], batch["tokens"], with_caption=False)
        return {"video": video.float(), "text": text.float()}

    def validation_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        video, text = torch.from_numpy(outputs["video"]), torch.from_numpy(outputs["text"])
        metrics = retrieval_metrics(text @ video.t(), torch.arange(len(video)))
        return {k: metrics[k] for k in ("t2v_r1", "t2v_r5", "t2v_r10", "t2v_medr", "v2t_r1")}

    def to_tensors(self, batch: dict[str, np.ndarray], device: torch.device,
                   dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        video = array_to_tensor(batch["video"], device)
        return {"video": normalize_clips(video, self.config.data.normalization).to(dtype),
                "tokens": array_to_tensor(batch["tokens"], device)}

    def loss(self, model: StepEngine | nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The naive loss (``negatives: micro``): InfoNCE within the micro-batch, gathered over ranks."""
        video, text, temperature, captions = model(batch["video"], batch["tokens"])
        contrastive = contrastive_loss(video, text, temperature)
        return self._total(contrastive, captions, temperature)

    def _total(self, contrastive: Tensor, captions: Tensor | None, temperature: Tensor
               ) -> tuple[Tensor, dict[str, Tensor]]:
        caption = captions.mean() if captions is not None else torch.zeros_like(contrastive)
        total = contrastive + self.config.model.caption_weight * caption
        return total, {"contrastive": contrastive.detach(), "caption": caption.detach(),
                       "temperature": temperature.detach()}

    def train_step(self, engine: StepEngine, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        if self.config.model.negatives == "micro":
            return super().train_step(engine, batches)
        # GradCache holds this rank's whole share of the global batch. Taken one at a time, not listed
        # at once: the feed seeds a micro-batch's draws (dropout, drop path) as it hands it over.
        held, rng_states, videos, texts = [], [], [], []
        with torch.no_grad():  # pass 1: embeddings only
            for batch in batches:
                held.append(batch)
                rng_states.append(_rng_state())
                video, text, temperature, _ = engine(batch["video"], batch["tokens"], with_caption=False)
                videos.append(video)
                texts.append(text)
        contrastive, g_video, g_text, g_temperature = embedding_gradients(torch.cat(videos), torch.cat(texts),
                                                                          temperature)
        # The engine divides each micro-batch's loss by the accumulation and averages gradients over
        # ranks; the surrogate's gradients are already the global loss's shares, so undo both.
        world = dist.get_world_size() if dist.is_initialized() else 1
        scale = world * len(held)
        sizes = [len(v) for v in videos]
        caption_losses = []
        for micro, (batch, gv, gt) in enumerate(zip(held, g_video.split(sizes), g_text.split(sizes))):
            _set_rng_state(rng_states[micro])  # the same dropout / drop path as pass 1
            video, text, temperature, captions = engine(batch["video"], batch["tokens"])
            surrogate = (video * gv).sum() + (text * gt).sum()
            if micro == 0:  # every rank computed the temperature's whole gradient; ranks are averaged
                surrogate = surrogate + temperature * g_temperature / world
            loss = scale * surrogate
            if captions is not None:
                # Each micro-batch's mean caption loss, divided by the accumulation and averaged over
                # ranks by the engine: the mean over every caption of the global batch.
                loss = loss + self.config.model.caption_weight * captions.mean()
                caption_losses.append(captions.detach())
            engine.backward(loss)
            engine.step()
        captions = torch.cat(caption_losses) if caption_losses else None
        total, metrics = self._total(contrastive, captions, temperature)
        values = torch.stack([total.detach(), *metrics.values()]).tolist()
        return dict(zip(["loss", *metrics], values))


def _rng_state() -> tuple[Tensor, Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None


def _set_rng_state(state: tuple[Tensor, Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])
