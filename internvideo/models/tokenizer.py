"""CLIP's byte-level BPE tokenizer, compatible with OpenAI CLIP's ids, from a shipped vocabulary file.

Text is cleaned (HTML entities, whitespace, lower case), split into words, numbers and punctuation
runs, each word's UTF-8 bytes mapped to printable characters and merged by the BPE ranks, with
``</w>`` marking a word's end. ``tokenize`` frames each text as ``<|startoftext|> … <|endoftext|>``
in ``context_length`` ids (zero padded; a long text is cut, keeping the end-of-text token, which is
where CLIP's text encoder pools).

Unlike OpenAI's, text is not passed through ``ftfy`` (not a dependency): mojibake is not repaired.
"""
from __future__ import annotations

import functools
import gzip
import html
from importlib import resources
from pathlib import Path

import regex
import torch

START, END = "<|startoftext|>", "<|endoftext|>"
_WORDS = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                       regex.IGNORECASE)
_NUM_MERGES = 49152 - 256 - 2


@functools.lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """A reversible map of every byte to a printable character (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def default_vocab_path() -> Path:
    return Path(str(resources.files("internvideo.assets") / "bpe_simple_vocab_16e6.txt.gz"))


class CLIPTokenizer:
    def __init__(self, vocab_path: str | Path | None = None) -> None:
        path = Path(vocab_path) if vocab_path else default_vocab_path()
        if not path.is_file():
            raise FileNotFoundError(f"CLIP BPE vocabulary not found: {path}")
        with gzip.open(path, "rt", encoding="utf-8") as vocab_file:
            self.merges = vocab_file.read().split("\n")[1:_NUM_MERGES + 1]  # "a b" lines, by rank
        merges = [tuple(line.split()) for line in self.merges]
        byte_chars = list(bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [START, END]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.start_id, self.end_id = self.encoder[START], self.encoder[END]
        self._cache = {START: START, END: END}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, word: str) -> str:
        """The BPE pieces of one word (already byte-mapped), space separated."""
        if word in self._cache:
            return self._cache[word]
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            pairs = {(a, b) for a, b in zip(pieces, pieces[1:])}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(pieces):
                if i < len(pieces) - 1 and (pieces[i], pieces[i + 1]) == best:
                    merged.append(pieces[i] + pieces[i + 1])
                    i += 2
                else:
                    merged.append(pieces[i])
                    i += 1
            pieces = merged
        self._cache[word] = " ".join(pieces)
        return self._cache[word]

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in _WORDS.findall(_clean(text)):
            mapped = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids += [self.encoder[piece] for piece in self.bpe(mapped).split(" ")]
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder[i] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize(self, texts: str | list[str], context_length: int = 77) -> torch.Tensor:
        """Ids (B, context_length): start, the text, end, zeros; cut texts keep the end token."""
        texts = [texts] if isinstance(texts, str) else texts
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text)][: context_length - 1] + [self.end_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


def _clean(text: str) -> str:
    return " ".join(html.unescape(html.unescape(text)).split()).lower()


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> CLIPTokenizer:
    """One per process (a decode worker's, say): the vocabulary takes a moment to read."""
    return CLIPTokenizer()
