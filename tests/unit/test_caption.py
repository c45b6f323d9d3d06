"""The caption decoder is causal, ignores padding, and learns captions conditioned on the video."""
from __future__ import annotations

import torch

from internvideo.models.caption import CaptionDecoder, CaptionDecoderConfig


def decoder() -> CaptionDecoder:
    torch.manual_seed(0)
    return CaptionDecoder(CaptionDecoderConfig(width=32, layers=2, heads=4, visual_dim=24, vocab_size=20,
                                               context_length=8, num_queries=4))


def test_logits_at_a_position_never_see_later_tokens():
    model = decoder().eval()
    visual, tokens = torch.randn(2, 10, 24), torch.randint(1, 20, (2, 8))
    changed = tokens.clone()
    changed[:, 5] = (tokens[:, 5] % 19) + 1
    with torch.no_grad():
        before, after = model(visual, tokens), model(visual, changed)
    assert torch.equal(before[:, :5], after[:, :5]) and not torch.allclose(before[:, 5:], after[:, 5:])


def test_padding_is_not_predicted():
    model = decoder().eval()
    visual, tokens = torch.randn(1, 10, 24), torch.tensor([[1, 5, 6, 2, 0, 0, 0, 0]])
    logits = model(visual, tokens[:, :-1])
    expected = torch.nn.functional.cross_entropy(logits[0, :3], tokens[0, 1:4])
    torch.testing.assert_close(model.loss(visual, tokens), expected)


def test_it_learns_to_caption_two_videos_differently():
    model = decoder()
    visual = torch.randn(2, 10, 24)
    captions = torch.tensor([[1, 3, 4, 5, 2, 0, 0, 0], [1, 7, 8, 9, 10, 2, 0, 0]])  # BOS … EOS, padded
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model.loss(visual, captions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():  # greedy decoding from BOS, conditioned only on each clip's tokens
        tokens = torch.tensor([[1], [1]])
        for _ in range(5):
            tokens = torch.cat([tokens, model(visual, tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert tokens[0, :5].tolist() == [1, 3, 4, 5, 2] and tokens[1, :6].tolist() == [1, 7, 8, 9, 10, 2]
