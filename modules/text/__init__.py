"""Text tokenizers: byte-level (default) and HF tokenizer.json from a local path."""
from modules.text.tokenizers import ByteTokenizer, HFTokenizer, TextTokenizer, WordTokenizer, build_text_tokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "TextTokenizer", "WordTokenizer", "build_text_tokenizer"]
