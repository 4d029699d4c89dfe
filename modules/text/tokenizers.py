"""Text tokenizers for the unified vocabulary's text range (NF §3.1 extends Qwen2.5's).

`ByteTokenizer` (default, no files): ids 0..255 are UTF-8 bytes. `HFTokenizer` reads a HF
`tokenizer.json` from a local path with the `tokenizers` library (optional dependency).
End-of-text and image markers are *unified-vocabulary* specials (modules/common/vocab.py).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol


class TextTokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids; undecodable byte runs become U+FFFD."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class WordTokenizer:
    """One id per known word, UTF-8 bytes for everything else: ids 0..255 are bytes, 256 + i is
    `words[i]`. Text is split GPT-2 style into pieces that carry their leading space (" red"),
    so decode(encode(text)) == text for any text."""

    _PIECE = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]| +|\s")

    def __init__(self, words: list[str]):
        if len(set(words)) != len(words):
            raise ValueError("WordTokenizer word list has duplicates")
        self.words = list(words)
        self._ids = {w: 256 + i for i, w in enumerate(self.words)}
        self.vocab_size = 256 + len(self.words)

    @classmethod
    def split(cls, text: str) -> list[str]:
        return cls._PIECE.findall(text)

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for piece in self.split(text):
            known = self._ids.get(piece)
            out.extend([known] if known is not None else piece.encode("utf-8"))
        return out

    def decode(self, ids: list[int]) -> str:
        raw = b"".join(bytes([i]) if i < 256 else self.words[i - 256].encode("utf-8")
                       for i in ids if 0 <= i < self.vocab_size)
        return raw.decode("utf-8", errors="replace")


class HFTokenizer:
    """A `tokenizer.json` (e.g. Qwen2.5's) loaded from a local file or folder; never downloads."""

    def __init__(self, path: str | Path, vocab_size: int | None = None):
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise FileNotFoundError(
                f"HF tokenizer file not found at {p}; pass the local folder that holds tokenizer.json "
                "(nothing is downloaded), or use the byte-level tokenizer (text_tokenizer: bytes)"
            )
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ImportError(
                f"loading {p} needs the `tokenizers` package: pip install tokenizers "
                "(or use the byte-level tokenizer)"
            ) from e
        self._tok = Tokenizer.from_file(str(p))
        real = self._tok.get_vocab_size(with_added_tokens=True)
        # Qwen2.5 pads the embedding table beyond the tokenizer (151665 -> 152064): the model's
        # text range may be larger than the tokenizer, never smaller.
        self.vocab_size = vocab_size or real
        if self.vocab_size < real:
            raise ValueError(f"text vocab_size {self.vocab_size} < tokenizer size {real} of {p}")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([i for i in ids if i < self.vocab_size])


def build_text_tokenizer(kind: str = "bytes", path: str | None = None, vocab_size: int | None = None) -> TextTokenizer:
    """`vocab_size`: the model's text range; it must hold every id the tokenizer emits."""
    if kind == "bytes":
        tok: TextTokenizer = ByteTokenizer()
    elif kind == "shapes-words":
        from modules.text.shapes_words import WORDS_PATH, load_word_list

        tok = WordTokenizer(load_word_list(path or WORDS_PATH))
    elif kind == "hf":
        if path is None:
            raise ValueError("text tokenizer kind 'hf' needs `path` to a local tokenizer.json or its folder")
        return HFTokenizer(path, vocab_size)
    else:
        raise ValueError(f"unknown text tokenizer kind {kind!r}; use 'bytes', 'shapes-words' or 'hf'")
    if vocab_size is not None and vocab_size < tok.vocab_size:
        raise ValueError(f"text tokenizer {kind!r} has {tok.vocab_size} ids but the model's text range is "
                         f"{vocab_size}; use the tokenizer the model was trained with")
    return tok


def default_text_tokenizer(text_vocab_size: int, given: TextTokenizer | None = None) -> TextTokenizer:
    """`given`, or the byte tokenizer when the model's text range is the byte one (256 ids); any
    other model must be handed its own tokenizer, since byte ids would be silently misread."""
    if given is not None:
        return given
    if text_vocab_size != ByteTokenizer.vocab_size:
        raise ValueError(f"the model's text vocabulary has {text_vocab_size} ids, not the 256 of the byte "
                         "tokenizer: pass its own text tokenizer (ARModule.text_tokenizer, or "
                         "build_text_tokenizer(kind) with the kind it was trained with)")
    return ByteTokenizer()
