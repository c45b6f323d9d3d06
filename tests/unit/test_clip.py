"""The multimodal encoder: CLIP parity with Hugging Face's CLIPModel (random small configs, nothing
downloaded), the OpenAI layout, and what UniFormerV2's UniBlocks add and do not change."""
from __future__ import annotations

import pytest
import torch
import transformers

from internvideo.checkpoints import load_pretrained
from internvideo.models.clip import CLIPTextConfig, CLIPVisualConfig, VideoCLIP, VideoCLIPConfig

UNIBLOCKS = ["visual.transformer.dpe.*", "visual.transformer.dec.*", "visual.transformer.temporal_cls_token",
             "visual.transformer.balance"]


def small_config(global_layers: int = 2, local_mhra: bool = False) -> VideoCLIPConfig:
    return VideoCLIPConfig(
        visual=CLIPVisualConfig(width=32, layers=3, heads=4, patch_size=8, image_size=32, output_dim=16,
                                num_frames=4, global_layers=global_layers, local_mhra=local_mhra),
        text=CLIPTextConfig(width=24, layers=2, heads=4, output_dim=16, vocab_size=100, context_length=12))


def inputs(batch: int = 2, frames: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, 3, frames, 32, 32, generator=generator)
    tokens = torch.randint(1, 90, (batch, 12), generator=generator)
    tokens[0, 7], tokens[1, 11] = 99, 99  # end-of-text: the largest id, where CLIP pools
    tokens[0, 8:] = 0
    return video, tokens


def test_clip_towers_match_hugging_face_clip_after_conversion():
    hf_config = transformers.CLIPConfig(
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=100, hidden_size=24, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=12, eos_token_id=2),  # 2: argmax pooling
        projection_dim=16)
    hf = transformers.CLIPModel(hf_config).eval()
    ours = VideoCLIP(small_config(global_layers=0)).eval()
    load_pretrained(ours, hf.state_dict())

    video, tokens = inputs()
    image = video[:, :, :1]  # an image is a one-frame clip
    with torch.no_grad():  # transformers 5: the projected features are the outputs' pooler_output
        expected_image = hf.get_image_features(pixel_values=image[:, :, 0]).pooler_output
        expected_text = hf.get_text_features(input_ids=tokens).pooler_output
        torch.testing.assert_close(ours.visual(image), expected_image, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.text(tokens), expected_text, rtol=0, atol=1e-5)
    assert ours.temperature().item() == pytest.approx(hf.logit_scale.exp().item())


def test_openai_layout_loads_and_a_clip_checkpoint_initialises_the_video_encoder():
    clip = VideoCLIP(small_config(global_layers=0)).eval()
    openai = {k.removeprefix("text."): v for k, v in clip.state_dict().items()}  # text tower at the top level
    assert "token_embedding.weight" in openai and "visual.transformer.resblocks.0.attn.in_proj_weight" in openai

    video_model = VideoCLIP(small_config(global_layers=2)).eval()
    load_pretrained(video_model, openai, allow_missing=UNIBLOCKS)
    video, tokens = inputs()
    with torch.no_grad():
        assert torch.equal(video_model.text(tokens), clip.text(tokens))
        # All weight on the frames' class tokens: exactly CLIP averaged over frames.
        video_model.visual.transformer.balance.fill_(torch.inf)
        assert torch.allclose(video_model.visual(video), clip.visual(video), atol=1e-6)


def test_uniblocks_model_time_once_trained_and_start_from_a_zero_query():
    model = VideoCLIP(small_config(global_layers=2)).eval()
    video, _ = inputs()
    reversed_video = video.flip(2)
    with torch.no_grad():
        # Zero-initialised extractor projections: the video token is still the zero query, so the
        # result is the balance's half of the frames' mean class token — blind to frame order.
        assert torch.allclose(model.visual(video), model.visual(reversed_video), atol=1e-5)
        for extractor in model.visual.transformer.dec:
            torch.nn.init.normal_(extractor.attn.out_proj.weight, std=0.2)
            torch.nn.init.normal_(extractor.mlp.c_proj.weight, std=0.2)
        # The dynamic position encoding (a 3D conv over time) makes the order matter.
        assert not torch.allclose(model.visual(video), model.visual(reversed_video), atol=1e-3)

    loss = model.visual(video).square().sum()
    loss.backward()
    transformer = model.visual.transformer
    for parameter in (transformer.dpe[0].weight, transformer.dec[0].attn.in_proj_weight, transformer.balance,
                      transformer.temporal_cls_token):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_local_temporal_mhra_starts_as_the_identity_and_images_are_one_frame_clips():
    plain = VideoCLIP(small_config(local_mhra=False)).eval()
    local = VideoCLIP(small_config(local_mhra=True)).eval()
    load_pretrained(local, plain.state_dict(), allow_missing=["visual.transformer.resblocks.*.lmhra.*"])
    video, _ = inputs()
    with torch.no_grad():
        assert torch.allclose(local.visual(video), plain.visual(video), atol=1e-6)
        assert local.visual(video[:, :, :1]).shape == (2, 16)


def test_text_is_causal_and_pooled_at_the_end_of_text_token():
    model = VideoCLIP(small_config()).eval()
    _, tokens = inputs()  # row 0's end-of-text token is at position 7, row 1's at 11 (the last)
    after, before, end = tokens.clone(), tokens.clone(), tokens.clone()
    after[0, 8:] = torch.tensor([5, 42, 77, 89])  # padding after the end of text: never seen where CLIP pools
    before[0, 3] = (tokens[0, 3] + 1) % 90  # a word of the text: seen there
    end[0, 7] = 98  # another end-of-text id, still the largest: the pooled token itself
    with torch.no_grad():
        base = model.text(tokens)
        changed_after, changed_before, changed_end = model.text(after), model.text(before), model.text(end)
    assert torch.equal(changed_after, base)
    for changed in (changed_before, changed_end):
        assert not torch.allclose(changed[0], base[0], atol=1e-4) and torch.equal(changed[1], base[1])


def test_clip_positions_are_resized_for_another_image_size():
    small = VideoCLIP(small_config(global_layers=0))  # 32 px, patch 8: a 4×4 grid
    with torch.no_grad():
        ramp = torch.arange(4.0).view(4, 1).expand(4, 4).reshape(16, 1).expand(16, 32)
        small.visual.positional_embedding[1:] = ramp
    config = small_config(global_layers=0)
    larger = VideoCLIP(config.model_copy(update={"visual": config.visual.model_copy(update={"image_size": 64})}))
    load_pretrained(larger, small.state_dict())  # 8×8 grid
    table = larger.visual.positional_embedding.detach()
    assert table.shape == (65, 32) and torch.equal(table[0], small.visual.positional_embedding[0].detach())
    rows = table[1:, 0].view(8, 8)
    assert torch.all(rows[1:, 0] >= rows[:-1, 0]) and torch.allclose(rows, rows[:, :1].expand(8, 8))


def test_activation_checkpointing_gives_the_same_gradients():
    config = small_config(local_mhra=True)
    plain = VideoCLIP(config)
    checkpointed = VideoCLIP(config.model_copy(update={
        "visual": config.visual.model_copy(update={"use_checkpoint": True}),
        "text": config.text.model_copy(update={"use_checkpoint": True})}))
    checkpointed.load_state_dict(plain.state_dict())
    video, tokens = inputs()
    for model in (plain, checkpointed):
        model.train()
        (model.visual(video).square().sum() + model.text(tokens).square().sum()).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_an_internvideo_multimodal_checkpoint_with_a_one_frame_conv3d_patch_embedding_loads():
    source = VideoCLIP(small_config(global_layers=2)).eval()
    torch.nn.init.normal_(source.visual.transformer.dec[0].attn.out_proj.weight, std=0.2)
    internvideo_mm = {k.removeprefix("text."): v for k, v in source.state_dict().items()}
    internvideo_mm["visual.conv1.weight"] = internvideo_mm["visual.conv1.weight"].unsqueeze(2)  # (C, 3, 1, p, p)
    assert {"visual.transformer.dec.1.ln_3.weight", "visual.transformer.dpe.0.weight",
            "visual.transformer.temporal_cls_token", "visual.transformer.balance"} <= internvideo_mm.keys()
    target = VideoCLIP(small_config(global_layers=2)).eval()
    load_pretrained(target, internvideo_mm)
    video, _ = inputs()
    with torch.no_grad():
        assert torch.equal(target.visual(video), source.visual(video))


def test_context_for_another_model_is_the_video_token_then_every_frames_tokens():
    visual = VideoCLIP(small_config(local_mhra=True)).visual.eval()
    video, _ = inputs()
    with torch.no_grad():
        context, (embedding, tokens) = visual.context(video), visual.encode(video)
        assert context.shape == (2, 1 + 4 * (1 + 16), 32)
        torch.testing.assert_close(context[:, 0], visual.features(video))  # what its classifier reads
        torch.testing.assert_close(context[:, 1:], tokens)
        torch.testing.assert_close(context[:, 0] @ visual.proj, embedding)


def test_zero_shot_classifier_ensembles_normalised_template_embeddings():
    from internvideo.models.clip import KINETICS_TEMPLATES, zero_shot_classifier
    from internvideo.models.tokenizer import CLIPTokenizer

    config = VideoCLIPConfig(
        visual=CLIPVisualConfig(width=32, layers=1, heads=4, patch_size=8, image_size=32, output_dim=16, num_frames=2,
                                global_layers=1),
        text=CLIPTextConfig(width=24, layers=1, heads=4, output_dim=16, context_length=16))  # the real vocabulary
    model, tokenizer = VideoCLIP(config).eval(), CLIPTokenizer()
    templates = ("a video of {}.", "a person {}.")
    weights = zero_shot_classifier(model, tokenizer, ["juggling balls", "archery"], templates)
    assert weights.shape == (2, 16)
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(2))
    with torch.no_grad():  # by hand: each template's unit embedding, their mean, normalised
        each = model.encode_text(tokenizer.tokenize(["a video of archery.", "a person archery."], context_length=16))
    torch.testing.assert_close(weights[1], torch.nn.functional.normalize(each.mean(0), dim=-1))
    assert len(KINETICS_TEMPLATES) == 28 and "a video of a person {}." in KINETICS_TEMPLATES
    with pytest.raises(ValueError, match="non-empty"):
        zero_shot_classifier(model, tokenizer, ["archery", " "])
    with pytest.raises(ValueError, match="needs a"):
        zero_shot_classifier(model, tokenizer, ["archery"], ("no slot",))
