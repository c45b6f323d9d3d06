"""Load the checkpoints people already have into our models, and export ours back.

In the spirit of timm's ``checkpoint_filter_fn``: a foreign state dict is first unwrapped
(``{"model": ...}``, ``{"module": ...}``, DDP's ``module.``), then its layout is mapped to ours,
then position embeddings are resized to the model's grid, and only then loaded — strictly: a
key the model has and the file lacks, or the file has and the model lacks, fails the load
with the list of them, unless the caller names it as allowed (``fnmatch`` patterns).

Layouts:
- **official** VideoMAE / InternVideo: pretraining (``encoder.*``, ``decoder.*``,
  ``encoder_to_decoder``, ``mask_token``) is our pretraining layout key for key; fine-tuning
  (``patch_embed.*``, ``blocks.*``, ``fc_norm``, ``head``, optional ``pos_embed``) and
  checkpoints whose encoder is prefixed ``backbone.`` map onto our classifier's ``encoder.*``.
- **Hugging Face** ``transformers`` VideoMAE (``videomae.*``): split query/key/value with
  q_bias/v_bias, ``layernorm_before/after``, ``intermediate``/``output``, ``decoder.decoder_layers``,
  ``classifier``. Its config (``config.json``) maps to ours with ``videomae_config_from_hf`` /
  ``classifier_config_from_hf``, carrying its layer-norm eps; its input is (B, T, C, H, W),
  ours (B, C, T, H, W).
- **OpenAI CLIP** and **InternVideo's multimodal** checkpoints (UniFormerV2 on CLIP:
  ``visual.transformer.{dpe,dec,temporal_cls_token,balance}``): ``visual.*`` is our video
  encoder's layout key for key (UniBlocks absent from a CLIP file are allowed missing by the
  caller; InternVideo's one-frame Conv3d patch embedding becomes our Conv2d); the text tower, at
  the top level there, moves under ``text.``.
- **Hugging Face** ``transformers`` CLIP (``vision_model.*``, ``text_model.*``): split q/k/v
  projections fused into ``in_proj``, ``layer_norm1/2``, ``fc1/fc2``, the projections transposed.
"""
from __future__ import annotations

import argparse
import fnmatch
import math
import pickle
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from internvideo.models.videomae import VideoMAEConfig
from internvideo.models.vit import ClassifierConfig, ViTConfig, interpolate_pos_embed

StateDict = dict[str, Tensor]

# Hugging Face → ours, applied in order to every key (the first match of each rule rewrites it).
_HF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^videomae\.embeddings\.patch_embeddings\.projection\.", "encoder.patch_embed.proj."),
    (r"^videomae\.encoder\.layer\.(\d+)\.", r"encoder.blocks.\1."),
    (r"^videomae\.layernorm\.", "encoder.norm."),
    (r"^decoder\.decoder_layers\.(\d+)\.", r"decoder.blocks.\1."),
    (r"^classifier\.", "head."),
    (r"\.attention\.attention\.(q_bias|v_bias)$", r".attn.\1"),  # transformers 4
    (r"\.attention\.attention\.query\.bias$", ".attn.q_bias"),  # transformers 5 (the key has no bias)
    (r"\.attention\.attention\.value\.bias$", ".attn.v_bias"),
    (r"\.attention\.attention\.(query|key|value)\.weight$", r".attn.\1.weight"),  # fused below
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
)
_SPLIT_QKV = re.compile(r"^(.*)\.attn\.(query|key|value)\.(weight)$")

_HF_CLIP_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),  # sic
    (r"^vision_model\.encoder\.layers\.(\d+)\.", r"visual.transformer.resblocks.\1."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^text_model\.embeddings\.token_embedding\.", "text.token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "text.positional_embedding"),
    (r"^text_model\.encoder\.layers\.(\d+)\.", r"text.transformer.resblocks.\1."),
    (r"^text_model\.final_layer_norm\.", "text.ln_final."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.self_attn\.(q|k|v)_proj\.(weight|bias)$", r".attn.\1.\2"),  # fused below
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
)
_SPLIT_QKV_CLIP = re.compile(r"^(.*)\.attn\.(q|k|v)\.(weight|bias)$")
# The OpenAI CLIP text tower sits at the top level; ours under ``text.``.
_OPENAI_TEXT = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
# Encoder parts that official fine-tuning checkpoints keep at the top level.
_ENCODER_PARTS = ("patch_embed.", "blocks.", "norm.", "pos_embed")


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit the model; the message lists every offending key."""

    def __init__(self, missing: list[str], unexpected: list[str], wrong_shape: list[str]) -> None:
        parts = [f"{what} ({len(keys)}): {', '.join(keys)}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
        super().__init__("checkpoint does not fit the model — " + "; ".join(parts))
        self.missing, self.unexpected, self.wrong_shape = missing, unexpected, wrong_shape


def unwrap(checkpoint: Mapping[str, Any]) -> StateDict:
    """The state dict inside a checkpoint file's content, without DDP's ``module.`` prefix."""
    for wrapper in ("model", "module", "state_dict"):
        if wrapper in checkpoint and isinstance(checkpoint[wrapper], Mapping):
            checkpoint = checkpoint[wrapper]
            break
    state = {k: v for k, v in checkpoint.items() if isinstance(v, Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def is_hf_layout(state: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("videomae.") for k in state)


def _rename(state: Mapping[str, Tensor], rules: tuple[tuple[str, str], ...]) -> StateDict:
    out: StateDict = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def _fuse(state: StateDict, split: re.Pattern, parts: tuple[str, ...], fused: str) -> StateDict:
    """Concatenate separate projections (``split`` matches ``<block>.attn.<part>.<kind>``) into
    ``fused`` (formatted with ``block`` and ``kind``)."""
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    out: StateDict = {}
    for key, value in state.items():
        if match := split.match(key):
            block, part, kind = match.groups()
            groups.setdefault((block, kind), {})[part] = value
        else:
            out[key] = value
    for (block, kind), found in groups.items():
        if set(found) != set(parts):
            raise CheckpointMismatch([f"{block}.attn.{p}.{kind}" for p in parts if p not in found], [], [])
        out[fused.format(block=block, kind=kind)] = torch.cat([found[p] for p in parts], dim=0)
    return out


def from_hf(state: Mapping[str, Tensor]) -> StateDict:
    """A ``transformers`` VideoMAE state dict in our layout (query/key/value fused into qkv)."""
    return _fuse(_rename(state, _HF_RENAMES), _SPLIT_QKV, ("query", "key", "value"), "{block}.attn.qkv.weight")


def from_hf_clip(state: Mapping[str, Tensor]) -> StateDict:
    """A ``transformers`` CLIPModel state dict in our layout."""
    out = _rename({k: v for k, v in state.items() if not k.endswith("position_ids")}, _HF_CLIP_RENAMES)
    out = _fuse(out, _SPLIT_QKV_CLIP, ("q", "k", "v"), "{block}.attn.in_proj_{kind}")
    for hf_key, ours in (("visual_projection.weight", "visual.proj"), ("text_projection.weight", "text.text_projection")):
        if hf_key in out:
            out[ours] = out.pop(hf_key).t().contiguous()  # nn.Linear (out, in) → CLIP's (in, out) matrix
    return out


def from_openai_clip(state: Mapping[str, Tensor]) -> StateDict:
    """OpenAI CLIP, and InternVideo's multimodal (UniFormerV2-on-CLIP) checkpoints: the same names,
    except that InternVideo's patch embedding is a Conv3d with a one-frame kernel."""
    out = {("text." + k if k.startswith(_OPENAI_TEXT) else k): v for k, v in state.items()
           if k not in ("input_resolution", "context_length", "vocab_size")}
    conv = out.get("visual.conv1.weight")
    if conv is not None and conv.ndim == 5 and conv.shape[2] == 1:
        out["visual.conv1.weight"] = conv.squeeze(2)
    return out


def to_model_layout(state: Mapping[str, Tensor], model_keys: Iterable[str]) -> StateDict:
    """``state`` (official, Hugging Face, OpenAI or ours) in the layout of a model with ``model_keys``."""
    if is_hf_layout(state):
        state = from_hf(state)
    elif any(k.startswith(("vision_model.", "text_model.")) for k in state):
        state = from_hf_clip(state)
    elif "visual.conv1.weight" in state:
        state = from_openai_clip(state)
    else:
        state = dict(state)
    if any(k.startswith("clip.") for k in state) and not any(k.startswith("clip.") for k in model_keys):
        state = {k.removeprefix("clip."): v for k, v in state.items()}  # a pretrain-mm job's towers
    wants_encoder_prefix = any(k.startswith("encoder.") for k in model_keys)
    if not wants_encoder_prefix:
        return state
    out: StateDict = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            key = "encoder." + key.removeprefix("backbone.")
        elif key.startswith(_ENCODER_PARTS):
            key = "encoder." + key
        out[key] = value
    return out


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file, or a committed DeepSpeed checkpoint folder of one of our jobs (its
    ``mp_rank_00_model_states.pt``, which rank 0 writes with the whole model under ``module``)."""
    source = Path(path)
    if source.is_dir():
        source = source / "mp_rank_00_model_states.pt"
        if not source.is_file():
            raise FileNotFoundError(f"{path} holds no DeepSpeed model states (mp_rank_00_model_states.pt)")
    # Tensors and plain data only (weights_only): a checkpoint names no code to run, so a file a user
    # points a job at cannot run any — at submit it is read inside the coordinator. The official
    # VideoMAE files also carry their training arguments, an argparse.Namespace: allowed, inert.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:  # mapped, not read: a check of keys and shapes touches no weight
                return torch.load(source, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (pre-zipfile) format cannot be mapped
                return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: holds Python objects besides tensors and plain data; not loaded "
                         f"({str(err).splitlines()[0]})") from None


def to_official(state: Mapping[str, Tensor]) -> StateDict:
    """Our state dict in the official layout: pretraining as is; a classifier's encoder at the
    top level, beside ``fc_norm`` and ``head`` (the VideoMAE fine-tuning layout)."""
    if "fc_norm.weight" not in state:
        return dict(state)
    return {k.removeprefix("encoder."): v for k, v in state.items()}


def load_pretrained(model: nn.Module, checkpoint: Mapping[str, Any], *, allow_missing: Iterable[str] = (),
                    allow_unexpected: Iterable[str] = (), source_grid: tuple[int, int, int] | None = None
                    ) -> tuple[list[str], list[str]]:
    """Load a checkpoint of any supported layout into ``model``.

    ``allow_missing`` / ``allow_unexpected``: patterns of keys that may be absent from the file
    (e.g. a new ``head.*``) or present in it but not in the model (e.g. a pretraining
    ``decoder.*``). ``source_grid``: the (T, H, W) token grid a learnable position embedding was
    trained on, when it differs from the model's in more than the spatial size. Returns the
    (missing, unexpected) keys that were allowed."""
    expected = model.state_dict()
    state = to_model_layout(unwrap(checkpoint), expected)
    _resize_pos_embed(state, expected, model, source_grid)
    for key in set(state) & set(expected):  # a scalar saved 0-d loads into a (1,) parameter, and back
        if state[key].shape != expected[key].shape and state[key].numel() == expected[key].numel() == 1:
            state[key] = state[key].reshape(expected[key].shape)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                         for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    allowed_missing = _matching(missing, allow_missing)
    allowed_unexpected = _matching(unexpected, allow_unexpected)
    refused = ([k for k in missing if k not in allowed_missing], [k for k in unexpected if k not in allowed_unexpected])
    if refused[0] or refused[1] or wrong_shape:
        raise CheckpointMismatch(*refused, wrong_shape)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return allowed_missing, allowed_unexpected


def _matching(keys: list[str], patterns: Iterable[str]) -> list[str]:
    patterns = list(patterns)
    return [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in patterns)]


def _resize_pos_embed(state: StateDict, expected: StateDict, model: nn.Module,
                      source_grid: tuple[int, int, int] | None) -> None:
    """Resize position embeddings trained at another frame count or resolution to the model's."""
    clip_key = "visual.positional_embedding"
    if clip_key in state and clip_key in expected and state[clip_key].shape != expected[clip_key].shape:
        state[clip_key] = _resize_clip_positions(state[clip_key], expected[clip_key].shape[0] - 1)
    key = "encoder.pos_embed" if "encoder.pos_embed" in expected else "pos_embed"
    if key not in state or key not in expected or state[key].shape == expected[key].shape:
        return
    encoder = model.encoder if hasattr(model, "encoder") else model
    target: tuple[int, int, int] = encoder.config.grid_size
    if source_grid is None:  # same number of time slices, square frames: the official assumption
        side = (state[key].shape[1] // target[0]) ** 0.5
        if not side.is_integer():
            raise ValueError(f"cannot infer the grid of {key} with {state[key].shape[1]} positions; "
                             f"pass source_grid=(T, H, W)")
        source_grid = (target[0], int(side), int(side))
    state[key] = interpolate_pos_embed(state[key], source_grid, target)


def _resize_clip_positions(table: Tensor, patches: int) -> Tensor:
    """CLIP's (1 + g², C) table for another image size: the class position kept, the g×g grid
    resized bicubically (as CLIP fine-tuning at 336 px does)."""
    old, new = math.isqrt(table.shape[0] - 1), math.isqrt(patches)
    grid = table[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(new * new, -1).to(table.dtype)])


# -- configs from Hugging Face config.json ---------------------------------------------------


def _encoder_from_hf(hf: Mapping[str, Any], final_norm: bool) -> ViTConfig:
    return ViTConfig(embed_dim=hf["hidden_size"], depth=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                     mlp_ratio=hf["intermediate_size"] / hf["hidden_size"],
                     qkv_bias=hf.get("qv_bias", hf.get("qkv_bias", True)),  # renamed in transformers 5
                     patch_size=hf["patch_size"], tubelet_size=hf["tubelet_size"], in_chans=hf["num_channels"],
                     img_size=hf["image_size"], num_frames=hf["num_frames"], norm_eps=hf["layer_norm_eps"],
                     final_norm=final_norm)


def videomae_config_from_hf(hf: Mapping[str, Any], mask_ratio: float = 0.9) -> VideoMAEConfig:
    """Our pretraining config for a ``transformers`` ``VideoMAEConfig`` (as a dict)."""
    if hf["decoder_intermediate_size"] * hf["hidden_size"] != hf["intermediate_size"] * hf["decoder_hidden_size"]:
        raise ValueError("the decoder's MLP ratio must equal the encoder's (as in every published VideoMAE)")
    return VideoMAEConfig(encoder=_encoder_from_hf(hf, final_norm=not hf["use_mean_pooling"]),
                          decoder_embed_dim=hf["decoder_hidden_size"], decoder_depth=hf["decoder_num_hidden_layers"],
                          decoder_num_heads=hf["decoder_num_attention_heads"], mask_ratio=mask_ratio,
                          norm_pix_loss=hf["norm_pix_loss"], decoder_norm_eps=1e-5)  # HF: nn.LayerNorm's default


def classifier_config_from_hf(hf: Mapping[str, Any]) -> ClassifierConfig:
    """Our classifier config for a ``transformers`` ``VideoMAEForVideoClassification`` config."""
    if not hf["use_mean_pooling"]:
        raise ValueError("only mean-pooling VideoMAE classifiers are supported (use_mean_pooling=True)")
    return ClassifierConfig(encoder=_encoder_from_hf(hf, final_norm=False), num_classes=len(hf["id2label"]),
                            head_norm_eps=1e-5)  # HF: nn.LayerNorm's default
