"""The CLIP tokenizer against Hugging Face's CLIPTokenizer built from the same shipped vocabulary."""
from __future__ import annotations

import json

import pytest
import torch
import transformers

from internvideo.models.tokenizer import CLIPTokenizer

CAPTIONS = ["a diagram", "A dog runs to the LEFT, then stops.", "the square grows; it doesn't shrink!",
            "two   spaces and\ttabs", "numbers 1234 and 3.14", "caf&eacute; au lait", "emoji 🙂 and ünïcödé",
            "x" * 300]


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer()


@pytest.fixture(scope="module")
def hugging_face(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("clip-vocab")
    (folder / "vocab.json").write_text(json.dumps(tokenizer.encoder))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(tokenizer.merges) + "\n")
    return transformers.CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))


def test_the_published_example(tokenizer):
    assert tokenizer.tokenize(["a diagram", "a dog", "a cat"], context_length=5).tolist() == [
        [49406, 320, 22697, 49407, 0], [49406, 320, 1929, 49407, 0], [49406, 320, 2368, 49407, 0]]


@pytest.mark.parametrize("caption", [c for c in CAPTIONS if "&" not in c])
def test_ids_match_hugging_face(tokenizer, hugging_face, caption):
    assert tokenizer.encode(caption) == hugging_face(caption, add_special_tokens=False)["input_ids"]


def test_html_entities_are_unescaped_as_openai_clip_does(tokenizer, hugging_face):
    """Hugging Face's tokenizer keeps "&eacute;" as characters; OpenAI's (and ours) read it as "é"."""
    assert tokenizer.encode("caf&eacute; au lait") == hugging_face("café au lait", add_special_tokens=False)["input_ids"]


def test_frames_pads_and_cuts_keeping_the_end_token(tokenizer):
    ids = tokenizer.tokenize(CAPTIONS, context_length=77)
    assert ids.shape == (len(CAPTIONS), 77) and (ids[:, 0] == tokenizer.start_id).all()
    assert (ids.argmax(dim=1) == (ids != 0).sum(dim=1) - 1).all()  # the end token: the largest id, last
    assert ids[-1, -1] == tokenizer.end_id  # the 300-character text was cut
    assert tokenizer.decode(tokenizer.encode("A dog runs to the LEFT.")).strip() == "a dog runs to the left ."
    assert ids.dtype == torch.long


def test_a_missing_vocabulary_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="CLIP BPE vocabulary not found"):
        CLIPTokenizer(tmp_path / "nope.txt.gz")
