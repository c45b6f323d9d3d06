"""Checkpoint layouts: parity with Hugging Face's VideoMAE (an independent implementation, built
from small random configs, nothing downloaded), the official layout both ways, strict key checks,
position-embedding resizing, and published parameter counts."""
from __future__ import annotations

import pytest
import torch
import transformers  # a test-only dependency (pyproject: dev)

from internvideo.checkpoints import (
    CheckpointMismatch,
    classifier_config_from_hf,
    load_pretrained,
    to_official,
    videomae_config_from_hf,
)
from internvideo.models.videomae import VideoMAEPretrain, videomae_config
from internvideo.models.vit import VideoClassifier, VideoViTEncoder, classifier_config, vit_config

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
SMALL = dict(image_size=32, patch_size=8, num_channels=3, num_frames=4, tubelet_size=2, hidden_size=48,
             num_hidden_layers=3, num_attention_heads=4, intermediate_size=192,
             decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
             decoder_intermediate_size=128, attn_implementation="eager")


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (biases, q/v biases and norms too), so that no key can be dropped unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            norm_scale = "norm" in name and name.endswith("weight")
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05 + norm_scale)


def clip_and_mask(batch: int, frames: int, size: int, tokens: int, hidden: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, frames, size, size, generator=generator)  # (B, C, T, H, W) in [0, 1]
    mask = torch.zeros(batch, tokens, dtype=torch.bool)
    for row in mask:
        row[torch.randperm(tokens, generator=generator)[:hidden]] = True
    return pixels, (pixels - IMAGENET_MEAN) / IMAGENET_STD, mask


def test_hf_videomae_pretraining_matches_ours_after_conversion():
    hf_config = transformers.VideoMAEConfig(**SMALL, norm_pix_loss=True, use_mean_pooling=False)
    hf = transformers.VideoMAEForPreTraining(hf_config).eval()
    randomize(hf, seed=1)
    ours = VideoMAEPretrain(videomae_config_from_hf(hf_config.to_dict(), mask_ratio=0.75)).eval()
    load_pretrained(ours, hf.state_dict())

    pixels, video, mask = clip_and_mask(batch=3, frames=4, size=32, tokens=2 * 4 * 4, hidden=24)
    with torch.no_grad():
        expected = hf(video.permute(0, 2, 1, 3, 4), bool_masked_pos=mask)  # HF wants (B, T, C, H, W)
        prediction = ours(video, mask)
        loss = ours.reconstruction_loss(prediction, pixels, mask)
    torch.testing.assert_close(prediction, expected.logits, rtol=0, atol=1e-6)  # README: "within 1e-6"
    torch.testing.assert_close(loss, expected.loss, rtol=0, atol=1e-6)


def test_hf_videomae_classifier_matches_ours_after_conversion():
    hf_config = transformers.VideoMAEConfig(**SMALL, use_mean_pooling=True, num_labels=7)
    hf = transformers.VideoMAEForVideoClassification(hf_config).eval()
    randomize(hf, seed=2)
    ours = VideoClassifier(classifier_config_from_hf(hf_config.to_dict())).eval()
    load_pretrained(ours, {"model": hf.state_dict()})

    _, video, _ = clip_and_mask(batch=2, frames=4, size=32, tokens=32, hidden=0, seed=3)
    with torch.no_grad():
        expected = hf(video.permute(0, 2, 1, 3, 4)).logits
        logits = ours(video)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)


def tiny_classifier(**overrides) -> VideoClassifier:
    return VideoClassifier(classifier_config("tiny", num_classes=5, depth=2, img_size=32, patch_size=8,
                                             num_frames=4, **overrides)).eval()


def test_official_finetune_layout_round_trips_and_loads_with_backbone_prefix():
    source = tiny_classifier()
    randomize(source, seed=4)
    official = to_official(source.state_dict())
    assert {"patch_embed.proj.weight", "blocks.1.attn.q_bias", "fc_norm.weight", "head.weight"} <= official.keys()
    assert not any(k.startswith("encoder.") for k in official)

    _, video, _ = clip_and_mask(batch=2, frames=4, size=32, tokens=32, hidden=0, seed=5)
    for checkpoint in (official, {"module": {f"module.{k}": v for k, v in official.items()}},
                       {f"backbone.{k}" if not k.startswith(("fc_norm", "head")) else k: v
                        for k, v in official.items()}):
        target = tiny_classifier()
        load_pretrained(target, checkpoint)
        with torch.no_grad():
            assert torch.equal(target(video), source(video))


def test_a_pretraining_checkpoint_initialises_a_classifier_only_with_what_the_caller_allows():
    pretrain = VideoMAEPretrain(videomae_config("tiny", img_size=32, num_frames=4,
                                                encoder_overrides={"depth": 2, "patch_size": 8}))
    randomize(pretrain, seed=6)
    classifier = tiny_classifier(final_norm=True)
    with pytest.raises(CheckpointMismatch) as refused:
        load_pretrained(classifier, pretrain.state_dict())
    message = str(refused.value)
    assert "missing (4): fc_norm.bias, fc_norm.weight, head.bias, head.weight" in message
    assert "unexpected" in message and "decoder.head.weight" in message and "mask_token" in message

    allowed = load_pretrained(classifier, pretrain.state_dict(), allow_missing=["fc_norm.*", "head.*"],
                              allow_unexpected=["decoder.*", "encoder_to_decoder.*", "mask_token"])
    assert allowed[0] == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert torch.equal(classifier.encoder.blocks[1].attn.qkv.weight, pretrain.encoder.blocks[1].attn.qkv.weight)


def test_wrong_shapes_are_listed():
    wide = tiny_classifier(embed_dim=96, num_heads=3)
    with pytest.raises(CheckpointMismatch, match=r"wrong shape \(\d+\): .*encoder.blocks.0.attn.qkv.weight"):
        load_pretrained(wide, tiny_classifier(embed_dim=48, num_heads=3).state_dict())


def test_learnable_position_embeddings_are_resized_to_other_frame_counts_and_resolutions():
    source = tiny_classifier(pos_embed="learnable")  # grid (2, 4, 4)
    grid = torch.arange(4.0).view(4, 1) + torch.arange(4.0).view(1, 4)  # varies over h, w only
    with torch.no_grad():
        source.encoder.pos_embed.copy_(grid.expand(2, 4, 4).reshape(1, 32, 1).expand(1, 32, 192))
    bigger = VideoClassifier(classifier_config("tiny", num_classes=5, depth=2, img_size=64, patch_size=8,
                                               num_frames=8, pos_embed="learnable"))  # grid (4, 8, 8)
    with pytest.raises(ValueError, match="source_grid"):
        load_pretrained(bigger, source.state_dict())  # 32 positions over 4 time slices: not square
    load_pretrained(bigger, source.state_dict(), source_grid=(2, 4, 4))
    resized = bigger.encoder.pos_embed.detach().view(4, 8, 8, 192)
    assert torch.equal(resized[0], resized[3])  # constant over time stays constant
    assert resized[0, 0, 0, 0] < resized[0, 7, 7, 0]  # the spatial ramp is kept
    assert resized[0, :, :, 0].min() >= 0 and resized[0, :, :, 0].max() <= 6


@pytest.mark.parametrize("size, published_millions", [("small", 22), ("base", 86), ("large", 304), ("huge", 632)])
def test_encoder_parameter_counts_match_the_published_ones(size, published_millions):
    with torch.device("meta"):
        encoder = VideoViTEncoder(vit_config(size))
    count = sum(p.numel() for p in encoder.parameters()) / 1e6
    # The video patch embedding adds (tubelet − 1)·3·16² weights per channel to the image ViT's count.
    assert count == pytest.approx(published_millions, rel=0.01), count
