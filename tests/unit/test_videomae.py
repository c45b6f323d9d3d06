"""Unit tests for the video ViT and VideoMAE model code (CPU, small shapes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from internvideo.models.layers import (
    Attention,
    Block,
    DropPath,
    PatchEmbed3D,
    gather_tokens,
    sinusoid_position_table,
    token_order,
    tubelet_linear,
)
from internvideo.models.videomae import (
    DECODER_SIZES,
    VideoMAEConfig,
    VideoMAEPretrain,
    videomae_config,
    videomae_targets,
)
from internvideo.models.vit import (
    VIT_SIZES,
    VideoViTEncoder,
    ViTConfig,
    transformer_flops,
    vit_config,
)

# Tiny shapes: 4 frames of 32x32, 8x8 patches, tubelet 2 -> grid (2, 4, 4) = 32 tokens,
# tube masking at 0.75 hides 12 of 16 positions per slice -> 24 hidden, 8 visible.
TINY_ENCODER = dict(embed_dim=64, depth=2, num_heads=2, patch_size=8)
TINY_DECODER = dict(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def tiny_config(**encoder_overrides) -> VideoMAEConfig:
    return videomae_config(
        "tiny",
        img_size=32,
        num_frames=4,
        mask_ratio=0.75,
        encoder_overrides={**TINY_ENCODER, **encoder_overrides},
        **TINY_DECODER,
    )


def tube_mask(cfg: VideoMAEConfig, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Official-style tube mask: the same hidden spatial positions in every time slice."""
    t, h, w = cfg.encoder.grid_size
    per_slice = cfg.num_masked // t
    rows = []
    for _ in range(batch):
        hidden = torch.zeros(h * w, dtype=torch.bool)
        hidden[torch.randperm(h * w, generator=generator)[:per_slice]] = True
        rows.append(hidden.repeat(t))
    return torch.stack(rows)  # (B, N)


def tiny_batch(cfg: VideoMAEConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    enc = cfg.encoder
    pixels = torch.rand(batch, enc.in_chans, enc.num_frames, enc.img_size, enc.img_size, generator=g)
    video = (pixels - 0.5) / 0.25
    return video, pixels, tube_mask(cfg, batch, g)


# ----------------------------------------------------------------------------- configs


def expected_encoder_params(cfg: ViTConfig) -> int:
    """Independent count for VideoMAE's encoder (no cls token, fixed position table)."""
    d, hidden = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    # Conv3d over (tubelet, p, p): tubelet x the weights of an image ViT's patch embedding.
    patch_embed = cfg.in_chans * cfg.tubelet_size * cfg.patch_size**2 * d + d
    block = (
        2 * d  # norm1
        + 3 * d * d + 2 * d  # qkv weight (no bias) + q_bias + v_bias
        + d * d + d  # proj
        + 2 * d  # norm2
        + d * hidden + hidden + hidden * d + d  # fc1, fc2
    )
    return patch_embed + cfg.depth * block + 2 * d  # + final norm


# Exact counts at 224px / 16 frames / patch 16 / tubelet 2, and the published rounded sizes.
EXACT_ENCODER_PARAMS = {"base": 86_227_200, "large": 303_860_736, "huge": 631_607_040}
PUBLISHED_ENCODER_PARAMS = {"base": 86e6, "large": 304e6, "huge": 632e6}


@pytest.mark.parametrize("size", list(VIT_SIZES))
def test_every_size_builds_on_meta_with_expected_param_count(size: str) -> None:
    cfg = videomae_config(size)
    with torch.device("meta"):
        model = VideoMAEPretrain(cfg)
    n_params = sum(p.numel() for p in model.encoder.parameters())
    assert n_params == expected_encoder_params(cfg.encoder)
    if size in EXACT_ENCODER_PARAMS:
        assert n_params == EXACT_ENCODER_PARAMS[size]
        assert n_params == pytest.approx(PUBLISHED_ENCODER_PARAMS[size], rel=0.015)
    assert model.encoder.num_patches == 8 * 14 * 14
    assert model.config.num_masked == 8 * int(0.9 * 196)


def test_size_tables_agree() -> None:
    assert DECODER_SIZES.keys() == VIT_SIZES.keys()
    assert vit_config("giant").mlp_ratio * 1408 == 6144


def test_vit_config_overrides_and_unknown_size() -> None:
    cfg = vit_config("base", depth=2, img_size=112)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.img_size) == (768, 2, 12, 112)
    with pytest.raises(ValueError, match="valid sizes: tiny, small, base, large, huge, giant"):
        vit_config("enormous")
    with pytest.raises(ValueError, match="valid sizes"):
        videomae_config("enormous")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"img_size": 200}, "img_size"),  # 200 % 16 != 0
        ({"num_frames": 15}, "num_frames"),
        ({"num_heads": 7}, "num_heads"),  # 768 % 7 != 0
        ({"depth": 0}, "depth"),
        ({"patch_size": -16}, "patch_size"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"dropout": 0.1}, "dropout"),  # extra fields are forbidden
    ],
)
def test_bad_vit_config_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        vit_config("base", **overrides)
    assert [e["loc"] for e in info.value.errors()] == [(field,)]
    assert field in str(info.value)


def test_bad_videomae_config() -> None:
    for ratio in (0.0, 1.0):
        with pytest.raises(ValidationError, match="mask_ratio"):
            videomae_config("small", mask_ratio=ratio)
    with pytest.raises(ValidationError, match="decoder_num_heads"):
        videomae_config("small", decoder_num_heads=5)
    cfg = videomae_config("small", decoder_depth=8, encoder_overrides={"drop_path_rate": 0.1})
    assert (cfg.decoder_embed_dim, cfg.decoder_depth, cfg.encoder.drop_path_rate) == (192, 8, 0.1)
    with pytest.raises(ValidationError):  # frozen
        cfg.mask_ratio = 0.5


# ----------------------------------------------------------------------------- layers


def test_sinusoid_table_matches_videomae_formula() -> None:
    n, d = 50, 24
    ref = np.array([[pos / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for pos in range(n)])
    ref[:, 0::2] = np.sin(ref[:, 0::2])
    ref[:, 1::2] = np.cos(ref[:, 1::2])
    table = sinusoid_position_table(n, d)
    assert table.shape == (1, n, d) and table.dtype == torch.float32
    torch.testing.assert_close(table[0], torch.tensor(ref, dtype=torch.float32), atol=1e-6, rtol=0)


def test_attention_matches_explicit_softmax_with_zero_key_bias() -> None:
    torch.manual_seed(0)
    attn = Attention(16, num_heads=4, qkv_bias=True)
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    x = torch.randn(2, 5, 16)
    # Reference: separate q/k/v projections, k without bias, explicit softmax.
    wq, wk, wv = attn.qkv.weight.chunk(3)
    q = (x @ wq.T + attn.q_bias).view(2, 5, 4, 4).transpose(1, 2)
    k = (x @ wk.T).view(2, 5, 4, 4).transpose(1, 2)
    v = (x @ wv.T + attn.v_bias).view(2, 5, 4, 4).transpose(1, 2)
    weights = (q * 4**-0.5 @ k.transpose(-2, -1)).softmax(-1)
    ref = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)
    assert Attention(16, 4, qkv_bias=False).q_bias is None


def test_patch_embed_tokens_are_t_major_raster() -> None:
    torch.manual_seed(0)
    embed = PatchEmbed3D(img_size=16, patch_size=4, tubelet_size=2, in_chans=3, embed_dim=8, num_frames=6)
    x = torch.randn(2, 3, 6, 16, 16)
    tokens = embed(x)
    assert tokens.shape == (2, 3 * 4 * 4, 8)
    # Token (t, h, w) at index (t * 4 + h) * 4 + w sees exactly its own tubelet.
    t, h, w = 2, 1, 3
    tubelet = x[:, :, 2 * t : 2 * t + 2, 4 * h : 4 * h + 4, 4 * w : 4 * w + 4].reshape(2, -1)
    ref = tubelet @ embed.proj.weight.reshape(8, -1).T + embed.proj.bias
    torch.testing.assert_close(tokens[:, (t * 4 + h) * 4 + w], ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="built for"):
        embed(torch.randn(1, 3, 4, 16, 16))


def test_tubelet_matmul_is_the_patch_convolution() -> None:
    """The GPU's patch embedding (one matmul) gives the CPU's convolution's tokens and gradients."""
    torch.manual_seed(0)
    embed = PatchEmbed3D(img_size=16, patch_size=4, tubelet_size=2, in_chans=3, embed_dim=8, num_frames=6)
    x = torch.randn(2, 3, 6, 16, 16)
    by_conv, by_matmul = embed(x), tubelet_linear(x, embed.proj)
    assert by_matmul.shape == (2, 48, 8)
    torch.testing.assert_close(by_matmul, by_conv, atol=1e-6, rtol=1e-5)
    upstream = torch.randn(2, 48, 8)
    conv_grads = torch.autograd.grad((by_conv * upstream).sum(), list(embed.parameters()))
    matmul_grads = torch.autograd.grad((by_matmul * upstream).sum(), list(embed.parameters()))
    for matmul_grad, conv_grad in zip(matmul_grads, conv_grads, strict=True):
        torch.testing.assert_close(matmul_grad, conv_grad, atol=1e-5, rtol=1e-5)
    strided = torch.randn(2, 3, 16, 16, 6).permute(0, 1, 4, 2, 3)  # a clip that is not contiguous
    torch.testing.assert_close(tubelet_linear(strided, embed.proj), embed(strided), atol=1e-6, rtol=1e-5)
    unbiased = torch.nn.Conv3d(3, 8, kernel_size=(2, 4, 4), stride=(2, 4, 4), bias=False)
    torch.testing.assert_close(tubelet_linear(x, unbiased), unbiased(x).flatten(2).transpose(1, 2),
                               atol=1e-6, rtol=1e-5)
    assert isinstance(embed.proj, torch.nn.Conv3d)  # its hooks and checkpoint names stay a Conv3d's


def test_block_layer_scale_and_drop_path() -> None:
    block = Block(16, 4, init_values=0.1, drop_path=0.5)
    assert torch.equal(block.gamma_1, torch.full((16,), 0.1)) and block.gamma_2 is not None
    assert Block(16, 4).gamma_1 is None
    drop = DropPath(0.5)
    x = torch.ones(64, 3, 2)
    assert torch.equal(drop.eval()(x), x)
    out = drop.train()(x)
    # Whole samples are dropped or scaled by 1 / keep_prob.
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    assert all(len(sample.unique()) == 1 for sample in out)


# ----------------------------------------------------------------------------- encoder / model


def test_encoder_encodes_the_tokens_it_keeps_and_the_model_validates_its_mask() -> None:
    cfg = tiny_config()
    encoder = VideoViTEncoder(cfg.encoder)
    video, _, mask = tiny_batch(cfg)
    assert not encoder.pos_embed.requires_grad
    assert "pos_embed" not in encoder.state_dict()  # official checkpoints have no table
    visible = token_order(mask)[:, :32 - cfg.num_masked]
    assert encoder(video, visible).shape == (2, 32 - cfg.num_masked, 64)
    assert encoder(video).shape == (2, 32, 64)
    model = VideoMAEPretrain(cfg)
    for bad in (mask.long(), mask[:, 1:]):
        with pytest.raises(ValueError, match="bool tensor of shape"):
            model(video, bad)


def test_token_order_gathers_what_boolean_indexing_selects_with_the_same_gradient() -> None:
    g = torch.Generator().manual_seed(3)
    mask = torch.stack([torch.randperm(40, generator=g) < 30 for _ in range(3)])  # 30 hidden a row
    x = torch.randn(3, 40, 5, generator=g, requires_grad=True)
    order = token_order(mask)
    for index, selected in ((order[:, :10], ~mask), (order[:, 10:], mask)):
        want = x[selected].reshape(3, -1, 5)
        got = gather_tokens(x, index)
        assert torch.equal(got, want)
        weights = torch.randn(want.shape, generator=g)
        (want_grad,) = torch.autograd.grad((want * weights).sum(), x)
        (got_grad,) = torch.autograd.grad((got * weights).sum(), x)
        assert torch.equal(got_grad, want_grad)


def test_a_mask_that_hides_another_count_than_the_config_is_refused() -> None:
    cfg = tiny_config()
    model = VideoMAEPretrain(cfg)
    video, _, mask = tiny_batch(cfg)
    all_hidden = torch.ones_like(mask)
    with pytest.raises(RuntimeError, match=f"must hide {cfg.num_masked} tokens"):
        model(video, all_hidden)
    one_fewer = mask.clone()
    one_fewer[1, int(mask[1].nonzero()[0])] = False
    with pytest.raises(RuntimeError, match=f"must hide {cfg.num_masked} tokens"):
        model(video, one_fewer)


def test_the_pretraining_forward_compiles_into_one_graph() -> None:
    """No boolean indexing: nothing whose shape depends on the data breaks torch.compile's graph (or,
    on a GPU, waits for the device to count a selection)."""
    cfg = tiny_config()
    model = VideoMAEPretrain(cfg)
    video, pixels, mask = tiny_batch(cfg)
    explained = torch._dynamo.explain(model.loss)(video, pixels, mask)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_forward_backward_shapes() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    model = VideoMAEPretrain(cfg)
    video, pixels, mask = tiny_batch(cfg)
    pred = model(video, mask)
    assert cfg.num_masked == 24
    assert pred.shape == (2, int(mask[0].sum()), 2 * 8 * 8 * 3) == (2, 24, 384)
    loss = model.loss(video, pixels, mask)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.mask_token.grad.abs().sum() > 0
    assert model.no_weight_decay() <= {name for name, _ in model.named_parameters()}


def test_official_parameter_names() -> None:
    with torch.device("meta"):
        model = VideoMAEPretrain(tiny_config(init_values=0.1))
    keys = set(model.state_dict())
    for key in (
        "mask_token",
        "encoder_to_decoder.weight",
        "encoder.patch_embed.proj.weight",
        "encoder.blocks.0.attn.qkv.weight",
        "encoder.blocks.0.attn.q_bias",
        "encoder.blocks.0.attn.v_bias",
        "encoder.blocks.1.gamma_2",
        "encoder.norm.weight",
        "decoder.blocks.0.mlp.fc2.bias",
        "decoder.norm.bias",
        "decoder.head.weight",
    ):
        assert key in keys, key
    assert "encoder_to_decoder.bias" not in keys and "encoder.blocks.0.attn.qkv.bias" not in keys
    assert not any("pos_embed" in k for k in keys)


def _loop_targets(pixels: torch.Tensor, mask: torch.Tensor, p: int, tub: int, normalize: bool) -> torch.Tensor:
    b, c, t, h, w = pixels.shape
    out = []
    for i in range(b):
        rows = []
        for ti in range(t // tub):
            for hi in range(h // p):
                for wi in range(w // p):
                    n = (ti * (h // p) + hi) * (w // p) + wi
                    if not mask[i, n]:
                        continue
                    cube = pixels[i, :, ti * tub : (ti + 1) * tub, hi * p : (hi + 1) * p, wi * p : (wi + 1) * p]
                    values = cube.permute(1, 2, 3, 0).reshape(-1, c)  # (tub*p*p, c)
                    if normalize:
                        values = (values - values.mean(0)) / (values.std(0, unbiased=True) + 1e-6)
                    rows.append(values.reshape(-1))  # (p c) order
        out.append(torch.stack(rows))
    return torch.stack(out)


@pytest.mark.parametrize("normalize", [True, False])
def test_targets_match_loop_reference(normalize: bool) -> None:
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(2, 3, 4, 8, 12, generator=g)  # grid (2, 2, 3) with p=4, tubelet=2
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, [0, 4, 5, 11]] = True
    mask[1, [1, 2, 6, 9]] = True
    got = videomae_targets(pixels, mask, patch_size=4, tubelet_size=2, normalize=normalize)
    assert got.shape == (2, 4, 2 * 4 * 4 * 3)
    torch.testing.assert_close(got, _loop_targets(pixels, mask, 4, 2, normalize), atol=1e-5, rtol=1e-5)


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    model = VideoMAEPretrain(cfg)
    video, pixels, mask = tiny_batch(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(30):
        loss = model.loss(video, pixels, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Targets are per-patch-normalised noise (loss starts near 1); a working
    # model memorises a good part of it (about -37 % here).
    assert losses[-1] < 0.75 * losses[0], losses


def test_activation_checkpointing_is_exact() -> None:
    torch.manual_seed(0)
    plain = VideoMAEPretrain(tiny_config())
    ckpt = VideoMAEPretrain(tiny_config(use_checkpoint=True))
    ckpt.load_state_dict(plain.state_dict())
    video, pixels, mask = tiny_batch(tiny_config())
    losses = []
    for model in (plain, ckpt):
        loss = model.loss(video, pixels, mask)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], atol=0, rtol=0)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_flops() -> None:
    assert transformer_flops(dim=4, depth=2, tokens=3, mlp_ratio=4.0) == 2 * (8 * 3 * 16 + 16 * 3 * 16 + 4 * 9 * 4)
    with torch.device("meta"):
        model = VideoMAEPretrain(videomae_config("base"))
    fwd = model.flops_per_clip(training=False)
    assert model.flops_per_clip() == 3 * fwd
    # Encoder on 160 visible tokens + decoder on 1568 tokens + patch embedding + head.
    enc = transformer_flops(768, 12, 160) + transformer_flops(384, 4, 1568)
    io = 2 * 1568 * 1536 * 768 + 2 * 160 * 768 * 384 + 2 * 1408 * 384 * 1536
    assert math.isclose(fwd, enc + io)
    assert 60e9 < fwd < 80e9  # ~71 GFLOPs forward, ~213 GFLOPs per training clip
