"""A tiny TokenizerModule checkpoint (patch 4, K = 64) and a tiny AR sampler checkpoint on its
codebook, written into a folder: the starting point of the generate, suite and RL tests."""
from __future__ import annotations

from pathlib import Path

import lightning
import torch


def write_tiny_checkpoints(d: Path) -> Path:
    from modules.ar.config import ARConfig
    from modules.ar.model import ARDecoder
    from modules.ar.sampler import save_generator
    from modules.tokenizer import TokenizerConfig, TokenizerModule

    torch.manual_seed(0)
    cfg = TokenizerConfig(codebook_size=64, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, semantic_ch=8,
                          semantic_decoder_ch=8)
    tok = TokenizerModule(cfg, val_oracle=False, rfid_extractor=None)
    torch.save({"state_dict": tok.state_dict(), "hyper_parameters": dict(tok.hparams),
                "pytorch-lightning_version": lightning.__version__}, d / "tok.ckpt")
    ar = ARDecoder(ARConfig.from_name("tiny"))
    ar.init_visual_from_codebook(tok.code_embeddings().detach())
    save_generator(ar, d / "ar.ckpt", tokenizer_ckpt=str(d / "tok.ckpt"))
    return d
