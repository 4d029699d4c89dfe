"""Unified vocabulary layout and text tokenizers (byte-level; HF tokenizer.json from a local path)."""
import pytest
import torch

from modules.ar.config import ARConfig
from modules.common.vocab import UnifiedVocab
from modules.text import ByteTokenizer, HFTokenizer, build_text_tokenizer


def test_layout_text_then_visual_then_specials():
    v = UnifiedVocab(152064, 16384)
    assert v.visual_offset == 152064 and v.special_offset == 152064 + 16384
    assert v.boi == v.special_offset and v.eoi == v.boi + 1 and v.pad == v.boi + 2
    assert v.task("t2i") == v.special("<t2i>") and v.size == v.special_offset + 8
    ids = torch.tensor([0, 152063, 152064, 168447, 168448])
    assert v.is_visual(ids).tolist() == [False, False, True, True, False]
    assert v.visual_mask().sum() == 16384 and v.text_mask()[v.boi] and not v.text_mask()[v.eoi]
    with pytest.raises(KeyError, match="<nope>"):
        v.special("<nope>")


def test_config_presets_and_derived_fields():
    q = ARConfig.from_name("qwen2.5-7b")
    assert (q.n_layer, q.n_embd, q.n_head, q.n_query_groups, q.intermediate_size) == (28, 3584, 28, 4, 18944)
    assert q.head_size == 128 and q.rope_sections == (16, 24, 24) and not q.tie_embeddings
    assert q.vocab_size == 152064 + 16384 + 8 and q.padded_vocab_size % 64 == 0
    small = ARConfig.from_name("shapes-small")
    assert 1e6 < small.estimate_params() < 10e6
    with pytest.raises(ValueError, match="unknown ARConfig preset 'huge'"):
        ARConfig.from_name("huge")
    with pytest.raises(ValueError, match="rope_sections"):
        ARConfig.from_name("tiny", rope_sections=(1, 1, 1))


def test_byte_tokenizer_roundtrip():
    t = ByteTokenizer()
    s = "a red circle — über"
    assert t.decode(t.encode(s)) == s and max(t.encode(s)) < 256


def test_hf_tokenizer_from_local_file(tmp_path):
    tk = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "a": 1, "red": 2, "circle": 3}
    tok = tk.Tokenizer(tk.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    hf = build_text_tokenizer("hf", str(tmp_path), vocab_size=8)
    assert hf.encode("a red circle") == [1, 2, 3] and hf.vocab_size == 8
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        HFTokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="vocab_size 2 < tokenizer size 4"):
        HFTokenizer(tmp_path, vocab_size=2)


def test_word_tokenizer_roundtrip_and_byte_fallback():
    from modules.text import WordTokenizer

    t = WordTokenizer(["a", " red", " circle"])
    assert t.vocab_size == 259
    assert t.encode("a red circle") == [256, 257, 258]
    s = "a red circle — über 3 squares!\n"
    assert t.decode(t.encode(s)) == s
    assert t.encode(" blue") == list(b" blue")  # unknown words are spelled in bytes
    with pytest.raises(ValueError, match="duplicates"):
        WordTokenizer(["a", "a"])


def test_shapes_words_cover_every_world_text_of_a_fresh_seed():
    """The committed word list (modules/text/shapes_words.txt) gives every word the world writes
    one id, for texts from a seed it was not built from; ~4.7 bytes per id on average."""
    from modules.text.shapes_words import world_texts

    t = build_text_tokenizer("shapes-words")
    n_ids = n_bytes = 0
    for text in world_texts(num_scenes=40, seed=123):
        ids = t.encode(text)
        assert t.decode(ids) == text
        spelled = [chr(i) for i in ids if i < 256 and chr(i).isalnum()]
        assert not spelled, f"{text!r} needs byte fallback for {spelled}"
        n_ids, n_bytes = n_ids + len(ids), n_bytes + len(text.encode())
    assert n_bytes / n_ids > 4.0
    assert t.encode("a photo of a diamond") == [t._ids[w] for w in ("a", " photo", " of", " a", " diamond")]
    with pytest.raises(ValueError, match="text range is 256"):
        build_text_tokenizer("shapes-words", vocab_size=256)


def test_byte_default_only_for_byte_models():
    from modules.text.tokenizers import default_text_tokenizer

    assert isinstance(default_text_tokenizer(256), ByteTokenizer)
    words = build_text_tokenizer("shapes-words")
    assert default_text_tokenizer(478, words) is words
    with pytest.raises(ValueError, match="has 478 ids, not the 256"):
        default_text_tokenizer(478)
