"""ARDecoder: parity with HF transformers' Qwen2 (test-only dependency), Qwen weight loading,
KV-cache chunk equality, visual connector init."""
import pytest
import torch

from modules.ar.config import ARConfig
from modules.ar.model import ARDecoder, KVCache
from modules.ar.qwen_weights import load_qwen2_weights
from modules.common.attention_mask import block_causal_mask
from modules.common.rope import text_positions


def _hf_pair(tmp_path, tie: bool):
    transformers = pytest.importorskip("transformers")
    cfg = ARConfig.from_name("tiny", tie_embeddings=tie)
    hf_cfg = transformers.Qwen2Config(
        vocab_size=cfg.text_vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_query_groups,
        rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=tie)
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # non-zero biases so the q/k/v bias path is exercised
        for n, p in hf.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    ours = ARDecoder(cfg).eval()
    report = load_qwen2_weights(ours, tmp_path)
    return hf, ours, cfg, report


@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_hf_qwen2(tmp_path, tie):
    hf, ours, cfg, report = _hf_pair(tmp_path, tie)
    assert report["loaded"] == 2 * 12 + 2 + (0 if tie else 1)
    ids = torch.randint(0, cfg.text_vocab_size, (2, 17))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        got = ours(ids, text_positions(17)[None].expand(2, -1, -1), mask="causal")
        blk = torch.arange(17).expand(2, -1)  # the block-causal rule on text == causal
        got_blk = ours(ids, text_positions(17)[None].expand(2, -1, -1), mask=block_causal_mask(blk, torch.zeros_like(blk)))
    assert got.shape[-1] == cfg.vocab_size
    torch.testing.assert_close(got[..., : cfg.text_vocab_size], ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got_blk[..., : cfg.text_vocab_size], ref, atol=2e-5, rtol=1e-4)


def test_missing_folder_error_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_qwen2_weights(ARDecoder(ARConfig.from_name("tiny")), tmp_path / "nope")


def test_vocab_mismatch_error_names_both(tmp_path):
    hf, _, cfg, _ = _hf_pair(tmp_path, True)
    wrong = ARDecoder(ARConfig.from_name("tiny", text_vocab_size=300))
    with pytest.raises(ValueError, match=r"\(256, 64\).*\(300, 64\)|300"):
        load_qwen2_weights(wrong, tmp_path)


def test_kv_cache_chunks_equal_full_pass():
    torch.manual_seed(0)
    m = ARDecoder(ARConfig.from_name("tiny")).eval()
    # text(3) | block of 4 | block of 4 -- chunked with a cache == one masked pass
    block = torch.tensor([[0, 1, 2, 3, 3, 3, 3, 4, 4, 4, 4]])
    sample = torch.zeros_like(block)
    ids = torch.randint(0, 256, (1, 11))
    pos = torch.rand(1, 11, 3) * 10
    with torch.no_grad():
        full = m(ids, pos, mask=block_causal_mask(block, sample))
        cache, outs = KVCache(), []
        for a, b in [(0, 3), (3, 7), (7, 11)]:
            mask = "causal" if a == 0 else None  # one new block sees the whole cache + itself
            outs.append(m(ids[:, a:b], pos[:, a:b], mask=mask, cache=cache))
    assert len(cache) == 11
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


def test_cpu_bf16_autocast_matches_fp32():
    """bf16-mixed on the CPU (the quickstart's AR fit where bf16 is native): visual features are
    scattered in the embedding's dtype and attention runs in fp32; outputs and input gradients stay
    within bf16 rounding of the fp32 pass."""
    torch.manual_seed(0)
    m = ARDecoder(ARConfig.from_name("tiny")).train()
    block = torch.tensor([[0, 1, 2, 3, 3, 3, 3, 4, 4, 4, 4]])
    ids, pos = torch.randint(0, 256, (1, 11)), torch.rand(1, 11, 3) * 10
    vis = torch.randn(1, 11, m.config.code_dim)
    vis_mask = block >= 3
    mask = block_causal_mask(block, torch.zeros_like(block))
    out32 = m(ids, pos, vis_BLD=vis, vis_mask_BL=vis_mask, mask=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = m(ids, pos, vis_BLD=vis, vis_mask_BL=vis_mask, mask=mask)
    assert out16.dtype == torch.bfloat16
    scale = out32.abs().max()
    assert float((out16.float() - out32).abs().max()) < 0.05 * float(scale)
    g32 = torch.autograd.grad(out32.square().mean(), m.wte.weight)[0]
    g16 = torch.autograd.grad(out16.float().square().mean(), m.wte.weight)[0]
    assert float((g16 - g32).norm() / g32.norm()) < 0.1


def test_visual_rows_initialised_from_codebook():
    torch.manual_seed(0)
    m = ARDecoder(ARConfig.from_name("tiny"))
    E = torch.nn.functional.normalize(torch.randn(64, 40), dim=-1)
    m.init_visual_from_codebook(E)
    v = m.config.vocab
    head_vis = m.head_weight()[v.visual_offset: v.special_offset]
    torch.testing.assert_close(head_vis, m.connector(E))
    text_std = m.wte.weight[:256].std()
    assert abs(float(head_vis.detach().std() / text_std.detach()) - 1) < 0.1
    with pytest.raises(ValueError, match=r"\(10, 40\).*\(64, 40\)"):
        m.init_visual_from_codebook(torch.randn(10, 40))


def test_loads_qwen25_vl_layout(tmp_path):
    """Qwen2.5-VL checkpoints nest the LLM under model.language_model.* and carry a ViT (skipped)."""
    import json

    from safetensors.torch import load_file, save_file

    hf, ref_model, cfg, _ = _hf_pair(tmp_path / "hf", tie=False)
    state = {}
    for f in (tmp_path / "hf").glob("*.safetensors"):
        state.update(load_file(str(f)))
    vl = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v for k, v in state.items()}
    vl["model.visual.patch_embed.proj.weight"] = torch.zeros(4, 3)
    (tmp_path / "vl").mkdir()
    save_file(vl, str(tmp_path / "vl" / "model.safetensors"))
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "vl" / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "text_config": hf_cfg}))
    ours = ARDecoder(cfg).eval()
    report = load_qwen2_weights(ours, tmp_path / "vl")
    assert "model.visual.patch_embed.proj.weight" in report["skipped"]
    ids = torch.randint(0, cfg.text_vocab_size, (1, 9))
    pos = text_positions(9)[None]
    with torch.no_grad():
        T = cfg.text_vocab_size  # rows past the text range keep each model's own initialisation
        torch.testing.assert_close(ours(ids, pos, mask="causal")[..., :T], ref_model(ids, pos, mask="causal")[..., :T])
    wrong = ARDecoder(ARConfig.from_name("tiny", tie_embeddings=False, n_layer=3))
    with pytest.raises(ValueError, match="num_hidden_layers=2 but the AR config has n_layer=3"):
        load_qwen2_weights(wrong, tmp_path / "vl")
